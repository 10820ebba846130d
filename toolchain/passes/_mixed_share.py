"""How much of an artifact's compute still runs in integer after `--mixed auto` kept layers out of int8: the
share of its multiply-accumulates (Conv, depthwise, transposed conv, fully connected, MatMul) in ops that run
quantized, read from the artifact itself, one reader per format:

- tflite: LiteRT's op list (no delegates); an op runs quantized when its output tensor is an integer type;
- onnx: `analysis.node_stats` for the MACs, `backends.onnx.integer_nodes` (onnxruntime's QDQ fusion rules);
- openvino: the IR's ops for the MACs, the CPU plugin's runtime model (`runtimePrecision` of the executed op
  each IR op was fused into) for how it runs.

    share(fmt, path) -> {"macs", "int8_macs", "int8_share", "how"}   (int8_share None when the model has no MACs)
    entry(backend, path) -> {"int8_share": share(...)}, or one saying why it could not be read
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INTEGER = ("int8", "uint8", "int16", "i8", "u8", "i16", "u16", "i4", "u4")


def share(fmt: str, path: Path) -> dict:
    ops = {"tflite": _tflite, "onnx": _onnx, "openvino": _openvino}[fmt](Path(path))
    total = sum(macs for macs, _ in ops)
    int8 = sum(macs for macs, integer in ops if integer)
    return {"macs": int(total), "int8_macs": int(int8), "int8_share": round(int8 / total, 4) if total else None,
            "how": f"counted on the {fmt} artifact's ops: MACs of conv/FC/MatMul ops that run quantized, over all"}


def entry(backend, path: Path) -> dict:
    try:
        return {"int8_share": share(backend.FORMAT, path)}
    except Exception as exc:  # a reader that does not know this graph: say so, never guess
        return {"int8_share": {"int8_share": None, "error": " ".join(str(exc).split())[:200]}}


def _tflite(path: Path) -> list[tuple[int, bool]]:
    from ..backends import require
    lite = require("ai_edge_litert.interpreter", "tflite")
    interpreter = lite.Interpreter(model_path=str(path),
                                   experimental_op_resolver_type=lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    shape = lambda i: [int(d) for d in tensors[i]["shape"]] if i >= 0 else []  # noqa: E731
    rows = []
    for op in interpreter._get_ops_details():
        ins, outs = [int(i) for i in op["inputs"]], [int(i) for i in op["outputs"] if i >= 0]
        if not outs:
            continue
        out, kind = shape(outs[0]), op["op_name"]
        if kind == "CONV_2D":
            macs = np.prod(out) * np.prod(shape(ins[1])[1:])
        elif kind == "DEPTHWISE_CONV_2D":
            macs = np.prod(out) * np.prod(shape(ins[1])[1:3])
        elif kind == "FULLY_CONNECTED":
            macs = np.prod(out) * (shape(ins[1]) or [0, 0])[-1]
        elif kind == "TRANSPOSE_CONV":
            macs = np.prod(shape(ins[2])) * np.prod(shape(ins[1])[:3])
        elif kind == "BATCH_MATMUL":
            macs = np.prod(out) * (shape(ins[0]) or [0])[-1]
        else:
            continue
        rows.append((int(macs), np.dtype(tensors[outs[0]]["dtype"]).name in INTEGER))
    return rows


def _onnx(path: Path) -> list[tuple[int, bool]]:
    from ..analysis import node_stats
    from ..backends import onnx as onnx_backend
    from ..backends import require
    integer = dict(onnx_backend.integer_nodes(require("onnx", "full").load(str(path)).graph))
    return [(row["macs"], integer.get(row["node"], False)) for row in node_stats(path) if row["macs"]]


OV_MACS = {"Convolution": 1, "GroupConvolution": 2, "ConvolutionBackpropData": 1, "GroupConvolutionBackpropData": 2}


def _openvino(path: Path) -> list[tuple[int, bool]]:
    from ..backends import openvino as ov_backend
    precision: dict[str, str] = {}
    for op in ov_backend.Session(path).compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        for name in info["originalLayersNames"].astype(str).split(","):
            precision.setdefault(name.strip(), info["runtimePrecision"].astype(str))
    from ..backends import require
    model = require("openvino", "openvino").Core().read_model(str(path))
    rows = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in OV_MACS and kind != "MatMul":
            continue
        dims = lambda k: [int(d) for d in op.input(k).get_partial_shape().to_shape()]  # noqa: E731
        out = [int(d) for d in op.get_output_partial_shape(0).to_shape()]
        if kind == "MatMul":
            macs = np.prod(out) * dims(0)[-2 if op.get_attributes().get("transpose_a") else -1]
        elif kind.endswith("BackpropData"):
            macs = np.prod(dims(0)) * np.prod(dims(1)[OV_MACS[kind]:])
        else:
            macs = np.prod(out) * np.prod(dims(1)[OV_MACS[kind]:])
        rows.append((int(macs), precision.get(op.get_friendly_name(), "") in INTEGER))
    return rows
