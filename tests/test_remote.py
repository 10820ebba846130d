"""Remote benchmark runs over SSH against a real OpenSSH server on loopback (installed by
`make setup`), with a throwaway key; and a run where the "device" is the emulated aarch64 Python."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clihelp import assert_user_error, run_cli
from conftest import default_signals
from conftest import free_tcp_port as _free_port


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_keras):
    import edgekit
    out = tmp_path_factory.mktemp("remote") / "out"
    edgekit.convert(tiny_keras, target="cpu", runs=1, out=out)
    return out


def leftovers() -> set[str]:
    return {p.name for p in Path("/tmp").glob("edgekit.*")}


def test_bench_on_a_device_over_ssh(ssh_env, artifacts, capsys, tmp_path):
    before = leftovers()
    result = run_cli(capsys, "bench", artifacts / "model.tflite", "--device", ssh_env["url"], "--device", ssh_env["url"],
                     "--runs", "5", "--warmup", "1", "--json")
    assert result.code == 0, result.err
    runs = json.loads(result.out)
    assert len(runs) == 2 and all(r["how"].startswith("measured on remote device") for r in runs)
    assert runs[0]["runs"] == 5 and runs[0]["latency_ms"]["median"] > 0 and runs[0]["runtime"]["name"] == "ai-edge-litert"
    table = run_cli(capsys, "bench", artifacts / "model.tflite", "--device", ssh_env["url"], "--runs", "2")
    assert "measured on remote device" in table.out
    assert leftovers() == before  # the device's temporary directories are gone


def test_convert_merges_remote_results(ssh_env, tiny_keras, capsys, tmp_path):
    result = run_cli(capsys, "convert", tiny_keras, "--device", ssh_env["url"], "--runs", "3", "--warmup", "0",
                     "--format", "onnx", "--format", "openvino", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    for artifact in json.loads((tmp_path / "o" / "report.json").read_text())["artifacts"]:
        remote = artifact["remote"][0]
        assert remote["latency_ms"]["how"].startswith("measured on remote device"), remote
        assert remote["max_abs_diff_vs_host"] == 0 and remote["top1_agreement_vs_host"] == 1.0
    assert "REMOTE onnx fp32: median" in result.out


def test_bench_on_several_devices_keeps_the_figures_of_those_that_worked(ssh_env, artifacts, capsys):
    dead = f"ssh://nobody@127.0.0.1:{_free_port()}"
    table = run_cli(capsys, "bench", artifacts / "model.tflite", "--device", ssh_env["url"], "--device", dead,
                    "--runs", "2", "--warmup", "0")
    assert_user_error(table, "1 of 2 devices failed", dead, "cannot reach the device", "devices that worked")
    assert ssh_env["url"] in table.out and "measured on remote device" in table.out and dead not in table.out
    printed = run_cli(capsys, "bench", artifacts / "model.tflite", "--device", dead, "--device", ssh_env["url"],
                      "--runs", "2", "--warmup", "0", "--json")
    assert printed.code == 2
    runs = json.loads(printed.out)
    assert runs[0]["device"] == dead and "cannot reach" in runs[0]["error"] and runs[1]["latency_ms"]["median"] > 0


def test_unreachable_host(ssh_env, artifacts, capsys):
    port = _free_port()
    result = run_cli(capsys, "bench", artifacts / "model.onnx", "--device", f"ssh://nobody@127.0.0.1:{port}")
    assert_user_error(result, "cannot reach the device", "sshd")


def test_authentication_failure(ssh_env, artifacts, capsys, monkeypatch):
    monkeypatch.setenv("EDGEKIT_SSH_KEY", str(ssh_env["dir"] / "stranger_key"))
    assert_user_error(run_cli(capsys, "bench", artifacts / "model.onnx", "--device", ssh_env["url"]),
                      "authentication failed", "authorized_keys")


def _fake_python(tmp_path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("body, words, extra", [
    ("echo \"No module named 'ai_edge_litert'\" >&2; exit 1", ["runtime is missing", "pip install"], []),
    ("kill -9 $$", ["killed on the device"], []),
    ("sleep 30", ["no answer within 3 s"], ["--timeout", "3"]),
])
def test_failures_on_the_device_leave_nothing_behind(body, words, extra, ssh_env, artifacts, capsys, tmp_path,
                                                      monkeypatch):
    monkeypatch.setenv("EDGEKIT_REMOTE_PYTHON", _fake_python(tmp_path, body))
    before = leftovers()
    result = run_cli(capsys, "bench", artifacts / "model.tflite", "--device", ssh_env["url"], *extra)
    assert_user_error(result, *words)
    time.sleep(0.5)
    assert leftovers() == before


@pytest.mark.parametrize("url", ["pi@host", "ssh://-oProxyCommand=touch${IFS}pwned@host", "ssh://pi@-oProxyCommand=x",
                                 "ssh://pi@host:99999", "ssh://pi@ho st", "ssh://p;i@host", "ssh://pi@host/../x"])
def test_bad_device_url(url, artifacts, capsys, tmp_path):
    assert_user_error(run_cli(capsys, "bench", artifacts / "model.onnx", "--device", url), "ssh://")
    assert not (tmp_path / "pwned").exists()


def test_ssh_and_scp_never_read_the_destination_as_an_option():
    from edgekit.probes.ssh import remote
    device = remote.parse("ssh://pi@192.168.1.20:2222")
    argv = remote._ssh_argv(device, "true")
    assert argv[argv.index("--") + 1] == "pi@192.168.1.20" and argv[-1] == "true"
    assert remote.parse("ssh://[fe80::1]").host == "fe80::1"
    assert remote._scp_target(remote.parse("ssh://u@[fe80::1]:22"), "/tmp/x") == "u@[fe80::1]:/tmp/x"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "timeout"])
def test_interrupted_remote_run_stops_the_runner_and_cleans_the_device(how, ssh_env, tmp_path, monkeypatch):
    """The device does not notice that ssh went away: edgekit stops the runner there and removes its
    temporary directory, on a signal and on --timeout."""
    import signal

    import fake_backend
    model = fake_backend.save_model(tmp_path / "slow.npz", (1, 4, 4), classes=3, sleep_s=0.05)
    # the device's Python sees the fake backend plug-in, like the host's runner does
    monkeypatch.setenv("EDGEKIT_REMOTE_PYTHON", _fake_python(
        tmp_path, f"export EDGEKIT_BACKENDS=fake_backend PYTHONPATH={Path(__file__).parent}\nexec {sys.executable} \"$@\""))
    before = leftovers()
    args = ["bench", model, "--device", ssh_env["url"], "--runs", "100000", "--warmup", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", *map(str, args), *(["--timeout", "10"] if how == "timeout"
                            else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    deadline, pid_file = time.time() + 60, None
    while pid_file is None and time.time() < deadline:
        pid_file = next((p / "runner.pid" for p in Path("/tmp").glob("edgekit.*") if p.name not in before
                         and (p / "runner.pid").is_file() and (p / "runner.pid").read_text().strip()), None)
        time.sleep(0.1)
    assert pid_file, proc.communicate()
    runner = int(pid_file.read_text())
    time.sleep(0.5)
    if how != "timeout":
        proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    if how == "timeout":
        assert proc.returncode == 2 and "no answer within 10 s" in err, err
    else:
        assert proc.returncode == 128 + getattr(signal, how) and "interrupted" in err, err
    deadline = time.time() + 10
    while Path(f"/proc/{runner}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{runner}").exists(), "the runner still runs on the device"
    assert leftovers() == before


def test_emulated_aarch64_device(ssh_env, artifacts, capsys, tmp_path, monkeypatch):
    """The runner on an aarch64 Python (QEMU) reached over SSH: the whole remote path on ARM."""
    from edgekit.probes.aarch64 import emulate
    home = emulate.environment(Path(os.environ["EDGEKIT_EMULATION_CACHE"]))
    monkeypatch.setenv("EDGEKIT_REMOTE_PYTHON", str(emulate.write_launcher(home, tmp_path / "python-aarch64")))
    result = run_cli(capsys, "bench", artifacts / "model.onnx", "--device", ssh_env["url"], "--runs", "2",
                     "--warmup", "0", "--json")
    assert result.code == 0, result.err
    run = json.loads(result.out)[0]
    assert run["host"]["machine"] == "aarch64" and run["runtime"]["name"] == "onnxruntime"


def _lock_waiters(lock: Path) -> int:
    import psutil
    return sum(1 for p in psutil.process_iter(["name", "cmdline"])
               if p.info["name"] == "flock" and str(lock) in " ".join(p.info["cmdline"] or []))


def test_two_bench_processes_on_one_device_take_turns(ssh_env, artifacts, tmp_path):
    """The device lock lives on the device: two separate edgekit processes never time there at once."""
    import fcntl
    lock = ssh_env["tmp_b"] / "edgekit-device.lock"
    with open(lock, "a") as held:  # a third job holds the device while both start, so they must queue
        fcntl.flock(held, fcntl.LOCK_EX)
        benches = [subprocess.Popen([sys.executable, "-m", "edgekit", "bench", str(artifacts / "model.tflite"),
                                     "--device", ssh_env["url_b"], "--runs", "300", "--warmup", "5", "--json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        deadline = time.time() + 120
        while _lock_waiters(lock) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert _lock_waiters(lock) == 2, "both benches should be waiting for the device"
    results = []
    for bench in benches:
        out, err = bench.communicate(timeout=300)
        assert bench.returncode == 0, err
        results.append(json.loads(out)[0])
    first, second = sorted(results, key=lambda r: r["timed_at"]["start"])
    assert first["timed_at"]["end"] <= second["timed_at"]["start"], (first["timed_at"], second["timed_at"])
    assert all(r["device_lock"]["waited_s"] > 0 for r in (first, second))


def test_bench_on_two_devices_runs_them_in_parallel(ssh_env, artifacts, capsys, tmp_path, monkeypatch):
    """Each device's runner waits until the other device's runner has started: only a parallel run passes."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("EDGEKIT_REMOTE_PYTHON", _fake_python(tmp_path, f"""
touch "{barrier}/$(basename "${{TMPDIR:-/tmp}}")"
n=0
while [ "$(ls "{barrier}" | wc -l)" -lt 2 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
[ "$(ls "{barrier}" | wc -l)" -ge 2 ] || {{ echo "the other device's run never started" >&2; exit 3; }}
exec {sys.executable} "$@"
"""))
    result = run_cli(capsys, "bench", artifacts / "model.tflite", "--device", ssh_env["url"], "--device",
                     ssh_env["url_b"], "--runs", "20", "--warmup", "1", "--json")
    assert result.code == 0, result.err
    runs = json.loads(result.out)
    assert [r["device"] for r in runs] == [ssh_env["url"], ssh_env["url_b"]]
    assert all(r["how"].startswith("measured on remote device") for r in runs)
    assert sorted(p.name for p in barrier.iterdir()) == ["device-b", "tmp"]
