"""Per-node and per-layer parameters, MACs and bytes, read from the model's ONNX form.

Used by `edgekit analyze`, the pruning report and the latency cost model. Counts follow the
usual conventions: a multiply-accumulate is one MAC; Conv MACs = output elements x
(input channels / groups) x kernel area; Gemm/MatMul MACs = M x N x K; elementwise ops and
pooling cost no MACs but move bytes. Element counts are kept, so a cost model can price them
at any precision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import require

MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
SKIPPED = {"QuantizeLinear", "DequantizeLinear", "Constant"}


def node_stats(onnx_path: Path) -> list[dict]:
    """One row per compute node in graph order, with its tensors' element counts."""
    from .passes.sensitivity import layer_of
    onnx = require("onnx", "full")
    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # stale value_info (a quantizer's rewritten tensors, int8 QDQ files): infer them afresh
        del model.graph.value_info[:]
        model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.input, *graph.output, *graph.value_info]}
    rows = []
    for node in graph.node:
        if node.op_type in SKIPPED:
            continue
        params = [weights[i] for i in node.input if i in weights and weights[i].size > 1
                  and np.issubdtype(weights[i].dtype, np.floating)]  # not shapes and axes
        inputs = [i for i in node.input if i and i not in weights]
        rows.append({"node": node.name, "layer": layer_of(node.name or node.op_type), "op": node.op_type,
                     "params": sum(int(w.size) for w in params), "macs": node_macs(node, shapes, weights),
                     "inputs": {t: _elements(shapes.get(t)) for t in inputs},
                     "outputs": {t: _elements(shapes.get(t)) for t in node.output}})
    return rows


def _elements(shape: list[int] | None) -> int:
    return int(np.prod(shape)) if shape else 0


def layer_stats(onnx_path: Path) -> list[dict]:
    """One row per source layer, in graph order: layer, ops, params, macs, weight/activation bytes (fp32)."""
    rows: dict[str, dict] = {}
    for n in node_stats(onnx_path):
        row = rows.setdefault(n["layer"], {"layer": n["layer"], "ops": [], "params": 0, "macs": 0,
                                           "weight_bytes": 0, "activation_bytes": 0})
        row["ops"].append(n["op"])
        row["params"] += n["params"]
        row["weight_bytes"] += 4 * n["params"]
        row["macs"] += n["macs"]
        row["activation_bytes"] += 4 * (sum(n["inputs"].values()) + sum(n["outputs"].values()))
    return list(rows.values())


def node_macs(node, shapes: dict, weights: dict) -> int:
    if node.op_type not in MAC_OPS:
        return 0
    out = shapes.get(node.output[0])
    if not out:
        return 0
    w = weights.get(node.input[1])
    w_shape = list(w.shape) if w is not None else shapes.get(node.input[1], [])
    if node.op_type == "ConvTranspose":
        return int(np.prod(shapes[node.input[0]])) * w_shape[1] * int(np.prod(w_shape[2:]))
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        in_channels = shapes.get(node.input[0], [0, 0])[1]
        return int(np.prod(out)) * (in_channels // group) * int(np.prod(w_shape[2:]))
    transposed_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    k = w_shape[1] if node.op_type == "Gemm" and transposed_b else w_shape[0] if w_shape else 0
    return int(np.prod(out)) * k


def totals(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) for k in ("params", "macs", "weight_bytes", "activation_bytes")}
