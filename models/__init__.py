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


def _recipe_key(module=digits_cnn, extra=""):
    """Short hash of everything a trained model depends on: ``module``'s source, the data, versions."""
    import keras
    import tensorflow as tf

    h = hashlib.sha256()
    for path in (Path(module.__file__), Path(datasets.__file__), datasets.DIGITS_PATH):
        h.update(path.read_bytes())
    h.update(f"keras={keras.__version__} tf={tf.__version__}".encode())
    h.update(extra.encode())
    return h.hexdigest()[:12]


def _atomic_write(final, write):
    """Call ``write(tmp_path)`` on a temp file next to ``final``, then rename it into place, with
    ``final.sha256`` beside it: a cache entry whose bytes no longer match is rebuilt (see ``_intact``)."""
    tmp = final.with_name(f".{final.stem}.{secrets.token_hex(4)}.tmp{final.suffix}")
    try:
        write(tmp)
        _digest_path(final).write_text(_digest(tmp) + "\n")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _digest_path(path):
    return path.with_name(path.name + ".sha256")


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _intact(*paths):
    """Every cache entry is there and matches the hash written with it (truncated, edited or
    half-written entries are not)."""
    try:
        return all(p.is_file() and _digest_path(p).read_text().strip() == _digest(p) for p in paths)
    except OSError:
        return False


def default_model(cache_dir: Path) -> tuple[Path, Path]:
    """Return ``(model_path, eval_path)`` of the trained digits CNN, training it on first use.

    ``model_path`` is a ``.keras`` file; ``eval_path`` an ``.npz`` of the test split
    (keys ``x``, ``y``). Both are cached in ``cache_dir`` under a key of the recipe.
    """
    cache_dir = Path(cache_dir)
    key = _recipe_key()
    model_path = cache_dir / f"digits_cnn-{key}.keras"
    eval_path = cache_dir / f"digits_eval-{key}.npz"
    if _intact(model_path, eval_path):
        return model_path, eval_path

    cache_dir.mkdir(parents=True, exist_ok=True)
    model, _ = digits_cnn.train()
    data = datasets.load_digits_split()
    _atomic_write(eval_path, lambda tmp: datasets.save_eval_npz(tmp, data["x_test"], data["y_test"]))
    _atomic_write(model_path, lambda tmp: model.save(tmp))
    return model_path, eval_path


def trained_reference(name: str, cache_dir: Path) -> dict[str, Path]:
    """Paths of a trained reference model and its data, training it on first use.

    Returns a dict: ``model`` (a ``.keras`` file), ``eval`` and ``train`` (``.npz`` with keys
    ``x``, ``y`` of the test and train split of ``datasets.digits_as_images`` for the model's
    input shape and classes). "digits-cnn" is ``default_model`` plus its train split. Files are
    cached in ``cache_dir`` as ``<name>-<key>.keras``, ``<name>_eval-<key>.npz`` and
    ``<name>_train-<key>.npz``, ``key`` a hash of the recipe.
    """
    cache_dir = Path(cache_dir)
    if name == "digits-cnn":
        model_path, eval_path = default_model(cache_dir)
        train_path = cache_dir / f"digits_train-{_recipe_key()}.npz"
        if not _intact(train_path):
            data = datasets.load_digits_split()
            _atomic_write(train_path, lambda tmp: datasets.save_eval_npz(tmp, data["x_train"], data["y_train"]))
        return {"model": model_path, "eval": eval_path, "train": train_path}

    if name not in reference.TRAINING_EPOCHS:
        valid = ", ".join(["digits-cnn", *reference.TRAINING_EPOCHS])
        raise KeyError(f"unknown model {name!r}; valid names: {valid}")
    key = _recipe_key(reference, extra=f"name={name}")
    paths = {
        "model": cache_dir / f"{name}-{key}.keras",
        "eval": cache_dir / f"{name}_eval-{key}.npz",
        "train": cache_dir / f"{name}_train-{key}.npz",
    }
    if _intact(*paths.values()):
        return paths

    cache_dir.mkdir(parents=True, exist_ok=True)
    model, data, _ = reference.train(REFERENCE_MODELS[name], reference.TRAINING_EPOCHS[name])
    for part in ("train", "eval"):
        x, y = (data["x_train"], data["y_train"]) if part == "train" else (data["x_test"], data["y_test"])
        _atomic_write(paths[part], lambda tmp: datasets.save_eval_npz(tmp, x, y))
    _atomic_write(paths["model"], lambda tmp: model.save(tmp))
    return paths


def full_integer_tflite(model, data, path: Path, per_channel: bool = True) -> Path:
    """A full-integer (int8 I/O) .tflite of a Keras model, calibrated on `data` (N samples, batch 1
    each): what edgekit's TFLite backend makes for an int8-io accelerator target. For tests and
    benchmarks that need such a file without running the whole pipeline."""
    import tensorflow as tf
    fn = tf.function(lambda t: model(t, training=False))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function(tf.TensorSpec((1, *data.shape[1:])))])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([data[i:i + 1]] for i in range(len(data)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    converter._experimental_disable_per_channel = not per_channel
    Path(path).write_bytes(converter.convert())
    return Path(path)
