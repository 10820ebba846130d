"""Evaluation and calibration data: loading, validation, and the held-apart calibration slice."""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import bounds
from .errors import EdgekitError
from .passes.quantize import Calibration
from .schema import option
from .sources import TensorSpec, make_inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm")
MAX_IMAGE_PIXELS = 64 * 2 ** 20  # per calibration image, checked from its header before decoding
RANGE_SLACK = 4.0  # calibration values may span up to this many times the evaluation data's span


@dataclass
class EvalSet:
    samples: list[list[np.ndarray]]
    labels: np.ndarray | None
    origin: str
    note: str | None = None  # how the labels were read, when it is worth saying (one-hot converted)
    held: int | None = None  # samples at the end already chosen to be held apart (read_arrays selected them)


@dataclass(frozen=True)
class Preprocess:
    """How raw calibration images become model inputs: (pixel * scale - mean) / std."""
    scale: float = option(1 / 255, "Multiplier applied to 0..255 pixel values.")
    mean: list[float] = option([], "Per-channel mean subtracted after scaling (one value or one per channel).")
    std: list[float] = option([], "Per-channel divisor applied after the mean.")


def load_npz_inputs(path: Path, specs: list[TensorSpec], what: str,
                    select=None) -> tuple[list[list[np.ndarray]], dict]:
    """Samples (batched like the model's inputs) from an .npz with `x` (or one array per input name) / an .npy;
    `select`: the rows to read (read_arrays)."""
    arrays = read_arrays(path, what, select)
    keys = ["x"] if len(specs) == 1 else [s.name for s in specs]
    if len(specs) == 1 and "x" not in arrays and len(arrays) == 1 and what == "calibration":
        keys = list(arrays)
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise EdgekitError(f"{path} has no array named {missing[0]!r} (has: {', '.join(arrays) or 'none'})",
                           "save inputs as x (one input) or under each input's name")
    columns = [split_batches(arrays[k], s, path) for k, s in zip(keys, specs)]
    return [list(c) for c in zip(*columns)], arrays


