"""Benchmark runs on a device over SSH: copy, run the light runner there, fetch, clean up.

    ssh://user@host[:port]

Uses the system `ssh`/`scp` clients (keys from your agent, ~/.ssh, or $EDGEKIT_SSH_KEY) in batch
mode, so nothing ever waits for a password. The device needs Python 3 and the runtime extra:
`pip install 'edgekit-toolchain[tflite]'` (or `[onnx]`, `[openvino]`); the command that starts
Python there is `python3` unless $EDGEKIT_REMOTE_PYTHON says otherwise.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import children
from .errors import EdgekitError, RunnerError
from .measure import REMOTE

CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Device:
    user: str
    host: str
    port: int

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}" if self.user else f"{self.host}:{self.port}"


# A user name and a host name (DNS name, IPv4, or [IPv6]) that can never be read as an ssh option.
_USER = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]"


def parse(url: str) -> Device:
    match = re.fullmatch(rf"ssh://(?:({_USER})@)?({_HOST})(?::(\d{{1,5}}))?/?", url)
    port = int(match.group(3) or 22) if match else 0
    if not match or not 0 < port < 65536:
        raise EdgekitError(f"--device '{url}' is not ssh://user@host[:port] (letters, digits, '.', '_', '-'; "
                           "no leading '-')", "write it like ssh://pi@192.168.1.20")
    return Device(match.group(1) or "", match.group(2).strip("[]"), port)


def _ssh_options(device: Device) -> list[str]:
    options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "LogLevel=ERROR"]
    if os.environ.get("EDGEKIT_SSH_KEY"):
        options += ["-i", os.environ["EDGEKIT_SSH_KEY"], "-o", "IdentitiesOnly=yes"]
    if os.environ.get("EDGEKIT_SSH_KNOWN_HOSTS"):
        options += ["-o", f"UserKnownHostsFile={os.environ['EDGEKIT_SSH_KNOWN_HOSTS']}",
                    "-o", "StrictHostKeyChecking=accept-new"]
    return options


def _target(device: Device) -> str:
    return f"{device.user}@{device.host}" if device.user else device.host


def _scp_target(device: Device, path: str) -> str:
    host = f"[{device.host}]" if ":" in device.host else device.host
    return f"{device.user}@{host}:{path}" if device.user else f"{host}:{path}"


def _ssh_argv(device: Device, command: str) -> list[str]:
    return ["ssh", *_ssh_options(device), "-p", str(device.port), "--", _target(device), command]


def _no_answer(device: Device, timeout: float) -> EdgekitError:
    return EdgekitError(f"{device.label}: no answer within {timeout:.0f} s", "check the device, or raise --timeout")


def _ssh(device: Device, command: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = _ssh_argv(device, command)
    try:
        proc = children.run(cmd, timeout)
    except subprocess.TimeoutExpired:
        raise _no_answer(device, timeout) from None
    return _checked(device, proc)


def _checked(device: Device, proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode == 255 and not proc.stderr.strip():
        # ssh says 255 with nothing on stderr when the remote command died of a signal
        return subprocess.CompletedProcess(proc.args, 137, proc.stdout, "Killed by a signal")
    if proc.returncode == 255:
        raise _connection_error(device, proc.stderr)
    return proc


def _connection_error(device: Device, stderr: str) -> EdgekitError:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh failed"
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return EdgekitError(f"{device.label}: authentication failed ({text})",
                            "put your public key in ~/.ssh/authorized_keys on the device, or set EDGEKIT_SSH_KEY")
    return EdgekitError(f"{device.label}: cannot reach the device ({text})",
                        "check the address and port, that sshd runs there, and the network")


def _scp(device: Device, sources: list[str], destination: str, timeout: float) -> None:
    cmd = ["scp", "-q", *_ssh_options(device), "-P", str(device.port), "--", *sources, destination]
    try:
        proc = children.run(cmd, timeout)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"{device.label}: copying timed out after {timeout:.0f} s", "check the link to the device")
    if proc.returncode != 0:
        raise _connection_error(device, proc.stderr)


def bench(url: str, files: list[Path], inputs: Path | None, threads: int, warmup: int, runs: int,
          outputs: Path | None = None, timeout: float = 600) -> dict:
    """Run the light runner on the device; returns its JSON labelled with where it was measured."""
    device = parse(url)
    python = os.environ.get("EDGEKIT_REMOTE_PYTHON", "python3")
    workdir = _ssh(device, "mktemp -d /tmp/edgekit.XXXXXX", timeout).stdout.strip()
    if not workdir.startswith("/tmp/edgekit."):
        raise EdgekitError(f"{device.label}: could not make a temporary directory", "check /tmp on the device")
    remote = _scp_target(device, f"{workdir}/")
    try:
        _scp(device, [str(f) for f in files] + ([str(inputs)] if inputs else []), remote, timeout)
        _run_runner(device, workdir, files[0].name, inputs.name if inputs else None, python, timeout,
                    threads=threads, warmup=warmup, runs=runs)
        with tempfile.TemporaryDirectory() as tmp:
            wanted = [f"{remote}result.json"] + ([f"{remote}outputs.npz"] if inputs and outputs else [])
            _scp(device, wanted, tmp, timeout)
            result = json.loads(Path(tmp, "result.json").read_text())
            if inputs and outputs:
                os.replace(Path(tmp, "outputs.npz"), outputs)
    finally:
        _cleanup(device, workdir)
    result["how"] = f"{REMOTE} {result['host']['hostname']} ({device.label}, {result['host']['machine']})"
    return result


def _run_runner(device: Device, workdir: str, model: str, inputs: str | None, python: str, timeout: float,
                **options) -> None:
    from .runner import invoke
    try:
        invoke(f"{workdir}/{model}", f"{workdir}/result.json", python=(python,), timeout=timeout,
               inputs=f"{workdir}/{inputs}" if inputs else None, outputs=f"{workdir}/outputs.npz" if inputs else None,
               launcher=lambda argv: _ssh_argv(device, _remembering_pid(workdir, argv)),
               what=f"{device.label}: the run", **options)
    except RunnerError as exc:
        if exc.returncode is None:  # it timed out
            raise _no_answer(device, timeout) from None
        raise _run_error(device, _checked(device, subprocess.CompletedProcess([], exc.returncode, "", exc.stderr)))


def _run_error(device: Device, proc: subprocess.CompletedProcess) -> EdgekitError:
    from .runner import failure_reason
    text = failure_reason(proc.returncode, proc.stderr)
    if proc.returncode in (137, 143, -9, -15) or "Killed" in proc.stderr:
        return EdgekitError(f"{device.label}: the run was killed on the device (exit {proc.returncode})",
                            "check the device's memory (dmesg) and run again")
    if "No module named" in proc.stderr or "is not installed" in proc.stderr or proc.returncode == 127:
        return EdgekitError(f"{device.label}: the runner or its runtime is missing there ({text})",
                            "pip install 'edgekit-toolchain[tflite]' (or [onnx], [openvino]) on the device")
    return EdgekitError(f"{device.label}: the run failed ({text})", "see docs/DEVICES.md")


def _remembering_pid(workdir: str, argv: list[str]) -> str:
    """The runner's shell command; its pid is kept while it runs, so clean-up can stop it if we
    are interrupted or time out (the device does not notice that ssh went away)."""
    return (f"cd {shlex.quote(workdir)} && {{ {shlex.join(argv)} & echo $! > runner.pid; wait $!; rc=$?; "
            "rm -f runner.pid; exit $rc; }")


def _cleanup(device: Device, workdir: str) -> None:
    """Stop the runner if it still runs (interrupt, timeout), then remove the device's temp dir."""
    quoted = shlex.quote(workdir)
    try:
        _ssh(device, f"if [ -f {quoted}/runner.pid ]; then pid=$(cat {quoted}/runner.pid); kill -TERM $pid 2>/dev/null"
                     f" && sleep 1 && kill -KILL $pid 2>/dev/null; fi; rm -rf {quoted}", CONNECT_TIMEOUT_S * 3)
    except EdgekitError:
        pass  # the device went away; a reboot clears /tmp
