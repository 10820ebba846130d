import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from edgekit import zoo
from edgekit.zoo import datasets

# A runtime-only install (no [full] extra) has no keras: only the data tests run there.
needs_keras = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs keras")

# name -> (input shape, output classes, plausible parameter count range)
EXPECTED = {
    "digits-cnn": ((8, 8, 1), 10, (30_000, 45_000)),
    "resnet8": ((32, 32, 3), 10, (75_000, 82_000)),
    "ds-cnn": ((49, 10, 1), 12, (24_000, 40_000)),
    "mobilenet-v1-0.25": ((96, 96, 3), 2, (200_000, 230_000)),
}


def test_registry_names():
    assert set(zoo.REFERENCE_MODELS) == set(EXPECTED)


@needs_keras
@pytest.mark.parametrize("name", EXPECTED)
def test_reference_model_shapes_and_size(name):
    input_shape, classes, (low, high) = EXPECTED[name]
    model = zoo.build(name)
    assert model.input_shape == (None, *input_shape)
    assert model.output_shape == (None, classes)
    assert low <= model.count_params() <= high
    probs = model.predict(np.zeros((2, *input_shape), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@needs_keras
def test_build_is_seeded():
    a, b, c = zoo.build("resnet8", seed=1), zoo.build("resnet8", seed=1), zoo.build("resnet8", seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    assert not all(np.array_equal(x, y) for x, y in zip(a.get_weights(), c.get_weights()))


def test_build_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="resnet8"):
        zoo.build("no-such-model")


def test_import_does_not_load_keras():
    code = "import sys, edgekit.zoo; assert not {'keras', 'tensorflow'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_digits_split():
    split = datasets.load_digits_split()
    assert split["x_train"].shape == (1400, 8, 8, 1)
    assert split["x_test"].shape == (397, 8, 8, 1)
    assert split["y_train"].shape == (1400,) and split["y_test"].shape == (397,)
    assert split["x_train"].dtype == np.float32 and split["y_train"].dtype == np.int64
    assert 0.0 <= split["x_train"].min() and split["x_train"].max() <= 1.0
    assert set(np.unique(split["y_test"])) == set(range(10))

    again, other = datasets.load_digits_split(), datasets.load_digits_split(seed=1)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["y_test"], other["y_test"])


def test_save_eval_npz(tmp_path):
    path = tmp_path / "eval.data"  # no .npz suffix: must be written exactly here
    datasets.save_eval_npz(path, np.zeros((3, 2), np.float32), np.arange(3))
    with np.load(path) as data:
        assert set(data.files) == {"x", "y"}
        np.testing.assert_array_equal(data["y"], np.arange(3))


@needs_keras
def test_default_model_is_cached_and_accurate(tmp_path):
    import keras

    model_path, eval_path = zoo.default_model(tmp_path / "cache")
    assert model_path.suffix == ".keras" and eval_path.suffix == ".npz"
    assert model_path.parent == eval_path.parent == tmp_path / "cache"
    entries = [model_path.name, eval_path.name]  # each with the hash it is checked against
    assert sorted(p.name for p in model_path.parent.iterdir()) == sorted([*entries, *(e + ".sha256" for e in entries)])
    mtimes = (model_path.stat().st_mtime_ns, eval_path.stat().st_mtime_ns)

    assert zoo.default_model(tmp_path / "cache") == (model_path, eval_path)
    assert (model_path.stat().st_mtime_ns, eval_path.stat().st_mtime_ns) == mtimes

    model = keras.saving.load_model(model_path)
    with np.load(eval_path) as data:
        x, y = data["x"], data["y"]
    assert x.shape == (397, 8, 8, 1)
    accuracy = np.mean(model.predict(x, verbose=0).argmax(axis=1) == y)
    assert accuracy >= 0.9

    # trained_reference("digits-cnn") is the default model plus its train split
    paths = zoo.trained_reference("digits-cnn", tmp_path / "cache")
    assert (paths["model"], paths["eval"]) == (model_path, eval_path)
    assert (model_path.stat().st_mtime_ns, eval_path.stat().st_mtime_ns) == mtimes
    with np.load(paths["train"]) as data:
        assert data["x"].shape == (1400, 8, 8, 1) and data["y"].shape == (1400,)


@pytest.mark.parametrize("shape, classes", [((32, 32, 3), 10), ((49, 10, 1), 12), ((96, 96, 3), 2)])
def test_digits_as_images(shape, classes):
    images, digits = datasets.digits_as_images(shape, classes), datasets.load_digits_split()
    for part, n in (("train", 1400), ("test", 397)):
        x, y = images[f"x_{part}"], images[f"y_{part}"]
        assert x.shape == (n, *shape) and y.shape == (n,)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
        assert np.array_equal(x, np.repeat(x[..., :1], shape[2], axis=-1))  # channels are copies
        digit = digits[f"y_{part}"]
        np.testing.assert_array_equal(y, (digit >= 5).astype(np.int64) if classes == 2 else digit)
        # the same images as the 8x8 split: average intensity close to the original's
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), digits[f"x_{part}"].mean(axis=(1, 2, 3)), atol=0.05)
    assert set(np.unique(images["y_test"])) == set(range(2 if classes == 2 else 10))

    again, other = datasets.digits_as_images(shape, classes), datasets.digits_as_images(shape, classes, seed=1)
    assert all(np.array_equal(images[k], again[k]) for k in images)
    assert not np.array_equal(images["x_test"], other["x_test"])


def test_digits_as_images_identity_and_errors():
    np.testing.assert_array_equal(datasets.digits_as_images((8, 8, 1), 10)["x_test"],
                                  datasets.load_digits_split()["x_test"])
    with pytest.raises(ValueError, match="classes"):
        datasets.digits_as_images((32, 32, 3), 5)


@needs_keras
def test_digits_as_images_matches_tf_bilinear_resize():
    import tensorflow as tf

    x = datasets.load_digits_split()["x_test"][:16]
    for size in ((32, 32), (49, 10), (96, 96), (5, 12)):
        expected = tf.image.resize(x, size, method="bilinear").numpy()
        actual = datasets.digits_as_images((*size, 1), 10)["x_test"][:16]
        np.testing.assert_allclose(actual, np.clip(expected, 0, 1), atol=1e-6)


def test_trained_reference_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(KeyError, match="mobilenet-v1-0.25"):
        zoo.trained_reference("no-such-model", tmp_path)
    assert not any(tmp_path.iterdir())


@needs_keras
def test_trained_reference_resnet8_is_cached_and_accurate(tmp_path):
    import keras

    cache = tmp_path / "cache"
    paths = zoo.trained_reference("resnet8", cache)
    assert set(paths) == {"model", "eval", "train"}
    assert paths["model"].suffix == ".keras" and paths["eval"].suffix == paths["train"].suffix == ".npz"
    assert paths["model"].name.startswith("resnet8-")
    names = [p.name for p in paths.values()]  # each with the hash it is checked against
    assert sorted(p.name for p in cache.iterdir()) == sorted([*names, *(n + ".sha256" for n in names)])
    mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}

    assert zoo.trained_reference("resnet8", cache) == paths
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == mtimes

    with np.load(paths["train"]) as data:
        assert data["x"].shape == (1400, 32, 32, 3) and data["y"].shape == (1400,)
    with np.load(paths["eval"]) as data:
        x, y = data["x"], data["y"]
    assert x.shape == (397, 32, 32, 3) and x.dtype == np.float32
    model = keras.saving.load_model(paths["model"])
    accuracy = np.mean(model.predict(x, verbose=0).argmax(axis=1) == y)
    assert accuracy >= 0.9
