"""Absurd numbers, wrong labels, odd models and hostile files: one line and exit 2 (issue #11),
and the inputs that deserve it are accepted (one-hot labels, an unknown-rank input given a shape)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import fake_backend as fake
from clihelp import assert_user_error, run_cli

PROFILE = 'name = "{name}"\n[build]\nformats = ["fake"]\n[bench]\nruns = 2\nwarmup = 0\neval_samples = 8\n{extra}'


@pytest.fixture
def profiles(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()

    def make(name="plumb", extra=""):
        (d / f"{name}.toml").write_text(PROFILE.format(name=name, extra=extra))
        return d
    return make


@pytest.fixture
def fake_model(tmp_path):
    return fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)


@pytest.mark.parametrize("extra, field", [
    ("[device]\ncompute_efficiency = 0\n", "device.compute_efficiency"),
    ("[device]\nclock_ghz = nan\n", "device.clock_ghz"),
    ("[device]\nmemory_gbps = inf\n", "device.memory_gbps"),
    ("[device]\ncores = -2\n", "device.cores"),
    ("[device]\nram_kib = -1\n", "device.ram_kib"),
    ("[bench]\nruns = 1000000000000\n", "bench.runs"),
    ("[bench]\nthreads = 0\n", "bench.threads"),
    ("[build]\nbatch = 100000\n", "build.batch"),
    ("[build]\ninput_shape = [1, 0, 3]\n", "build.input_shape"),
    ("[quantize]\ncalib_samples = 10000000\n", "quantize.calib_samples"),
    ("[preprocess]\nstd = [0.0]\n", "preprocess.std"),
])
def test_every_profile_number_is_finite_and_in_range(extra, field, profiles, capsys):
    d = profiles()
    (d / "odd.toml").write_text('name = "odd"\n' + extra)
    result = run_cli(capsys, "targets", "--targets-dir", d, "show", "odd")
    assert_user_error(result, "odd.toml", field)


def test_a_broken_profile_does_not_hide_the_others(profiles, capsys):
    d = profiles("good")
    (d / "latin1.toml").write_bytes(b'name = "latin1"\ndescription = "caf\xe9"\n')
    (d / "zero.toml").write_text('name = "zero"\n[device]\ncompute_efficiency = 0\n')
    result = run_cli(capsys, "targets", "--targets-dir", d)
    assert result.code == 0, result.err
    assert "good" in result.out and "cpu-int8" in result.out
    assert "skipped" in result.err and "latin1.toml: not UTF-8" in result.err and "zero.toml" in result.err
    assert_user_error(run_cli(capsys, "targets", "--targets-dir", d, "show", "latin1"), "not UTF-8")


def test_target_names_are_names(fake_model, profiles, capsys, tmp_path):
    d = profiles()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.toml").write_text(PROFILE.format(name="x", extra=""))
    assert_user_error(run_cli(capsys, "convert", fake_model, "--target", "../elsewhere/x", "--targets-dir", d),
                      "not a target name", ".toml")
    result = run_cli(capsys, "convert", fake_model, "--target", outside / "x.toml", "--out", tmp_path / "o")
    assert result.code == 0, result.err  # a path, given as a path with its suffix


def test_threads_are_bounded_by_the_host(fake_model, profiles, capsys, tmp_path):
    too_many = 4 * (os.cpu_count() or 1) + 1
    d = profiles()
    common = ["convert", fake_model, "--target", "plumb", "--targets-dir", d]
    assert_user_error(run_cli(capsys, *common, "--threads", too_many), "more than 4x", "--threads-unbounded")
    assert_user_error(run_cli(capsys, *common, "--threads", 100000), "--threads", "1..1024")
    ok = run_cli(capsys, *common, "--threads", too_many, "--threads-unbounded", "--out", tmp_path / "o")
    assert ok.code == 0, ok.err
    assert_user_error(run_cli(capsys, "bench", fake_model, "--threads", too_many), "more than 4x")
    assert_user_error(run_cli(capsys, *common, "--runs", 10 ** 12), "--runs", "1000000")
    assert_user_error(run_cli(capsys, *common, "--calib-scale", "nan"), "not a finite number")


def test_a_profile_asking_more_threads_than_cores_is_timed_with_a_core_to_spare(fake_model, profiles, capsys, tmp_path):
    cores = max(1, (os.cpu_count() or 1) - 1)
    d = profiles(extra=f"threads = {(os.cpu_count() or 1) + 2}\n")  # [bench] is the profile's last table
    ok = run_cli(capsys, "convert", fake_model, "--target", "plumb", "--targets-dir", d, "--out", tmp_path / "o",
                 "--json")
    assert ok.code == 0, ok.err
    report = json.loads(ok.out)
    assert {a["latency_ms"]["threads"] for a in report["artifacts"]} == {cores}
    asked = (os.cpu_count() or 1) + 2
    assert any(f"host timing used {cores} thread(s)" in w and f"asks for {asked}" in w for w in report["warnings"])


def labelled(tmp_path, y, x=None):
    x = np.random.default_rng(0).random((8, 2, 3), dtype=np.float32) if x is None else x
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return tmp_path / "d.npz"


@pytest.mark.parametrize("y, words", [
    (np.array(list("abcdefgh")), "labels must be numbers"),
    (np.arange(8) + 0.5, "non-integer"),
    (-np.ones(8, np.int64), "negative"),
    (np.arange(8) + 4, "out of range for a model with 4 outputs"),
    (np.ones((8, 4)), "not one-hot"),
    (np.arange(8) * (1 + 1j), "labels must be numbers"),
    (np.array([np.nan] * 8), "NaN"),
    (np.arange(3), "3 labels for 8 inputs"),
])
def test_labels_are_checked(y, words, fake_model, profiles, capsys, tmp_path):
    data = labelled(tmp_path, y)
    result = run_cli(capsys, "convert", fake_model, "--target", "plumb", "--targets-dir", profiles(), "--data", data)
    assert_user_error(result, words)
    assert not (tmp_path / "edgekit-out").exists()


def test_one_hot_labels_are_converted_with_a_note(fake_model, profiles, capsys, tmp_path):
    data = labelled(tmp_path, np.eye(4)[np.arange(8) % 4])
    result = run_cli(capsys, "convert", fake_model, "--target", "plumb", "--targets-dir", profiles(), "--data", data,
                     "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "one-hot" in report["data"]["note"] and report["artifacts"][0]["accuracy"]["value"] is not None
    assert "one-hot" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("x, words", [
    (np.zeros((0, 2, 3), np.float32), "no samples"),
    (np.ones((8, 2, 3), np.complex64), "complex"),
    (np.array([["a"] * 3] * 2 * 8).reshape(8, 2, 3), "cannot feed"),
])
def test_bad_inputs_are_refused(x, words, fake_model, profiles, capsys, tmp_path):
    np.savez(tmp_path / "d.npz", x=x)
    result = run_cli(capsys, "convert", fake_model, "--target", "plumb", "--targets-dir", profiles(),
                     "--data", tmp_path / "d.npz")
    assert_user_error(result, words)


def _onnx(tmp_path, name, inputs, outputs):
    import onnx
    from onnx import helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / name))
    return tmp_path / name


def test_onnx_without_outputs_or_rank(capsys, tmp_path):
    from onnx import TensorProto, helper
    value = helper.make_tensor_value_info
    no_outputs = _onnx(tmp_path, "noout.onnx", [value("x", TensorProto.FLOAT, [1, 4])], [])
    assert_user_error(run_cli(capsys, "convert", no_outputs), "no graph outputs", "re-export")
    no_rank = _onnx(tmp_path, "norank.onnx", [value("x", TensorProto.FLOAT, None)], [value("y", TensorProto.FLOAT, None)])
    assert_user_error(run_cli(capsys, "convert", no_rank), "unknown rank", "--input-shape x:")
    ok = run_cli(capsys, "convert", no_rank, "--input-shape", "1,4", "--format", "onnx", "--runs", "1",
                 "--out", tmp_path / "o")
    assert ok.code == 0, ok.err


def test_declared_input_too_big_to_allocate(capsys, tmp_path):
    from onnx import TensorProto, helper
    dims = ["N", "H", "W", 3]
    dyn = _onnx(tmp_path, "dyn.onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    assert_user_error(run_cli(capsys, "convert", dyn, "--input-shape", "1,100000,100000,3"), "elements",
                      "smaller --input-shape")
    # within the runtimes' limit, but 8 GiB a sample: refused before allocating, not a MemoryError
    assert_user_error(run_cli(capsys, "convert", dyn, "--input-shape", "1,26000,26000,3"), "memory", "GiB")


def test_corrupt_openvino_ir_in_bench(capsys, tmp_path):
    (tmp_path / "m.xml").write_text('<?xml version="1.0"?><net name="x" version="11"><layers><layer id="0"')
    (tmp_path / "m.bin").write_bytes(os.urandom(64))
    assert_user_error(run_cli(capsys, "bench", tmp_path / "m.xml", "--runs", "1"), "OpenVINO cannot load it")


def test_format_that_names_a_module_file(fake_model, capsys):
    assert_user_error(run_cli(capsys, "convert", fake_model, "--format", "__init__"), "unknown artifact format")


def test_unusable_cache_directory(capsys, monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "afile" / "cache"))
    assert_user_error(run_cli(capsys, "convert", "--format", "tflite"), "cache directory", "EDGEKIT_CACHE")


def test_savedmodel_that_writes_a_file_is_refused(capsys, tmp_path):
    import tensorflow as tf
    victim = tmp_path / "written-by-the-model"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            tf.io.write_file(str(victim), "gotcha")
            return {"y": x * 2.0}

    module = Writer()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.__call__})
    assert_user_error(run_cli(capsys, "convert", tmp_path / "sm", "--format", "onnx"), "WriteFile", "--trust-model")
    assert not victim.exists()


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    from edgekit import zoo
    model, data = zoo.default_model(tmp_path / "cache")
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])  # a half-written or damaged entry
    again, _ = zoo.default_model(tmp_path / "cache")
    assert again == model and zoo._intact(again, data)
    shutil.rmtree(tmp_path / "cache")
