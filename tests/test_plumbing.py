"""The pipeline's plumbing on the numpy-only fake backend: partial failure, atomic output, reports."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli
from edgekit import pipeline, report
import fake_backend as fake
from edgekit.backends import available

PROFILE = """name = "plumb"
[build]
formats = [{formats}]
[bench]
runs = 3
warmup = 1
eval_samples = 5
"""


@pytest.fixture
def fake_model(tmp_path):
    return fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)


@pytest.fixture
def profiles(tmp_path):
    def make(*formats):
        d = tmp_path / "profiles"
        d.mkdir(exist_ok=True)
        (d / "plumb.toml").write_text(PROFILE.format(formats=", ".join(f'"{f}"' for f in formats)))
        return str(d)
    return make


def test_backends_are_discovered_by_module_name():
    assert {"tflite", "onnx", "openvino", "fake"} <= set(available())


def test_impossible_conversion_is_reported_and_the_rest_still_built(fake_model, profiles, capsys, tmp_path):
    result = run_cli(capsys, "convert", fake_model, "--target", "plumb", "--targets-dir", profiles("fake", "onnx"),
                     "--out", tmp_path / "out")
    assert result.code == 0, result.err
    artifacts = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"]
    assert artifacts[0]["status"] == "ok" and artifacts[0]["fidelity"]["max_abs_error"] == 0
    assert artifacts[1] == {**artifacts[1], "status": "failed", "reason": "no converter from a fake model to onnx"}
    assert (tmp_path / "out" / "fake.npz").exists() is False and (tmp_path / "out" / "model.npz").is_file()
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert "FAILED onnx fp32: no converter from a fake model to onnx" in result.out


def test_nothing_built_is_an_error(fake_model, profiles, capsys, tmp_path):
    result = run_cli(capsys, "convert", fake_model, "--target", "plumb", "--targets-dir", profiles("onnx"),
                     "--out", tmp_path / "out")
    assert_user_error(result, "no artifact could be built")


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_leaves_no_partial_output(fake_model, profiles, monkeypatch, tmp_path, failure):
    out = tmp_path / "runs" / "out"
    out.parent.mkdir()
    (out.parent / "old").mkdir()

    def explode(*_):
        raise failure("stopped while writing the report")

    monkeypatch.setattr(report, "write", explode)
    with pytest.raises(failure):
        pipeline.convert(fake_model, target="plumb", targets_dirs=[profiles("fake")], out=out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["old"]


def test_failed_forced_run_keeps_the_previous_output(fake_model, profiles, monkeypatch, tmp_path):
    out = tmp_path / "out"
    pipeline.convert(fake_model, target="plumb", targets_dirs=[profiles("fake")], out=out)
    before = (out / "report.json").read_text()
    monkeypatch.setattr(report, "write", lambda *_: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        pipeline.convert(fake_model, target="plumb", targets_dirs=[profiles("fake")], out=out, force=True)
    assert (out / "report.json").read_text() == before


def test_internal_errors_are_one_line_without_traceback(fake_model, profiles, monkeypatch, capsys):
    monkeypatch.setattr(report, "write", lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
    result = run_cli(capsys, "convert", fake_model, "--target", "plumb", "--targets-dir", profiles("fake"))
    assert result.code == 1
    assert "internal error: RuntimeError: boom" in result.err and "Traceback" not in result.err


def test_report_figures_say_how_they_were_obtained(fake_model, profiles, tmp_path):
    x = np.random.default_rng(1).random((6, 2, 3), dtype=np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=np.arange(6) % 4)
    result = pipeline.convert(fake_model, target="plumb", targets_dirs=[profiles("fake")], out=tmp_path / "o",
                              data=tmp_path / "val.npz")
    artifact = result["artifacts"][0]
    for figure in ("size", "latency_ms", "memory", "fidelity", "accuracy"):
        assert artifact[figure]["how"].startswith("measured on host"), figure
    assert result["data"]["samples"] == 5  # eval_samples caps the data
    assert artifact["accuracy"]["delta"] == 0.0
    markdown = (tmp_path / "o" / "report.md").read_text()
    assert "| fake | fp32 |" in markdown and "each 1 warm-up + 3 timed runs" in markdown
