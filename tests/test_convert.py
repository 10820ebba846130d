"""End to end: every input kind x every output format, on real converters and runtimes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import run_cli
from conftest import INPUT_KINDS, tree_digest

FILES = {"tflite": ["model.tflite"], "onnx": ["model.onnx"], "openvino": ["model.xml", "model.bin"]}


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_every_input_kind_gives_three_verified_artifacts(kind, make_model, capsys, tmp_path):
    model = make_model(kind)
    before = tree_digest(model)
    result = run_cli(capsys, "convert", model, "--target", "cpu", "--runs", "5", "--warmup", "1", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    built = [a for a in report["artifacts"] if a["role"] != "native"]  # native bf16 rows: test_native.py
    assert [a["format"] for a in built] == ["tflite", "onnx", "openvino"]
    for artifact in built:
        assert artifact["status"] == "ok", artifact
        for name in FILES[artifact["format"]]:
            assert (tmp_path / "out" / name).stat().st_size > 0
        fid = artifact["fidelity"]
        assert fid["verified"] and fid["top1_agreement"] == 1.0 and fid["max_abs_error"] < 1e-4, fid
        lat = artifact["latency_ms"]
        assert lat["runs"] == 5 and lat["warmup"] == 1 and lat["threads"] == 1
        assert 0 < lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["how"].startswith("measured on host")
        assert artifact["size"]["gzip_bytes"] > 0 and artifact["memory"]["peak_rss_mib"] > 0
    assert (tmp_path / "out" / "report.md").read_text().startswith("# edgekit report")
    assert tree_digest(model) == before, "the input model was modified"


def test_accuracy_and_delta_with_labelled_data(tiny_keras, tiny_eval, capsys):
    result = run_cli(capsys, "convert", tiny_keras, "--data", tiny_eval, "--runs", "3", "--format", "tflite")
    assert result.code == 0, result.err
    report = json.loads(next(p for p in (__import__("pathlib").Path("edgekit-out")).rglob("report.json")).read_text())
    assert report["data"]["labelled"] and report["data"]["samples"] == 48
    acc = report["artifacts"][0]["accuracy"]
    assert acc["value"] == pytest.approx(report["source_accuracy"] + acc["delta"])
    assert abs(acc["delta"]) < 1e-9
    assert "acc Δ" in result.out and "verified" in result.out


def test_same_input_and_flags_give_the_same_artifact_bytes(tiny_keras, capsys, tmp_path):
    digests = []
    for out in ("a", "b"):
        assert run_cli(capsys, "convert", tiny_keras, "--runs", "1", "--out", tmp_path / out).code == 0
        digests.append({f: tree_digest(tmp_path / out / f) for fmt in FILES.values() for f in fmt})
    assert digests[0] == digests[1]


def test_dynamic_onnx_dims_are_fixed_from_the_profile_batch(make_model, capsys, tmp_path):
    import onnx
    result = run_cli(capsys, "convert", make_model("onnx"), "--format", "onnx", "--runs", "1", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    dims = [d.dim_value for d in onnx.load(str(tmp_path / "o" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 16]


def test_input_shape_flag_overrides_dynamic_dims(make_model, capsys, tmp_path):
    result = run_cli(capsys, "convert", make_model("onnx"), "--format", "onnx", "--runs", "1",
                     "--input-shape", "2,3,16,16", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["model"]["inputs"][0]["shape"] == [2, 3, 16, 16]


def test_python_api_returns_the_report(tiny_keras, tmp_path):
    import edgekit
    report = edgekit.convert(tiny_keras, target="cpu", formats=["onnx"], runs=2, out=tmp_path / "api")
    assert report["artifacts"][0]["status"] == "ok"
    assert np.isclose(report["artifacts"][0]["fidelity"]["cosine"], 1.0)