def read_arrays(path: Path, what: str, select=None) -> dict[str, np.ndarray]:
    """Every array of an .npz (or the one array of an .npy, as `x`); one-line errors for anything else.

    Bounded: sizes come from each member's header before anything is inflated; `select(rows)` ->
    [(start, stop), ...] reads only those rows of each array (an .npy through a memory map, an .npz
    member streamed); what is read must fit in the memory available."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{what} file not found: {path}", "give an .npz with arrays x (and y)")
    try:
        if path.suffix == ".npy":
            x = np.load(path, mmap_mode="r", allow_pickle=False)
            return {"x": _take_rows({"x": x}, select, path)["x"]}
        with zipfile.ZipFile(path) as zf:
            members = {name[:-4]: _member_header(zf, name) for name in zf.namelist() if name.endswith(".npy")}
            return _take_rows({k: (zf, f"{k}.npy", *h) for k, h in members.items()}, select, path)
    except EdgekitError:
        raise
    except Exception as exc:
        text = str(exc).splitlines()[0][:150] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"{path} is not a readable .npz ({text})",
                           "save it with numpy.savez(path, x=..., y=...)") from None


def _member_header(zf: zipfile.ZipFile, name: str) -> tuple:
    """(shape, fortran_order, dtype, header length) of an .npz member, read without inflating the data."""
    with zf.open(name) as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{name}: .npy format version {version} is not supported (save with numpy.savez)")
        shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        if dtype.hasobject:
            raise ValueError(f"{name} holds Python objects (pickles are never loaded)")
        return shape, fortran, dtype, f.tell()


def _ranges(select, rows: int) -> list[tuple[int, int]]:
    return [(max(0, a), min(rows, b)) for a, b in (select(rows) if select else [(0, rows)]) if b > a]


def _take_rows(arrays: dict, select, path: Path) -> dict[str, np.ndarray]:
    """The selected rows of each array: a memory-mapped .npy, or (zip, member, header...) of an .npz."""
    plans, total = {}, 0
    for key, a in arrays.items():
        shape, dtype = (a.shape, a.dtype) if isinstance(a, np.ndarray) else (a[2], a[4])
        row = math.prod(shape[1:]) * dtype.itemsize
        whole = not shape or (not isinstance(a, np.ndarray) and a[3] and len(shape) > 1)  # scalar, Fortran order
        ranges = [(0, shape[0] if shape else 1)] if whole else _ranges(select, shape[0])
        plans[key] = ranges, whole
        total += sum(b - a_ for a_, b in ranges) * row
    bounds.check_memory(total, f"reading {path}", "give a smaller file, or fewer samples")
    return {key: _read(a, *plans[key]) for key, a in arrays.items()}


def _read(a, ranges, whole) -> np.ndarray:
    if isinstance(a, np.ndarray):  # memory-mapped .npy: only the pages of these rows are read
        return np.array(a) if whole else np.concatenate([np.array(a[s:e]) for s, e in ranges] or [np.array(a[:0])])
    zf, name, shape, fortran, dtype, offset = a
    row = math.prod(shape[1:]) * dtype.itemsize
    parts = []
    with zf.open(name) as f:
        for start, stop in ranges:
            f.seek(offset + (0 if whole else start * row))  # forward: inflated in chunks and dropped
            count = math.prod(shape) if whole else (stop - start) * math.prod(shape[1:])
            data = f.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise ValueError(f"{name} is shorter than its header says (truncated)")
            parts.append(np.frombuffer(data, dtype).reshape(shape if whole else (stop - start, *shape[1:]),
                                                            order="F" if fortran else "C").copy())
    return parts[0] if whole else (np.concatenate(parts) if parts else np.empty((0, *shape[1:]), dtype))


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
        with zipfile.ZipFile(path) as zf:  # from the members' headers: nothing inflated
            return {(None if n[:-4] == "x" else n[:-4]): tuple(_member_header(zf, n)[0][1:])
                    for n in zf.namelist() if n.endswith(".npy") and n != "y.npy"}
    except Exception:
        return {}


def load_evalset(path: Path | None, specs: list[TensorSpec], seed: int, scored: int | None = None,
                 held: int = 0) -> EvalSet:
    """--data, or random inputs. With `scored`, only the samples the run uses are read: the first
    `scored` and, with `held`, the last `held` (at most half) kept apart for calibration."""
    if path is None:
        return EvalSet(make_inputs(specs, 32, seed), None, f"random inputs (seed {seed})")
    batch, chosen = specs[0].shape[0], {}

    def select(rows: int) -> list[tuple[int, int]]:
        n = rows // batch
        count = chosen.setdefault("held", min(held, n // 2))
        rest = n - count
        return [(0, min(scored, rest) * batch), (rest * batch, n * batch)]
    samples, arrays = load_npz_inputs(Path(path), specs, "data", select if scored is not None else None)
    if not samples:
        raise EdgekitError(f"{path}: x holds no samples", "give at least one input")
    labels, note = arrays.get("y"), None
    if labels is not None:
        labels, note = check_labels(labels, path, len(samples) * batch)
        labels = labels[: len(samples) * batch: batch]
    return EvalSet(samples, labels, str(path), note, chosen.get("held") if held else None)


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
    count = evalset.held if evalset.held is not None else min(count, total // 2)
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
    rows = count * specs[0].shape[0]
    samples, _ = load_npz_inputs(path, specs, "calibration", lambda n: [(0, rows)])  # only the rows used
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
    shape = specs[0].shape
    nchw = shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4)
    height, width, channels = (shape[2], shape[3], shape[1]) if nchw else (shape[1], shape[2], shape[3])
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    samples = []
    for f in files:
        pixels = _image(f, mode, width, height)
        x = pixels.reshape(height, width, channels) * preprocess.scale
        if preprocess.mean:
            x = x - np.asarray(preprocess.mean, np.float32)
        if preprocess.std:
            x = x / np.asarray(preprocess.std, np.float32)
        x = x.transpose(2, 0, 1) if nchw else x
        samples.append([x[None].astype(specs[0].dtype)])
    return samples


def _image(f: Path, mode: str, width: int, height: int) -> np.ndarray:
    """One image resized to the input; a decompression bomb (more than MAX_IMAGE_PIXELS) is refused
    from its header, before its pixels are decoded."""
    import warnings

    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            with Image.open(f) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                return np.asarray(img.convert(mode).resize((width, height), Image.BILINEAR), dtype=np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise EdgekitError(f"{f} is larger than {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?); edgekit will "
                           "not decode it", "remove it from the calibration folder, or shrink it") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise EdgekitError(f"{f} is not a readable image ({' '.join(str(exc).split())[:150]})",
                           "remove it from the calibration folder") from None


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
