"""Remote benchmark runs over SSH against a real OpenSSH server on loopback (installed by
`make setup`), with a throwaway key; and a run where the "device" is the emulated aarch64 Python."""
from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clihelp import assert_user_error, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    config = d / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
                      f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\nStrictModes no\n"
                      "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                      "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield {"url": f"ssh://{getpass.getuser()}@127.0.0.1:{port}", "dir": d, "port": port}
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def ssh_env(sshd, monkeypatch):
    monkeypatch.setenv("EDGEKIT_SSH_KEY", str(sshd["dir"] / "client_key"))
    monkeypatch.setenv("EDGEKIT_SSH_KNOWN_HOSTS", str(sshd["dir"] / "known_hosts"))
    monkeypatch.setenv("EDGEKIT_REMOTE_PYTHON", sys.executable)
    return sshd


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
    from edgekit import remote
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
                            else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    from edgekit import emulate
    home = emulate.environment(Path(os.environ["EDGEKIT_EMULATION_CACHE"]))
    monkeypatch.setenv("EDGEKIT_REMOTE_PYTHON", str(emulate.write_launcher(home, tmp_path / "python-aarch64")))
    result = run_cli(capsys, "bench", artifacts / "model.onnx", "--device", ssh_env["url"], "--runs", "2",
                     "--warmup", "0", "--json")
    assert result.code == 0, result.err
    run = json.loads(result.out)[0]
    assert run["host"]["machine"] == "aarch64" and run["runtime"]["name"] == "onnxruntime"
