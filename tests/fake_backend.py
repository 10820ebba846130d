"""A tiny numpy-only backend for testing the plumbing (pipeline, quantize pass, reports, CLI, errors).

A plug-in (conftest names it in $EDGEKIT_BACKENDS), so it also shows how a backend outside the
package is added. Its model is an .npz holding a dense layer: `w` (features x classes), `b`, and
the input shape. Input and artifact are the same file; Session computes softmax(x @ w + b).
Its `quantize` hook rounds the weights to int8 levels ("int8"): cheap, but a real pass run.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

FORMAT = "fake"
SUFFIX = ".npz"
RUNTIME = "numpy"
EXTRA = "fake"
SOURCES = ("fake",)
PRECISIONS = ("int8",)
CALIB_METHODS = ("minmax",)
op_summary = None
gpu_name = None


def detect(path: Path, head: bytes) -> bool:
    if not (head.startswith(b"PK\x03\x04") and path.suffix.lower() == ".npz"):
        return False
    with np.load(path) as data:
        return "edgekit_fake" in data.files


def files(path: Path) -> list[Path]:
    return [path]


def runtime_version() -> str:
    return np.__version__


def save_model(path: Path, input_shape: tuple[int, ...], classes: int, seed: int = 0, sleep_s: float = 0.0) -> Path:
    """`sleep_s` makes every timed invoke() sleep: a stand-in for a runtime that hangs while benchmarked."""
    rng = np.random.default_rng(seed)
    features = int(np.prod(input_shape[1:]))
    np.savez(path, edgekit_fake=np.array(1), input_shape=np.array(input_shape), sleep_s=np.array(sleep_s),
             w=rng.normal(size=(features, classes)).astype(np.float32), b=np.zeros(classes, np.float32))
    return Path(path)


class Session:
    def __init__(self, path: Path, threads: int = 1, device: str = "cpu"):
        with np.load(path) as data:
            self.w, self.b, shape = data["w"], data["b"], tuple(int(d) for d in data["input_shape"])
            self.sleep_s = float(data["sleep_s"]) if "sleep_s" in data.files else 0.0
        self.inputs = [("x", shape, "float32")]

    def bind(self, arrays: list[np.ndarray]) -> None:
        self._bound = arrays

    def invoke(self) -> None:
        time.sleep(self.sleep_s)
        self.run(self._bound)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        logits = arrays[0].reshape(arrays[0].shape[0], -1) @ self.w + self.b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return [(e / e.sum(axis=1, keepdims=True)).astype(np.float32)]


def load_source(path: Path, opts):
    from edgekit.sources import Source, TensorSpec
    session = Session(path)
    specs = [TensorSpec(n, s, d) for n, s, d in session.inputs]
    return Source("fake", path, path.stem, specs, session.run)


def export(source, out_path: Path, ctx) -> list[str]:
    shutil.copyfile(source.path, out_path)
    return ["copied (fake backend)"]


def quantize(source, float_artifact: Path, out_path: Path, config, calib, method: str) -> list[str]:
    """Weights rounded to 255 levels per tensor; the calibration set is only counted."""
    with np.load(float_artifact) as data:
        arrays = dict(data)
    scale = float(np.abs(arrays["w"]).max()) / 127 or 1.0
    arrays["w"] = (np.round(arrays["w"] / scale) * scale).astype(np.float32)
    np.savez(out_path, **arrays)
    return [f"weights on 255 levels (scale {scale:.3g}), {len(calib.samples) if calib else 0} calibration samples"]
