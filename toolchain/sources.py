"""Input models: detect the kind from content, load safely, fix shapes, run the reference.

TensorFlow-side kinds (Keras .keras/.h5, SavedModel) are loaded here; formats that are
also artifacts (ONNX, TFLite) are read by their backend's `load_source`.
"""
from __future__ import annotations

import math
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import backends, bounds
from .errors import EdgekitError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class LoadOptions:
    workdir: Path
    batch: int = 1
    input_shapes: dict[str | None, tuple[int, ...]] = field(default_factory=dict)  # None: the only input
    trust_model: bool = False
    data_shapes: dict[str | None, tuple[int, ...]] = field(default_factory=dict)  # per-sample shapes in --data/--calib
    data_origin: str = ""
    notes: list[str] = field(default_factory=list)  # what loading decided that the report should say


@dataclass
class Source:
    """A loaded input model. `path` is a private copy: converters never see the user's file."""
    kind: str
    path: Path
    name: str
    inputs: list[TensorSpec]
    predict_one: Callable[[list[np.ndarray]], list[np.ndarray]]
    handle: Any = None  # the loaded model object backends may convert from (keras.Model, tf function, ...)
    reference_precision: str = "fp32"  # "dynamic" for a source that quantizes activations at run time

    def predict(self, samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        return [self.predict_one(s) for s in samples]


def detect_kind(path: Path) -> str:
    if not path.exists():
        raise EdgekitError(f"model not found: {path}", "check the path")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise EdgekitError(f"{path} is a directory without saved_model.pb", "give a SavedModel directory or a model file")
    head = path.read_bytes()[:16]
    if not head:
        raise EdgekitError(f"{path} is empty", "re-export the model")
    if head.startswith(b"PK\x03\x04") and path.suffix.lower() != ".npz":
        return _keras_zip_kind(path)
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"\x08") or path.suffix.lower() == ".onnx":
        return "onnx"
    for plugin in backends.plugins():
        if plugin.detect and plugin.detect(path, head):
            return plugin.FORMAT
    raise EdgekitError(f"{path}: unrecognised model format",
                       "give a Keras .keras/.h5, a SavedModel directory, an .onnx or a .tflite file")


def _keras_zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except zipfile.BadZipFile:
        raise EdgekitError(f"{path} is truncated or corrupt (bad zip archive)", "re-save the Keras model") from None
    if "config.json" in names:
        return "keras"
    raise EdgekitError(f"{path} is a zip archive but not a Keras model (no config.json)", "give a .keras file saved by Keras 3")


def load(path: Path, opts: LoadOptions, copy_to: str = "source") -> Source:
    path = Path(path)
    kind = detect_kind(path)
    copy = opts.workdir / copy_to / path.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    if kind == "onnx":  # with its external-data files, which must lie in its folder
        backends.get("onnx").copy_with_data(path, copy)
    else:
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, copy)
    if kind in ("keras", "h5", "savedmodel"):
        return _load_tf(kind, copy, opts)
    return backends.get(kind).load_source(copy, opts)


def fix_shape(name: str, shape: list, opts: LoadOptions, only_input: bool) -> tuple[int, ...]:
    """Replace dynamic dims from --input-shape / the profile; refuse what stays unknown."""
    override = opts.input_shapes.get(name) or (opts.input_shapes.get(None) if only_input else None)
    if override:
        if len(override) != len(shape):
            raise EdgekitError(f"--input-shape {override} has rank {len(override)} but input '{name}' has rank {len(shape)}",
                               f"give {len(shape)} dims")
        clash = [(a, b) for a, b in zip(shape, override) if isinstance(a, int) and a > 0 and a != b]
        if clash:
            raise EdgekitError(f"--input-shape {override} conflicts with the fixed shape {tuple(shape)} of input '{name}'",
                               "only dynamic dims can be changed")
        bounds.check_tensor(name, override)
        return tuple(override)
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if dims and dims[0] is None:
        dims[0] = opts.batch
    if None in dims:
        dims = _dims_from_data(name, dims, opts, only_input)
    if None in dims:
        shown = ",".join("?" if d is None else str(d) for d in dims)
        raise EdgekitError(f"input '{name}' has dynamic dims ({shown})",
                           "fix them with --input-shape, build.input_shape in the profile, or --data/--calib "
                           "samples of the shape to use")
    bounds.check_tensor(name, dims)
    return tuple(dims)


