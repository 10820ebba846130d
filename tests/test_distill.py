"""Distillation: the loss by hand, width:R students, training data kept apart from scoring,
unlabelled data, an ONNX teacher into a Keras student, and the user errors."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli
from conftest import tiny_data
from edgekit.passes import distill
from edgekit.passes.distill import DistillConfig


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_kd_loss_matches_the_formula_by_hand():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32) * 3
    y = np.array([0, 3, 1, 1, 2])
    T, alpha = 3.0, 0.6
    p, q = _softmax(t / T), _softmax(s / T)
    soft = T * T * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    hard = np.mean(-np.log(_softmax(s)[np.arange(5), y]))
    np.testing.assert_allclose(float(distill.kd_loss(s, t, y, T, alpha)), alpha * soft + (1 - alpha) * hard, rtol=1e-5)
    np.testing.assert_allclose(float(distill.kd_loss(s, t, None, T, alpha)), soft, rtol=1e-5)
    assert float(distill.kd_loss(t, t, None, T, alpha)) == pytest.approx(0, abs=1e-6)  # same logits: no divergence
    probs = _softmax(t)
    np.testing.assert_allclose(_softmax(distill.as_logits(probs)), probs, rtol=1e-4)  # log p: the same distribution


def _residual_teacher():
    import keras
    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.ReLU(name="r0")(L.BatchNormalization(name="bn0")(L.Conv2D(8, 3, padding="same", name="conv0")(inputs)))
    y = L.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = L.ReLU(name="r1")(L.Add(name="add")([x, y]))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = L.Dense(12, activation="relu", name="fc")(L.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inputs, L.Dense(4, activation="softmax", name="probs")(x))


def test_width_student_has_the_expected_channels_and_runs():
    teacher = _residual_teacher()
    source = SimpleNamespace(kind="keras", handle=(None, None, teacher))
    student, described = distill.make_student(source, DistillConfig(student="width:0.5"), None)
    filters = {n: student.get_layer(n).get_weights()[0].shape[-1] for n in ("conv0", "conv1", "conv2", "fc", "probs")}
    assert filters == {"conv0": 4, "conv1": 4, "conv2": 8, "fc": 6, "probs": 4}  # residual pair together; classes kept
    assert student.get_layer("bn0").get_weights()[0].shape == (4,)
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    out = student.predict(x, verbose=0)
    assert out.shape == (3, 4) and np.allclose(out.sum(axis=1), 1, atol=1e-5)
    assert "inherited" in described
    kept = distill.make_student(source, DistillConfig(student="width:0.25"), None)[0]
    assert kept.get_layer("conv2").get_weights()[0].shape[-1] == 4
    fresh, described = distill.make_student(source, DistillConfig(student="width:0.5", init="fresh"), None)
    assert "fresh" in described and fresh.count_params() == student.count_params()
    assert not np.allclose(fresh.get_layer("conv2").get_weights()[0], student.get_layer("conv2").get_weights()[0])


def test_fit_is_seeded_learns_the_teacher_and_matches_features():
    teacher = _residual_teacher()
    x, _ = tiny_data(64)
    targets = [teacher.predict(x, verbose=0)]
    source = SimpleNamespace(kind="keras", handle=(None, None, teacher))
    config = DistillConfig(student="width:0.5", epochs=3, features=["auto"], batch_size=16)
    weights, histories = [], []
    for _ in range(2):
        student = distill.make_student(source, config, None)[0]
        histories.append(distill.fit(student, [x], targets, None, config, teacher))
        weights.append(student.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))  # same seed, same bytes
    history = histories[0]
    assert history["features"] == ["conv0", "conv1", "conv2", "fc"] and not history["labels_used"]
    assert history["samples"] + history["held_apart"] == 64 and history["held_apart"] == 6
    assert min(history["held_apart_loss"]) < history["initial_held_apart_loss"]
    assert student.get_layer("probs").activation.__name__ == "softmax"  # set aside only while training


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, small_keras):
    """Eval data whose every sample is unique, and a labelled training file, for the small CNN."""
    import keras
    folder = tmp_path_factory.mktemp("distill")
    teacher = keras.saving.load_model(small_keras)
    x, _ = tiny_data(80, seed=3)
    x[:, 0, 0, 0] = np.arange(80) / 80  # a fingerprint per sample
    y = teacher.predict(x, verbose=0).argmax(axis=1)
    np.savez(folder / "eval.npz", x=x, y=y)
    xt, _ = tiny_data(64, seed=4)
    np.savez(folder / "train.npz", x=xt, y=teacher.predict(xt, verbose=0).argmax(axis=1))
    np.savez(folder / "unlabelled.npz", x=xt)
    return folder


def test_scored_samples_are_never_trained_on(small_keras, labelled, capsys, monkeypatch, tmp_path):
    from edgekit import runner
    trained, scored = [], []
    real_fit, real_save = distill.fit, runner.save_stacked
    monkeypatch.setattr(distill, "fit", lambda student, inputs, *a, **k: trained.append(inputs[0]) or
                        real_fit(student, inputs, *a, **k))
    monkeypatch.setattr(runner, "save_stacked", lambda path, key, samples: scored.append(
        np.concatenate([s[0] for s in samples])) or real_save(path, key, samples))
    result = run_cli(capsys, "convert", small_keras, "--distill", "width:0.5", "--distill-epochs", "2",
                     "--data", labelled / "eval.npz", "--format", "tflite", "--runs", "2", "--warmup", "0",
                     "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    fingerprints = lambda a: set(np.round(a[:, 0, 0, 0] * 80).astype(int))  # noqa: E731
    assert len(trained[0]) == 40 and report["data"]["samples"] == 40
    assert not fingerprints(trained[0]) & set.union(*map(fingerprints, scored))
    assert "held apart from scoring" in report["distillation"]["data"]
    stages = [s["stage"] for s in report["distillation"]["stages"]]
    assert stages[0] == "teacher" and stages[1].startswith("student (width 0.5") and stages[2].startswith("distilled")
    teacher, student = report["distillation"]["stages"][:2]
    assert student["params"] < 0.35 * teacher["params"] and student["macs"] < 0.35 * teacher["macs"]
    assert "Distillation stages" in (tmp_path / "o" / "report.md").read_text()


def test_unlabelled_training_data_and_int8_after_distillation(small_keras, labelled, capsys, tmp_path):
    result = run_cli(capsys, "convert", small_keras, "--distill", "width:0.5", "--distill-epochs", "2",
                     "--train-data", labelled / "unlabelled.npz", "--data", labelled / "eval.npz", "-p", "int8",
                     "--calib-samples", "8", "--format", "tflite", "--runs", "2", "--warmup", "0",
                     "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    d = report["distillation"]
    assert not d["labels_used"] and d["samples"] + d["held_apart"] == 64 and d["data"].endswith("unlabelled.npz")
    assert [s["stage"].split(" ")[0] for s in d["stages"]] == ["teacher", "student", "distilled", "distilled"]
    assert d["stages"][-1]["format"] == "tflite int8"
    assert report["artifacts"][-1]["status"] == "ok"


def test_onnx_teacher_into_a_keras_student(make_model, capsys, tmp_path):
    import keras
    keras.utils.set_random_seed(0)
    L = keras.layers
    student = keras.Sequential([keras.Input((3, 16, 16)), L.Flatten(), L.Dense(8, activation="relu"),
                                L.Dense(5, activation="softmax")])
    student.save(tmp_path / "student.keras")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((40, 3, 16, 16), dtype=np.float32))
    result = run_cli(capsys, "convert", make_model("onnx"), "--distill", tmp_path / "student.keras",
                     "--distill-epochs", "2", "--train-data", tmp_path / "x.npz", "--format", "onnx", "--runs", "2",
                     "--warmup", "0", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["distillation"]["teacher_runtime"] == "onnx" and report["distillation"]["student"] == "student student.keras"
    assert report["artifacts"][0]["status"] == "ok"


def test_distillation_user_errors(make_model, small_keras, labelled, capsys, tmp_path):
    import keras
    wrong = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    wrong.save(tmp_path / "wrong.keras")
    common = ("--train-data", labelled / "train.npz", "--format", "tflite")
    assert_user_error(run_cli(capsys, "convert", small_keras, "--distill", tmp_path / "wrong.keras", *common),
                      "outputs (N, 7)", "teacher gives (N, 4)")
    assert_user_error(run_cli(capsys, "convert", small_keras, "--distill", "width:1.5", *common), "width")
    assert_user_error(run_cli(capsys, "convert", small_keras, "--distill", tmp_path / "none.keras", *common),
                      "not found")
    assert_user_error(run_cli(capsys, "convert", make_model("onnx"), "--distill", "width:0.5"),
                      "Keras teacher")
    assert_user_error(run_cli(capsys, "convert", small_keras, "--distill", "width:0.5", "--distill-alpha", "0",
                              "--train-data", labelled / "unlabelled.npz"), "labels")
    assert_user_error(run_cli(capsys, "convert", small_keras, "--distill", "width:0.5"), "training inputs")


def test_tune_searches_distillation_and_its_trials_convert(small_keras, labelled, tmp_path):
    import optuna

    from edgekit import tune
    setup = tune.TuneSetup(model=small_keras, target="cpu-int8", fmt="tflite", tune_data=labelled / "eval.npz",
                           holdout_data=labelled / "eval.npz", out=tmp_path, budget_points=1.0, objective="size",
                           candidates=[], keras=True, source_accuracy=1.0, trials_budget=1, storage="", targets_dirs=[])
    params = {"precision": "int8", "per_channel": True, "calib_method": "minmax", "calib_samples": 32,
              "keep_float": 0, "mixed": "off", "prune": "none", "distill": "width:0.5", "temperature": 2.0}
    recipe = tune.recipe_space(optuna.trial.FixedTrial(params), setup)
    assert recipe["distill"] == "width:0.5" and recipe["distill_temperature"] == 2.0
    assert "distill width:0.5 T=2" in tune.recipe_text(recipe)
    figures = tune.run_trial(setup, recipe)
    assert figures["ok"], figures
    report = json.loads((Path(figures["file"]).parent / "report.json").read_text())
    assert report["distillation"]["temperature"] == 2.0 and report["distillation"]["params"]["student"] < \
        report["distillation"]["params"]["teacher"]
    plain = tune.recipe_space(optuna.trial.FixedTrial(params), dataclasses.replace(setup, keras=False))
    assert "distill" not in plain  # an ONNX/TFLite teacher has no width:R student


def test_quantized_teacher_is_refused(tiny_keras, capsys, tmp_path):
    import keras
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.saving.load_model(tiny_keras))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in tiny_data(8)[0])
    converter.inference_input_type = converter.inference_output_type = tf.int8
    (tmp_path / "int8.tflite").write_bytes(converter.convert())
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)]).save(tmp_path / "s.keras")
    np.savez(tmp_path / "x.npz", x=tiny_data(8)[0])
    assert_user_error(run_cli(capsys, "convert", tmp_path / "int8.tflite", "--distill", tmp_path / "s.keras",
                              "--train-data", tmp_path / "x.npz"), "quantized", "float model")
