"""The cost model on hand-computed layers, peak memory from tensor lifetimes, budgets, and
several targets in one run."""
from __future__ import annotations

import json

import pytest

from clihelp import assert_user_error, run_cli
from edgekit import costmodel
from edgekit.targets import DeviceSpec

DEVICE = DeviceSpec(kind="arm", arch="aarch64", cores=4, clock_ghz=1.0, fp32_macs_per_cycle=8, int8_macs_per_cycle=16,
                    memory_gbps=1.0, compute_efficiency=0.5, parallel_efficiency=0.5, op_overhead_us=10.0,
                    ram_kib=64, flash_kib=16)


def conv_node(name="net/conv/Conv", macs=4_000_000, params=1000, inp=("x", 10_000), out=("y", 20_000)):
    return {"node": name, "layer": "conv", "op": "Conv", "macs": macs, "params": params,
            "inputs": {inp[0]: inp[1]}, "outputs": {out[0]: out[1]}}


def test_compute_bound_layer_by_hand():
    # fp32: 4e6 MACs / (8 MAC/cycle x 1e9 Hz x 0.5 efficiency x 1 core) = 1 ms;
    # bytes = 4 x (10k + 20k) + 4 x 1000 = 124 kB at 1 GB/s = 0.124 ms; + 10 us overhead
    est = costmodel.estimate([conv_node()], DEVICE, "fp32", threads=1)
    assert est["latency_ms"] == pytest.approx(1.0 + 0.010)
    assert est["ops_compute_bound"] == 1 and est["how"].startswith("estimated")


def test_int8_threads_and_memory_bound_by_hand():
    # int8, 3 threads: cores = 1 + 2 x 0.5 = 2; 4e6 / (16 x 1e9 x 0.5 x 2) = 0.25 ms
    assert costmodel.estimate([conv_node()], DEVICE, "int8", threads=3)["latency_ms"] == pytest.approx(0.25 + 0.010)
    # a pooling op moves 1 x (1e6 + 1e6) bytes at 1 GB/s = 2 ms and computes nothing
    pool = {"node": "p", "layer": "pool", "op": "MaxPool", "macs": 0, "params": 0,
            "inputs": {"a": 1_000_000}, "outputs": {"b": 1_000_000}}
    est = costmodel.estimate([pool], DEVICE, "int8", threads=1)
    assert est["latency_ms"] == pytest.approx(2.0 + 0.010) and est["ops_memory_bound"] == 1


def test_peak_activation_memory_follows_lifetimes():
    # x -> a -> b -> c with a skip a -> c: a stays alive until c is made
    nodes = [{"node": "1", "layer": "1", "op": "Conv", "macs": 0, "params": 0, "inputs": {"x": 100}, "outputs": {"a": 50}},
             {"node": "2", "layer": "2", "op": "Relu", "macs": 0, "params": 0, "inputs": {"a": 50}, "outputs": {"b": 30}},
             {"node": "3", "layer": "3", "op": "Add", "macs": 0, "params": 0, "inputs": {"a": 50, "b": 30},
              "outputs": {"c": 50}}]
    assert costmodel.peak_activation_elements(nodes) == 150  # step 1: x + a = 150; step 2: a + b = 80; step 3: 130
    est = costmodel.estimate(nodes, DEVICE, "fp32", threads=1, model_bytes=20 * 1024)
    assert est["peak_activation_bytes"] == 600 and est["fits_ram"] is True
    assert est["fits_flash"] is False and est["flash_budget_bytes"] == 16 * 1024


def test_reports_of_device_targets_carry_estimates(small_keras, tiny_eval, capsys, tmp_path):
    result = run_cli(capsys, "convert", small_keras, "--target", "arm-m-int8", "--data", tiny_eval,
                     "--calib-samples", "8", "--runs", "2", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    est = report["estimate"]
    assert est["precision"] == "int8-io" and est["latency_ms"] > 0 and est["fits_ram"] and est["fits_flash"]
    assert est["model_bytes"] == report["artifacts"][1]["size"]["bytes"]
    assert "ESTIMATED on NUCLEO-L4R5ZI" in result.out
    assert any("not on the target device" in w for w in report["warnings"])


def test_several_targets_side_by_side(small_keras, tiny_eval, capsys, tmp_path):
    result = run_cli(capsys, "convert", small_keras, "--target", "cpu,arm-m-int8,toaster", "--data", tiny_eval)
    assert_user_error(result, "unknown target 'toaster'")
    result = run_cli(capsys, "convert", small_keras, "--target", "cpu,arm-m-int8", "--data", tiny_eval,
                     "--calib-samples", "8", "--runs", "2", "--out", tmp_path / "both")
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert [r["target"]["name"] for r in summary["targets"]] == ["cpu", "arm-m-int8"]
    assert (tmp_path / "both" / "cpu" / "report.json").is_file()
    assert (tmp_path / "both" / "arm-m-int8" / "model.tflite").is_file()
    table = (tmp_path / "both" / "summary.md").read_text()
    assert "| cpu | cpu (x86_64) | onnx | fp32 |" in table and "| arm-m-int8 | mcu (armv7) | tflite | int8-io |" in table
