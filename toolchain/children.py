"""Child processes edgekit starts (runners, trial conversions, ssh): each in its own process group,
registered while it lives, so a signal handler can end them and everything they started.

Standard library only: the runner side imports this too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager

_LIVE: set[int] = set()  # process group ids of children still running
_LOCK = threading.Lock()


def _prctl():
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl() if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """preexec_fn: Linux sends the child SIGKILL when edgekit dies first, even of SIGKILL (no orphans)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def live_groups() -> list[int]:
    with _LOCK:
        return sorted(_LIVE)


def kill_all(sig: int = signal.SIGKILL) -> None:
    """End every live child process group (for signal handlers and atexit)."""
    for pgid in live_groups():
        _kill_group(pgid, sig)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def safe_python(argv: list[str], env: dict | None = None, cwd=None) -> tuple[list[str], dict | None, str | None]:
    """A Python child (argv[0] is this interpreter, or `python=` says so) that imports nothing from its
    working directory: `-P` (safe path: no cwd or script folder on sys.path), PYTHONSAFEPATH=1 for
    its own children, PYTHONPATH without empty entries (an accidental `$PYTHONPATH:` means the cwd)
    and with relative ones made absolute (they keep meaning what they meant here), and an explicit
    cwd. Not `-I`: plug-ins ($EDGEKIT_BACKENDS, $EDGEKIT_PROBES) may live on PYTHONPATH."""
    if not argv or argv[0] != sys.executable:
        return argv, env, cwd
    env = dict(os.environ if env is None else env)
    env["PYTHONSAFEPATH"] = "1"
    paths = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    argv = argv if argv[1:2] == ["-P"] else [argv[0], "-P", *argv[1:]]
    return argv, env, str(cwd) if cwd is not None else os.getcwd()


def run(argv: list[str], timeout: float | None, *, env: dict | None = None, cwd=None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(capture_output=True, text=True) in a new process group. On a timeout or any
    exception here (KeyboardInterrupt included) the whole group is killed before it propagates.
    A Python child is started by safe_python()."""
    argv, env, cwd = safe_python(argv, env, cwd)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True, preexec_fn=die_with_parent)
    with tracking(proc):
        stdout, stderr = proc.communicate(input, timeout=timeout)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


@contextmanager
def tracking(proc: subprocess.Popen):
    """Register a child started with start_new_session=True while the block runs; on any exception
    (KeyboardInterrupt included) its whole group is killed first; grandchildren it left are killed after."""
    with _LOCK:
        _LIVE.add(proc.pid)
    try:
        yield proc
    except BaseException:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.communicate()  # reaps it and drains its pipes, if any
        raise
    finally:
        with _LOCK:
            _LIVE.discard(proc.pid)
    _kill_group(proc.pid, signal.SIGKILL)
