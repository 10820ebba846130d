"""Native precisions (issue 27): a bf16 row where this host's CPU runs bf16, none (with a note) where it does not."""
from __future__ import annotations

import json

import pytest

from clihelp import run_cli
from edgekit import native, targets


def _has_bf16() -> bool:
    return "BF16" in native.openvino_capabilities()[0]


def test_openvino_bf16_row_next_to_fp32(make_model, tmp_path, capsys):
    if not _has_bf16():  # the dev machine and CI have avx512_bf16; elsewhere the row must be absent instead
        return test_no_bf16_row_without_native_bf16(make_model, tmp_path, capsys, None)
    result = run_cli(capsys, "convert", make_model("onnx"), "--target", "cpu", "--format", "openvino", "--runs", "5",
                     "--warmup", "1", "--processes", "2", "--out", tmp_path / "o", "--json")
    assert result.code == 0, result.err
    fp32, bf16 = json.loads(result.out)["artifacts"]
    assert (fp32["precision"], bf16["precision"], bf16["role"]) == ("fp32", "bf16", "native")
    assert any("pinned to f32" in n and "bf16" in n for n in fp32["notes"])
    assert bf16["status"] == "ok" and bf16["fidelity"]["verified"]
    assert bf16["fidelity"]["tolerance"] == native_tolerance("bf16")
    assert bf16["ops"]["by_precision"].get("bf16"), bf16["ops"]  # the runtime really computes in bf16
    assert "latency" in bf16["vs_fp32"] and bf16["file"] == "bf16/model.xml"
    assert "bf16 native" in (tmp_path / "o" / "report.md").read_text()


def native_tolerance(precision):
    from edgekit.measure import TOLERANCE
    return TOLERANCE[precision]


def test_no_bf16_row_without_native_bf16(make_model, tmp_path, capsys, monkeypatch):
    if monkeypatch is not None:  # a host whose CPU plugin reports no BF16 (the detection is what is replaced)
        monkeypatch.setattr(native, "openvino_capabilities", lambda: ({"FP32", "INT8"}, "f32"))
    result = run_cli(capsys, "convert", make_model("onnx"), "--target", "cpu", "--format", "openvino", "--runs", "3",
                     "--warmup", "0", "--processes", "1", "--out", tmp_path / "n", "--json")
    assert result.code == 0, result.err
    [fp32] = json.loads(result.out)["artifacts"]
    assert any("no bf16 row" in n and "no native bf16" in n for n in fp32["notes"])


def test_native_rows_only_for_this_hosts_cpu():
    arm = targets.get_target("arm-int8").profile.device
    assert native.plan("openvino", ["bf16"], arm, "int8") == ([], [])  # the device is not this host's CPU
    build, notes = native.plan("tflite", ["fp16"], targets.get_target("cpu").profile.device, "fp32")
    assert build == [] and "cannot be selected" in notes[0]
    assert native.plan("openvino", ["bf16"], arm, "bf16") == ([], [])  # the target's own precision: no second row
