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
                     "--processes", "2")
    assert result.code == 0, result.err
    assert "median" in result.out and "p99" in result.out and "threads=1" in result.out and "CV" in result.out
    result = run_cli(capsys, "bench", artifacts["onnx"], "--runs", "5", "--warmup", "1", "--processes", "2", "--json")
    latency = json.loads(result.out)["latency_ms"]
    assert latency["median"] > 0 and latency["processes"] == 2 and len(latency["process_medians"]) == 2
    assert {"iqr", "cv", "spread", "unstable"} <= set(latency)


def test_latency_stats_are_order_statistics():
    from edgekit.runner import latency_stats
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats["median"] == 50.5 and stats["min"] == 1 and stats["max"] == 100
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)


def test_invoke_fails_with_one_line_reason(tmp_path):
    from edgekit import runner
    from edgekit.errors import RunnerError
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(RunnerError) as info:
        runner.invoke(bad, tmp_path / "r.json", runs=1, warmup=0, what="the test run")
    assert str(info.value).startswith("the test run failed: ") and "\n" not in str(info.value)
    assert "Traceback" not in str(info.value)


def test_invoke_timeout_kills_the_whole_process_group(tmp_path):
    """A runner that hangs (and started a child of its own) is ended, group and all, at the timeout."""
    from edgekit import children, runner
    from edgekit.errors import RunnerError
    pidfile = tmp_path / "grandchild.pid"
    hang = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    launcher = lambda argv: [sys.executable, "-c", hang]  # noqa: E731
    with pytest.raises(RunnerError, match="timed out after 2 s"):
        runner.invoke(tmp_path / "m.tflite", None, timeout=2, launcher=launcher)
    assert children.live_groups() == []
    import os
    import time
    grandchild = int(pidfile.read_text())
    for _ in range(50):  # reaped by init once killed
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{grandchild}/stat").read().split(")")[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the runner's own child outlived the timeout")
