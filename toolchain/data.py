"""Evaluation and calibration data: loading, validation, and the held-apart calibration slice."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import EdgekitError
from .passes.quantize import Calibration
from .schema import option
from .sources import TensorSpec, make_inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm")
RANGE_SLACK = 4.0  # calibration values may span up to this many times the evaluation data's span


@dataclass
class EvalSet:
    samples: list[list[np.ndarray]]
    labels: np.ndarray | None
    origin: str
    note: str | None = None  # how the labels were read, when it is worth saying (one-hot converted)


@dataclass(frozen=True)
class Preprocess:
    """How raw calibration images become model inputs: (pixel * scale - mean) / std."""
    scale: float = option(1 / 255, "Multiplier applied to 0..255 pixel values.")
    mean: list[float] = option([], "Per-channel mean subtracted after scaling (one value or one per channel).")
    std: list[float] = option([], "Per-channel divisor applied after the mean.")


def load_npz_inputs(path: Path, specs: list[TensorSpec], what: str) -> tuple[list[list[np.ndarray]], dict]:
    """Samples (batched like the model's inputs) from an .npz with `x` (or one array per input name) / an .npy."""
    arrays = read_arrays(path, what)
    keys = ["x"] if len(specs) == 1 else [s.name for s in specs]
    if len(specs) == 1 and "x" not in arrays and len(arrays) == 1 and what == "calibration":
        keys = list(arrays)
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise EdgekitError(f"{path} has no array named {missing[0]!r} (has: {', '.join(arrays) or 'none'})",
                           "save inputs as x (one input) or under each input's name")
    columns = [split_batches(arrays[k], s, path) for k, s in zip(keys, specs)]
    return [list(c) for c in zip(*columns)], arrays


def read_arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (or the one array of an .npy, as `x`); one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{what} file not found: {path}", "give an .npz with arrays x (and y)")
    try:
        if path.suffix == ".npy":
            arrays = {"x": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        text = str(exc).splitlines()[0][:150] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"{path} is not a readable .npz ({text})",
                           "save it with numpy.savez(path, x=..., y=...)") from None
    if not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise EdgekitError(f"{path} is not a readable .npz (unexpected content)", "save it with numpy.savez")
    return arrays


def check_labels(y: np.ndarray, path, count: int | None = None) -> tuple[np.ndarray, str | None]:
    """Integer class ids from `y` (one per sample); one-hot rows are converted (with a note).
    Strings, complex numbers, fractions, negatives and empty label sets are refused."""
    y = np.asarray(y)
    fix = "store y as integer class ids 0..C-1 (or one-hot rows), one per input"
    if y.size == 0 or y.ndim == 0:
        raise EdgekitError(f"{path}: y holds no labels", fix)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise EdgekitError(f"{path}: y has dtype {y.dtype}; labels must be numbers", fix)
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise EdgekitError(f"{path}: y contains NaN or infinite values", fix)
    note = None
    if y.ndim == 2 and y.shape[1] > 1:
        if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
            raise EdgekitError(f"{path}: y has shape {y.shape} but its rows are not one-hot", fix)
        y, note = y.argmax(axis=1), f"labels in {Path(path).name} were one-hot; converted to class ids"
    elif y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1:
        raise EdgekitError(f"{path}: y has shape {y.shape}; expected one class id per input", fix)
    if np.issubdtype(y.dtype, np.floating) and not np.all(y == np.round(y)):
        raise EdgekitError(f"{path}: y holds non-integer values (e.g. {y[y != np.round(y)][0]:g})", fix)
    if np.any(y < 0):
        raise EdgekitError(f"{path}: y holds negative class ids (e.g. {int(y[y < 0][0])})", fix)
    if np.any(y.astype(np.float64) >= 2 ** 31):
        raise EdgekitError(f"{path}: y holds class ids too large to be classes (e.g. {y.astype(np.float64).max():g})", fix)
    if count is not None and len(y) < count:
        raise EdgekitError(f"{path}: y has {len(y)} labels for {count} inputs", "give one label per input")
    return y.astype(np.int64), note


def check_classes(labels: np.ndarray, classes: int, origin: str) -> None:
    """Class ids must index the model's output (top-1 is an argmax over it)."""
    if labels is not None and len(labels) and int(labels.max()) >= classes:
        raise EdgekitError(f"{origin}: label {int(labels.max())} is out of range for a model with {classes} outputs",
                           f"labels must be class ids 0..{classes - 1}")


def sample_shapes(path: Path | str | None) -> dict[str | None, tuple[int, ...]]:
    """Per-sample shapes in an .npz/.npy (`x` -> None, i.e. the only input; other arrays by name),
    without the leading sample axis. Empty when the file is missing, unreadable or not arrays:
    loading it later gives the proper error."""
    if path is None or str(path) == "random" or not Path(path).is_file():
        return {}
    path = Path(path)
    try:
        if path.suffix == ".npy":
            return {None: tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape[1:])}
        with np.load(path, allow_pickle=False) as npz:
            return {(None if k == "x" else k): tuple(npz[k].shape[1:]) for k in npz.files if k != "y"}
    except Exception:
        return {}


def load_evalset(path: Path | None, specs: list[TensorSpec], seed: int) -> EvalSet:
    if path is None:
        return EvalSet(make_inputs(specs, 32, seed), None, f"random inputs (seed {seed})")
    samples, arrays = load_npz_inputs(Path(path), specs, "data")
    if not samples:
        raise EdgekitError(f"{path}: x holds no samples", "give at least one input")
    labels, note = arrays.get("y"), None
    if labels is not None:
        batch = specs[0].shape[0]
        labels, note = check_labels(labels, path, len(samples) * batch)
        labels = labels[: len(samples) * batch: batch]
    return EvalSet(samples, labels, str(path), note)


