"""Small bundled data sets for demos and tests."""

from pathlib import Path

import numpy as np

DIGITS_PATH = Path(__file__).parent / "data" / "digits.npz"
DIGITS_TEST_SIZE = 397


def load_digits_split(seed=0):
    """The bundled 8x8 digits, shuffled with ``seed``; the last 397 samples are the test split.

    Returns a dict with ``x_train, y_train, x_test, y_test``: x float32 in [0, 1]
    of shape (N, 8, 8, 1), y int64.
    """
    with np.load(DIGITS_PATH) as data:
        images, labels = data["images"], data["labels"]
    order = np.random.default_rng(seed).permutation(len(labels))
    x = (images[order].astype(np.float32) / 16.0)[..., None]
    y = labels[order].astype(np.int64)
    cut = len(y) - DIGITS_TEST_SIZE
    return {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


def save_eval_npz(path, x, y):
    """Write evaluation data as an ``.npz`` with keys ``x`` and ``y`` (exactly at ``path``)."""
    with open(path, "wb") as f:
        np.savez_compressed(f, x=x, y=y)


def _bilinear_matrix(n_in, n_out):
    """``(n_out, n_in)`` weights of 1-D bilinear resampling with half-pixel centers.

    Same sampling as ``tf.image.resize(..., "bilinear")`` (no antialiasing).
    """
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    weights = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def digits_as_images(shape, classes, seed=0):
    """The digits split of ``load_digits_split(seed)``, shaped as input for a model of ``shape``.

    Each 8x8 digit is resized bilinearly to ``shape[:2]`` and repeated over ``shape[2]``
    channels (float32 in [0, 1]). Labels (int64) are the digit when ``classes >= 10``
    (classes past 9 stay unused) and ``digit >= 5`` when ``classes == 2``.
    Returns a dict with ``x_train, y_train, x_test, y_test``.
    """
    height, width, channels = (int(n) for n in shape)
    if classes == 2:
        relabel = lambda y: (y >= 5).astype(np.int64)  # noqa: E731
    elif classes >= 10:
        relabel = lambda y: y  # noqa: E731
    else:
        raise ValueError(f"classes must be 2 or >= 10, not {classes}")
    split = load_digits_split(seed)
    rows, cols = _bilinear_matrix(8, height), _bilinear_matrix(8, width)
    out = {}
    for part in ("train", "test"):
        plane = rows @ split[f"x_{part}"][..., 0] @ cols.T  # (N, height, width) float32
        np.clip(plane, 0.0, 1.0, out=plane)
        out[f"x_{part}"] = np.repeat(plane[..., None], channels, axis=-1)
        out[f"y_{part}"] = relabel(split[f"y_{part}"])
    return out
