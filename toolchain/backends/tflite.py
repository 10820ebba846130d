"""TFLite / LiteRT: export (TF converter, onnx2tf for ONNX inputs), run (ai-edge-litert)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import ConversionError, EdgekitError
from . import require

FORMAT = "tflite"
SUFFIX = ".tflite"
RUNTIME = "ai-edge-litert"
SOURCES = ("keras", "h5", "savedmodel", "onnx", "tflite")  # input kinds export() can convert from
EXTRA = "tflite"


def files(path: Path) -> list[Path]:
    return [path]


def runtime_version() -> str:
    from importlib.metadata import version
    return version("ai-edge-litert")


class Session:
    def __init__(self, path: Path, threads: int = 1):
        interpreter_mod = require("ai_edge_litert.interpreter", EXTRA)
        try:
            self.interpreter = interpreter_mod.Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgekitError(f"{Path(path).name} is truncated or corrupt (LiteRT: {str(exc).strip().splitlines()[0][:200]})",
                               "re-export the .tflite model") from None
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self.inputs = [(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name) for d in self._in]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for detail, array in zip(self._in, arrays):
            self.interpreter.set_tensor(detail["index"], np.asarray(array, dtype=detail["dtype"]))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]) for d in self._out]


def load_source(path: Path, opts):
    from ..sources import Source, TensorSpec
    session = Session(path)
    specs = [TensorSpec(n, s, d) for n, s, d in session.inputs]
    if any(min(s.shape, default=1) < 1 for s in specs):
        raise EdgekitError(f"{path.name} has dynamic input dims", "re-export the .tflite with a fixed input shape")
    return Source("tflite", path, path.stem, specs, session.run, workdir=opts.workdir)


def export(source, out_path: Path, ctx) -> list[str]:
    """Write the float artifact; returns notes for the report."""
    if source.kind == "tflite":
        shutil.copyfile(source.path, out_path)
        return ["copied from the input model"]
    if source.kind == "onnx":
        return _from_onnx(source, out_path)
    tf = require("tensorflow", "full")
    fn, signature, _ = source.handle
    require("absl.logging", "full").set_verbosity("error")  # a deprecation notice per conversion
    # No trackable object here: with one, the converter keeps variables unfrozen and the model reads NaNs.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function(*signature)])
    try:
        out_path.write_bytes(converter.convert())
    except Exception as exc:
        raise ConversionError(f"TFLite converter failed: {_last_error_line(str(exc))}") from None
    return ["tf.lite.TFLiteConverter (float32)"]


def _from_onnx(source, out_path: Path) -> list[str]:
    """ONNX -> TFLite through onnx2tf, run in a subprocess on a copy in a scratch dir.

    onnx2tf rewrites its input in place and may download a sample image file unless one
    is in its working directory, so it gets both a copy and a locally generated sample.
    """
    require("onnx2tf", "full")
    work = source.workdir / "onnx2tf"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = work / "model.onnx"
    shutil.copyfile(source.onnx_fixed_path, model)
    np.save(work / "calibration_image_sample_data_20x128x128x3_float32.npy",
            np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    keep = ",".join(s.name for s in source.inputs)
    cmd = [sys.executable, "-m", "onnx2tf", "-i", str(model), "-o", "out", "-kat", *keep.split(","), "-n"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, timeout=1800)
    produced = work / "out" / "model_float32.tflite"
    if proc.returncode != 0 or not produced.is_file():
        raise ConversionError(f"onnx2tf failed: {_last_error_line(proc.stdout + proc.stderr)}")
    shutil.copyfile(produced, out_path)
    return ["onnx2tf (ONNX -> TF -> TFLite float32), input layout kept as in the ONNX model"]


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return ((errors or lines or ["no output"])[-1])[:300]