def labels_for(y: np.ndarray, samples: int, batch: int, path) -> np.ndarray:
    """One label per input row of `samples` batches, checked."""
    labels, _ = check_labels(y, path, samples * batch)
    return labels[: samples * batch]


def split_batches(x: np.ndarray, spec: TensorSpec, path: Path) -> list[np.ndarray]:
    per_sample = spec.shape[1:]
    if np.issubdtype(x.dtype, np.complexfloating) and not np.issubdtype(np.dtype(spec.dtype), np.complexfloating):
        raise EdgekitError(f"{path}: x is complex ({x.dtype}) but input '{spec.name}' takes {spec.dtype}",
                           "store real numbers; complex values would lose their imaginary part")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise EdgekitError(f"{path}: arrays of dtype {x.dtype} cannot feed input '{spec.name}' ({spec.dtype})",
                           "store numbers (e.g. float32)")
    if tuple(x.shape[1:]) != tuple(per_sample):
        raise EdgekitError(f"{path}: x has shape {x.shape} but input '{spec.name}' takes "
                           f"(N, {', '.join(map(str, per_sample))})", "reshape the data to the model's input layout")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise EdgekitError(f"{path}: x contains NaN or infinite values", "clean the data before converting")
    batch = spec.shape[0]
    x = x.astype(spec.dtype, copy=False)
    return [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)]


def take(evalset: EvalSet, count: int) -> EvalSet:
    labels = evalset.labels[:count] if evalset.labels is not None else None
    return replace(evalset, samples=evalset.samples[:count], labels=labels)


def hold_out(evalset: EvalSet, count: int) -> tuple[EvalSet, Calibration]:
    """Split the last `count` samples off --data for calibration; they are never scored."""
    total = len(evalset.samples)
    count = min(count, total // 2)
    if count < 1:
        raise EdgekitError(f"--data has {total} sample(s): too few to hold some apart for calibration",
                           "give more data, or a separate --calib file")
    rest = total - count
    labels = evalset.labels[:rest] if evalset.labels is not None else None
    calib = Calibration(evalset.samples[rest:], f"last {count} samples of {evalset.origin}, held apart from scoring")
    return replace(evalset, samples=evalset.samples[:rest], labels=labels), calib


def load_calibration(spec: str, specs: list[TensorSpec], count: int, preprocess: Preprocess, seed: int) -> Calibration:
    if spec == "random":
        return Calibration(make_inputs(specs, count, seed, "calibration"),
                           f"random inputs (seed {seed}, calibration stream): UNCALIBRATED", True)
    path = Path(spec)
    if path.is_dir():
        return Calibration(load_images(path, specs, count, preprocess), f"{count}-image sample of {path}")
    samples, _ = load_npz_inputs(path, specs, "calibration")
    if not samples:
        raise EdgekitError(f"{path} holds no calibration samples", "give at least one sample")
    return Calibration(samples[:count], f"{path} ({min(count, len(samples))} samples)")


def load_images(folder: Path, specs: list[TensorSpec], count: int, preprocess: Preprocess) -> list[list[np.ndarray]]:
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise EdgekitError("an image folder can calibrate only a model with one 4-D image input",
                           "give the calibration data as an .npz instead")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise EdgekitError(f"{folder} contains no images ({', '.join(IMAGE_SUFFIXES)})", "point --calib at image files")
    from PIL import Image
    shape = specs[0].shape
    nchw = shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4)
    height, width, channels = (shape[2], shape[3], shape[1]) if nchw else (shape[1], shape[2], shape[3])
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    samples = []
    for f in files:
        try:
            with Image.open(f) as img:
                pixels = np.asarray(img.convert(mode).resize((width, height), Image.BILINEAR), dtype=np.float32)
        except OSError as exc:
            raise EdgekitError(f"{f} is not a readable image ({exc})", "remove it from the calibration folder") from None
        x = pixels.reshape(height, width, channels) * preprocess.scale
        if preprocess.mean:
            x = x - np.asarray(preprocess.mean, np.float32)
        if preprocess.std:
            x = x / np.asarray(preprocess.std, np.float32)
        x = x.transpose(2, 0, 1) if nchw else x
        samples.append([x[None].astype(specs[0].dtype)])
    return samples


def check_range(calib: Calibration, evalset: EvalSet) -> None:
    """Calibration data far outside the evaluation data's range means different preprocessing."""
    if calib.uncalibrated or evalset.origin.startswith("random"):
        return
    lo_c, hi_c = _range(calib.samples)
    lo_e, hi_e = _range(evalset.samples)
    span = max(hi_e - lo_e, 1e-6)
    if (hi_c - lo_c) > RANGE_SLACK * span or hi_c < lo_e - span or lo_c > hi_e + span:
        raise EdgekitError(f"calibration values span [{lo_c:.3g}, {hi_c:.3g}] but --data spans [{lo_e:.3g}, {hi_e:.3g}]",
                           "preprocess the calibration data the same way (e.g. --calib-scale)")


def _range(samples: list[list[np.ndarray]]) -> tuple[float, float]:
    values = [a for s in samples for a in s]
    return float(min(a.min() for a in values)), float(max(a.max() for a in values))
