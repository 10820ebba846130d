"""edgekit.zoo: bundled demo model, data and MLPerf Tiny reference architectures.

Importing this package is cheap: keras/tensorflow are imported only when a model is built.
"""

import hashlib
import os
import secrets
from pathlib import Path

from . import datasets, digits_cnn, reference

REFERENCE_MODELS = {
    "digits-cnn": digits_cnn.build,
    "resnet8": reference.resnet8,
    "ds-cnn": reference.ds_cnn,
    "mobilenet-v1-0.25": reference.mobilenet_v1_025,
}


def build(name, seed=0):
    """Build the reference model ``name`` (untrained) with random init from ``seed``."""
    try:
        builder = REFERENCE_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(REFERENCE_MODELS)}") from None
    return builder(seed=seed)


def _recipe_key():
    """Short hash of everything the trained default model depends on."""
    import keras
    import tensorflow as tf

    h = hashlib.sha256()
    for path in (Path(digits_cnn.__file__), Path(datasets.__file__), datasets.DIGITS_PATH):
        h.update(path.read_bytes())
    h.update(f"keras={keras.__version__} tf={tf.__version__}".encode())
    return h.hexdigest()[:12]


def _atomic_write(final, write):
    """Call ``write(tmp_path)`` on a temp file next to ``final``, then rename it into place."""
    tmp = final.with_name(f".{final.stem}.{secrets.token_hex(4)}.tmp{final.suffix}")
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_model(cache_dir: Path) -> tuple[Path, Path]:
    """Return ``(model_path, eval_path)`` of the trained digits CNN, training it on first use.

    ``model_path`` is a ``.keras`` file; ``eval_path`` an ``.npz`` of the test split
    (keys ``x``, ``y``). Both are cached in ``cache_dir`` under a key of the recipe.
    """
    cache_dir = Path(cache_dir)
    key = _recipe_key()
    model_path = cache_dir / f"digits_cnn-{key}.keras"
    eval_path = cache_dir / f"digits_eval-{key}.npz"
    if model_path.is_file() and eval_path.is_file():
        return model_path, eval_path

    cache_dir.mkdir(parents=True, exist_ok=True)
    model, _ = digits_cnn.train()
    data = datasets.load_digits_split()
    _atomic_write(eval_path, lambda tmp: datasets.save_eval_npz(tmp, data["x_test"], data["y_test"]))
    _atomic_write(model_path, lambda tmp: model.save(tmp))
    return model_path, eval_path