def _dims_from_data(name: str, dims: list, opts: LoadOptions, only_input: bool) -> list:
    """Fill dynamic dims from the per-sample shape of --data/--calib (batch dim kept), when it fits."""
    sample = opts.data_shapes.get(name) or (opts.data_shapes.get(None) if only_input else None)
    if sample is None or len(sample) + 1 != len(dims):
        return dims
    if any(d is not None and d != s for d, s in zip(dims[1:], sample)):
        return dims  # the data does not fit the fixed dims: loading the data reports it
    fixed = [dims[0], *sample]
    shown = ",".join("?" if d is None else str(d) for d in dims)
    opts.notes.append(f"input '{name}' has dynamic dims ({shown}): fixed to {tuple(fixed)} from the sample shape "
                      f"of {opts.data_origin} (no --input-shape given)")
    return fixed


def _load_tf(kind: str, path: Path, opts: LoadOptions) -> Source:
    tf = backends.require("tensorflow", "full")
    if kind == "savedmodel":
        fn, specs = _load_savedmodel(tf, path, opts)
        handle = None
    else:
        handle = _load_keras(path, opts)
        inputs = handle.inputs
        specs = [TensorSpec(_input_name(t, i), fix_shape(_input_name(t, i), list(t.shape), opts, len(inputs) == 1),
                            np.dtype(t.dtype).name) for i, t in enumerate(inputs)]
        model = handle
        fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
    signature = [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in specs]
    concrete = fn.get_concrete_function(*signature)

    def predict_one(arrays):
        out = concrete(*[tf.constant(a) for a in arrays])
        out = out if isinstance(out, (list, tuple)) else list(out.values()) if isinstance(out, dict) else [out]
        return [np.asarray(o) for o in out]

    return Source(kind, path, path.stem, specs, predict_one, handle=(fn, signature, handle))


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", "") or f"input_{index}"
    return name.split(":")[0].replace("/", "_")


def _load_keras(path: Path, opts: LoadOptions):
    backends.require("tensorflow", "full")
    import keras
    try:
        return keras.saving.load_model(path, safe_mode=not opts.trust_model, compile=False)
    except Exception as exc:  # keras raises bare ValueError/TypeError/OSError for all of these
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text and "unsafe" in text.lower():
            raise EdgekitError(f"{path.name} contains a Lambda layer with Python code; loading it would run that code",
                               "re-run with --trust-model only if you trust where the model came from") from None
        if "Unknown layer" in text or "Could not locate" in text:
            raise EdgekitError(f"{path.name} uses a custom layer Keras cannot find ({_first_line(text)})",
                               "save the model without custom layers, or export a SavedModel/ONNX") from None
        raise EdgekitError(f"{path.name} could not be loaded as a Keras model ({_first_line(text)})",
                           "check the file is complete; re-save it with model.save()") from None


def _load_savedmodel(tf, path: Path, opts: LoadOptions):
    from .graph_ops import unsafe_ops
    found = unsafe_ops(path) if not opts.trust_model else {}
    if found:
        ops = ", ".join(f"{op}: {why}" for op, why in sorted(found.items()))
        raise EdgekitError(f"{path.name} holds ops that reach outside the model ({ops}); loading or converting it "
                           "would run them", "re-run with --trust-model only if you trust where the model came from")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise EdgekitError(f"{path.name} could not be loaded as a SavedModel ({_first_line(str(exc))})",
                           "check the directory is complete") from None
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise EdgekitError(f"{path.name} has no 'serving_default' signature", "export it with model.export() or a signature")
    _, kwargs = sig.structured_input_signature
    names = sorted(kwargs)
    specs = [TensorSpec(n, fix_shape(n, list(kwargs[n].shape), opts, len(names) == 1), kwargs[n].dtype.name) for n in names]
    out_keys = sorted(sig.structured_outputs)

    @tf.function
    def fn(*xs):
        out = sig(**dict(zip(names, xs)))
        return [out[k] for k in out_keys]

    fn._edgekit_keep = loaded  # keep the variables alive
    return fn, specs


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return line[:200]


STREAMS = {"evaluation": None, "calibration": 1}  # independent random streams of one seed


def make_inputs(specs: list[TensorSpec], count: int, seed: int = 0, stream: str = "evaluation") -> list[list[np.ndarray]]:
    """Seeded random samples shaped like the model's inputs (used when no --data is given). Evaluation
    and calibration inputs come from different streams, so nothing scored was calibrated on."""
    rng = np.random.default_rng(seed if STREAMS[stream] is None else [seed, STREAMS[stream]])
    per_sample = sum(math.prod(s.shape) * max(np.dtype(s.dtype).itemsize, 4) for s in specs)
    bounds.check_memory(count * per_sample, f"{count} generated input samples",
                        "give a smaller --input-shape, or fewer samples (bench.eval_samples)")
    samples = []
    for _ in range(count):
        sample = []
        for s in specs:
            if np.issubdtype(np.dtype(s.dtype), np.floating):
                sample.append(rng.random(s.shape, dtype=np.float32).astype(s.dtype))
            else:
                sample.append(rng.integers(0, 10, s.shape).astype(s.dtype))
        samples.append(sample)
    return samples
