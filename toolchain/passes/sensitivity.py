"""Per-layer quantization sensitivity: quantize one layer at a time to int8 and measure how far
the outputs move from the float model. The layers that move them most are the ones worth
keeping in float (`--keep-float`).

Runs on the ONNX form of the model with onnxruntime's QDQ quantizer, reusing one calibration
pass for every layer.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import measure, output
from ..backends import onnx as onnx_backend
from ..backends import require
from .quantize import Calibration

QUANTIZABLE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def layer_of(node_name: str, suffix: bool = False) -> str:
    """The source layer a node belongs to.

    TF scopes (tf2onnx): `model_1/conv2_1/BiasAdd` -> conv2 (Keras adds the _1 suffixes; `suffix` keeps
    them: conv2_1, which names that one scope where `tf.math.add` would name every `tf.math.add_N`).
    PyTorch exports: `/layer1/conv/Conv` -> layer1/conv (the module path without the op).
    """
    parts = [p for p in re.sub(r"#\d+$", "", node_name).split("/") if p]
    if node_name.startswith("/"):
        return "/".join(parts[:-1]) or parts[0]
    name = parts[1] if len(parts) >= 3 else parts[0]
    return name if suffix else re.sub(r"_\d+$", "", name)


def analyze(source, samples: list[list[np.ndarray]], calib: Calibration, limit: int = 100) -> list[dict]:
    """Rows sorted from most to least sensitive: layer, nodes, cosine, max abs error, top-1 agreement."""
    onnx = require("onnx", "full")
    q = require("onnxruntime.quantization", "onnx")
    float_path, _ = onnx_backend.float_model(source)
    model = onnx.load(str(float_path))
    layers: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZABLE:
            layers.setdefault(layer_of(node.name), []).append(node.name)
    samples = samples[:limit]
    reference = _run(float_path, samples)
    rows = []
    with output.tempdir("sens-") as tmp:  # marked scratch: a killed run's is swept
        pre, cache = Path(tmp) / "pre.onnx", Path(tmp) / "calibration.cache"
        q.shape_inference.quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        for layer, nodes in layers.items():
            out = Path(tmp) / "one.onnx"
            q.quantize_static(str(pre), str(out), onnx_backend.CalibrationReader(model, calib.samples),
                              quant_format=q.QuantFormat.QDQ, per_channel=True, nodes_to_quantize=nodes,
                              calibration_cache_path=str(cache))
            fid = measure.fidelity(reference, _run(out, samples), "int8")
            rows.append({"layer": layer, "nodes": nodes, "cosine": fid["cosine"], "max_abs_error": fid["max_abs_error"],
                         "top1_agreement": fid["top1_agreement"], "samples": len(samples)})
    rows.sort(key=lambda r: (r["cosine"], -r["max_abs_error"]))
    return rows


def _run(path: Path, samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    session = onnx_backend.Session(path)
    return [session.run(s) for s in samples]


def markdown(rows: list[dict]) -> list[str]:
    lines = ["| rank | layer | cosine | max err | top-1 agree |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {r['layer']} | {r['cosine']:.6f} | {r['max_abs_error']:.2e} | {r['top1_agreement']:.1%} |"
              for i, r in enumerate(rows, 1)]
    return lines
