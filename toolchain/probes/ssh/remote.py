"""Benchmark runs on a device over SSH: copy, run the light runner there, fetch, clean up.

    ssh://user@host[:port]

Uses the system `ssh`/`scp` clients (keys from your agent, ~/.ssh, or $EDGEKIT_SSH_KEY) in batch
mode, so nothing ever waits for a password. The device needs Python 3 and the runtime extra:
`pip install 'edgekit-toolchain[tflite]'` (or `[onnx]`, `[openvino]`); the command that starts
Python there is `python3` unless $EDGEKIT_REMOTE_PYTHON says otherwise.

One job per device at a time, whoever starts it: every job holds a lock on the device itself
(`flock` on a file in its temp dir, kept by one SSH session for the whole job and released when
that session ends, however it ends), so two edgekit processes on different machines never time
on one board at once. `bench_pool` runs a job on whichever device of a pool is free first.
"""
from __future__ import annotations

import json
import os
import re
import select
import shlex
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ... import children
from ...errors import EdgekitError, RunnerError
from ...measure import REMOTE

CONNECT_TIMEOUT_S = 10
LOCK = "edgekit-device.lock"  # in the device's $TMPDIR (default /tmp)
POOL_POLL_S = 1.0


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


@contextmanager
def hold(device: Device, timeout: float, wait: bool = True):
    """Hold the device's lock while the block runs; yields False (without waiting) when `wait` is off and
    another job holds it. The lock is a `flock` on the device kept by this SSH session."""
    script = (f'exec flock {"" if wait else "-n "}"${{TMPDIR:-/tmp}}/{LOCK}" '
              "sh -c 'echo locked; exec cat >/dev/null'")
    proc = subprocess.Popen(_ssh_argv(device, script), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else None
        if line is None:
            raise EdgekitError(f"{device.label}: busy for {timeout:.0f} s (another job holds {LOCK} there)",
                               "wait for it, or raise --timeout")
        if line.strip() != "locked":
            _lock_refused(device, proc, wait)
            yield False
            return
        yield True
    finally:
        proc.stdin.close()  # the session ends, `cat` sees end of input, flock lets go
        try:
            proc.wait(timeout=CONNECT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lock_refused(device: Device, proc: subprocess.Popen, wait: bool) -> None:
    """Why the lock session ended without the lock: busy (only when not waiting), or an error to raise."""
    stderr = proc.stderr.read()
    code = proc.wait()
    if code == 1 and not wait and not stderr.strip():
        return
    if code == 255:
        raise _connection_error(device, stderr)
    if code == 127 or "not found" in stderr:
        raise EdgekitError(f"{device.label}: the device has no `flock` to lock it with",
                           "install util-linux (or busybox) on the device")
    raise EdgekitError(f"{device.label}: could not lock the device ({stderr.strip()[-200:] or f'exit {code}'})",
                       f"check that its temp dir is writable ({LOCK})")


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
    """Run the light runner on the device, holding its lock; returns its JSON labelled with where it was measured."""
    device = parse(url)
    asked = time.time()
    with hold(device, timeout):
        return _bench_held(url, device, time.time() - asked, files, inputs, threads, warmup, runs, outputs, timeout)


def bench_pool(urls: list[str], files: list[Path], inputs: Path | None, threads: int, warmup: int, runs: int,
               outputs: Path | None = None, timeout: float = 600) -> dict:
    """Run on whichever device of the pool is free first (each device locked as in `bench`)."""
    if len(urls) == 1:
        return bench(urls[0], files, inputs, threads, warmup, runs, outputs, timeout)
    devices = [parse(url) for url in urls]
    asked = time.time()
    start = os.getpid() % len(urls)  # participants start from different devices
    while True:
        for i in range(len(urls)):
            url, device = urls[(start + i) % len(urls)], devices[(start + i) % len(urls)]
            with hold(device, timeout, wait=False) as held:
                if held:
                    return _bench_held(url, device, time.time() - asked, files, inputs, threads, warmup, runs,
                                       outputs, timeout)
        if time.time() - asked > timeout:
            raise EdgekitError(f"every device of the pool was busy for {timeout:.0f} s ({', '.join(urls)})",
                               "wait for the other jobs, add devices, or raise --timeout")
        time.sleep(POOL_POLL_S)


def _bench_held(url: str, device: Device, waited_s: float, files: list[Path], inputs: Path | None, threads: int,
                warmup: int, runs: int, outputs: Path | None, timeout: float) -> dict:
    python = os.environ.get("EDGEKIT_REMOTE_PYTHON", "python3")
    workdir = _ssh(device, 'mktemp -d "${TMPDIR:-/tmp}/edgekit.XXXXXX"', timeout).stdout.strip()
    if "/edgekit." not in workdir:
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
    result["device"] = url
    result["device_lock"] = {"waited_s": round(waited_s, 3), "held_on": f"{device.label}:$TMPDIR/{LOCK}"}
    return result


def _run_runner(device: Device, workdir: str, model: str, inputs: str | None, python: str, timeout: float,
                **options) -> None:
    from ...runner import invoke
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
    from ...runner import failure_reason
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
    # PYTHONSAFEPATH (Python 3.11+; older ones ignore it): the model's own name, e.g. numpy.py, is never imported
    return (f"cd {shlex.quote(workdir)} && {{ PYTHONSAFEPATH=1 {shlex.join(argv)} & echo $! > runner.pid; wait $!; rc=$?; "
            "rm -f runner.pid; exit $rc; }")


def _cleanup(device: Device, workdir: str) -> None:
    """Stop the runner if it still runs (interrupt, timeout), then remove the device's temp dir."""
    quoted = shlex.quote(workdir)
    try:
        _ssh(device, f"if [ -f {quoted}/runner.pid ]; then pid=$(cat {quoted}/runner.pid); kill -TERM $pid 2>/dev/null"
                     f" && sleep 1 && kill -KILL $pid 2>/dev/null; fi; rm -rf {quoted}", CONNECT_TIMEOUT_S * 3)
    except EdgekitError:
        pass  # the device went away; a reboot clears /tmp
