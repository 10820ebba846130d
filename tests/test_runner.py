"""The light runner: real runtimes, versioned JSON, .npz in and out, and no TensorFlow in its process."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from clihelp import run_cli


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_keras):
    import edgekit
    out = tmp_path_factory.mktemp("runner") / "out"
    edgekit.convert(tiny_keras, target="cpu", runs=1, out=out)
    return {"tflite": out / "model.tflite", "onnx": out / "model.onnx", "openvino": out / "model.xml"}


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "openvino"])
def test_runner_process_benchmarks_without_tensorflow(artifacts, fmt, tmp_path):
    x = np.random.default_rng(0).random((3, 1, 8, 8, 1), dtype=np.float32)
    np.savez(tmp_path / "in.npz", in0=x)
    script = ("import sys, edgekit.runner as r; code = r.main(sys.argv[1:]); "
              "print('TF_LOADED' if any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules) else 'NO_TF'); "
              "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, str(artifacts[fmt]), "--runs", "4", "--warmup", "2",
                           "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz"),
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO_TF")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["schema"] == "edgekit.bench/1" and result["format"] == fmt
    assert result["runs"] == 4 and result["warmup"] == 2 and result["threads"] == 1
    assert set(result["latency_ms"]) >= {"median", "p90", "p99", "mean", "stdev"}
    assert result["runtime"]["version"] and result["host"]["machine"]
    with np.load(tmp_path / "out.npz") as out:
        assert out["out0"].shape == (3, 1, 4)
        assert np.allclose(out["out0"].sum(axis=-1), 1, atol=1e-5)


def test_bench_command(artifacts, capsys, tmp_path):
    result = run_cli(capsys, "bench", artifacts["onnx"], "--threads", "1", "--runs", "5", "--warmup", "1",
                     "--json", tmp_path / "b.json")
    assert result.code == 0, result.err
    assert "median" in result.out and "p99" in result.out and "threads=1" in result.out
    assert json.loads((tmp_path / "b.json").read_text())["latency_ms"]["median"] > 0


def test_latency_stats_are_order_statistics():
    from edgekit.runner import latency_stats
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats["median"] == 50.5 and stats["min"] == 1 and stats["max"] == 100
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
