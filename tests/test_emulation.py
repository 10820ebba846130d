"""ARM targets: artifacts run on the aarch64 wheels of their runtimes under QEMU, compared with the host.

Provisioning the aarch64 environment takes about a minute the first time; it is cached in
$EDGEKIT_EMULATION_CACHE (default ~/.cache/edgekit/emulation) and reused. QEMU and debootstrap
come from `make setup`; this test fails, rather than skips, where they are missing.
"""
from __future__ import annotations

import json

from clihelp import run_cli
from edgekit.probes.aarch64 import emulate


def test_tools_are_installed_by_the_project_setup():
    assert emulate.missing_tools() == []


def test_arm_target_runs_artifacts_on_emulated_aarch64(small_keras, tiny_eval, capsys, tmp_path):
    result = run_cli(capsys, "convert", small_keras, "--target", "arm-int8", "--data", tiny_eval, "--calib-samples", "8",
                     "--runs", "2", "--warmup", "0", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    for artifact in report["artifacts"]:
        arm = artifact["aarch64"]
        assert arm["how"].startswith("emulated")
        assert "latency" not in json.dumps(arm)  # never a latency from emulation
        if artifact["format"] == "openvino":
            assert arm["runs"] is None
            continue
        assert arm["runs"] is True, arm
        assert arm["top1_agreement_vs_host"] == 1.0 and arm["max_abs_diff_vs_host"] < 0.05
        assert arm["runtime"]["name"] in ("ai-edge-litert", "onnxruntime")
    assert any("latency was measured on this x86_64 host, not on the target device" in w for w in report["warnings"])
    assert "runs: yes" in (tmp_path / "o" / "report.md").read_text()


def test_no_emulation_for_host_targets_unless_asked(small_keras, capsys, tmp_path):
    result = run_cli(capsys, "convert", small_keras, "--format", "onnx", "--runs", "1", "--out", tmp_path / "o")
    assert result.code == 0
    assert "aarch64" not in json.loads((tmp_path / "o" / "report.json").read_text())["artifacts"][0]
