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
