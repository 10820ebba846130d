"""A tiny numpy-only backend for testing the plumbing (pipeline, reports, CLI, errors).

Its model is an .npz holding a dense layer: `w` (features x classes), `b`, and the input
shape. Input and artifact are the same file; Session computes softmax(x @ w + b).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

FORMAT = "fake"
SUFFIX = ".npz"
RUNTIME = "numpy"
SOURCES = ("fake",)


def files(path: Path) -> list[Path]:
    return [path]


def runtime_version() -> str:
    return np.__version__


def save_model(path: Path, input_shape: tuple[int, ...], classes: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    features = int(np.prod(input_shape[1:]))
    np.savez(path, edgekit_fake=np.array(1), input_shape=np.array(input_shape),
             w=rng.normal(size=(features, classes)).astype(np.float32), b=np.zeros(classes, np.float32))
    return Path(path)


class Session:
    def __init__(self, path: Path, threads: int = 1, device: str = "cpu"):
        with np.load(path) as data:
            self.w, self.b, shape = data["w"], data["b"], tuple(int(d) for d in data["input_shape"])
        self.inputs = [("x", shape, "float32")]

    def bind(self, arrays: list[np.ndarray]) -> None:
        self._bound = arrays

    def invoke(self) -> None:
        self.run(self._bound)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        logits = arrays[0].reshape(arrays[0].shape[0], -1) @ self.w + self.b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return [(e / e.sum(axis=1, keepdims=True)).astype(np.float32)]


def load_source(path: Path, opts):
    from ..sources import Source, TensorSpec
    session = Session(path)
    specs = [TensorSpec(n, s, d) for n, s, d in session.inputs]
    return Source("fake", path, path.stem, specs, session.run, workdir=opts.workdir)


def export(source, out_path: Path, ctx) -> list[str]:
    shutil.copyfile(source.path, out_path)
    return ["copied (fake backend)"]
