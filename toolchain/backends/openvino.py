"""OpenVINO IR: export (openvino.convert_model from any input kind), run (OpenVINO runtime)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from . import require

FORMAT = "openvino"
SUFFIX = ".xml"
RUNTIME = "openvino"
SOURCES = ("keras", "h5", "savedmodel", "onnx", "tflite")  # input kinds export() can convert from
EXTRA = "openvino"


def files(path: Path) -> list[Path]:
    return [path, Path(path).with_suffix(".bin")]


def runtime_version() -> str:
    return require("openvino", EXTRA).get_version()


class Session:
    def __init__(self, path: Path, threads: int = 1, device: str = "CPU"):
        ov = require("openvino", EXTRA)
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # never silently run bf16/fp16 on a float32 artifact
        self.compiled = core.compile_model(str(path), device, config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [(p.any_name, tuple(p.shape), p.element_type.to_dtype().name) for p in self.compiled.inputs]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(list(arrays))
        return [np.array(results[out]) for out in self.compiled.outputs]


def canonical_names(model) -> None:
    """Auto-generated names (`Constant_3137`) carry a process-wide counter: number them by position."""
    for i, op in enumerate(model.get_ordered_ops()):
        if _AUTO_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")


_AUTO_NAME = re.compile(r"[A-Z][A-Za-z0-9]*_\d+")  # op-type names are CamelCase


def export(source, out_path: Path, ctx) -> list[str]:
    ov = require("openvino", EXTRA)
    if source.kind in ("onnx", "tflite"):
        origin = source.onnx_fixed_path if source.kind == "onnx" else source.path
        convert_from, note = str(origin), f"openvino.convert_model from the {source.kind} input"
    else:
        fn, signature, _ = source.handle
        convert_from, note = fn.get_concrete_function(*signature), "openvino.convert_model from the TF graph"
    try:
        model = ov.convert_model(convert_from)
    except Exception as exc:
        raise ConversionError(f"openvino.convert_model failed: {str(exc).strip().splitlines()[0][:300]}") from None
    try:
        model.reshape({port: ov.PartialShape(list(spec.shape)) for port, spec in zip(model.inputs, source.inputs)})
    except Exception as exc:
        raise ConversionError(f"OpenVINO could not fix the input shapes: {str(exc).strip().splitlines()[0][:300]}") from None
    canonical_names(model)
    ov.save_model(model, str(out_path), compress_to_fp16=False)
    return [note + " (float32 IR)"]
