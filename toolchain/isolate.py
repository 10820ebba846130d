"""Run a native step that can crash (a converter, a runtime's reference kernels) in a child process.

`run("edgekit.accel.figures:emulate_file", args..., step="accelerator emulator")` starts a fresh
`python -m edgekit.isolate` (never a fork of a process holding TensorFlow), calls the function
there and returns its result. Arguments and result travel as pickles through a private temp dir.

* an `EdgekitError`/`ConversionError` raised in the child is raised again here, same type;
* any other exception becomes a `ConversionError` naming the step;
* a death by signal (abort, segfault, out of memory) becomes a `StepCrashed` (a
  `ConversionError`) naming the step, the native call in progress (the child's last `where()`
  note) and the signal: "LiteRT reference kernels aborted in allocate_tensors (SIGABRT)".

Progress lines the child sends with `progress()` reach the parent's `progress` callback.
"""
from __future__ import annotations

import faulthandler
import importlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from . import children, output
from .errors import ConversionError, EdgekitError

_STATUS_ENV = "EDGEKIT_ISOLATE_STATUS"
VERBS = {"SIGABRT": "aborted", "SIGSEGV": "crashed", "SIGBUS": "crashed", "SIGILL": "crashed", "SIGFPE": "crashed",
         "SIGKILL": "was killed", "SIGTERM": "was terminated"}


class StepCrashed(ConversionError):
    """The child running a step died from a signal."""

    def __init__(self, message: str, signal_name: str, where: str | None):
        super().__init__(message)
        self.signal_name, self.where = signal_name, where


def run(function: str, /, *args, step: str, progress: Callable[[str], None] | None = None,
        timeout: float | None = None, env: dict | None = None, **kwargs):
    """Call `module:function(*args, **kwargs)` in a child process and return its result."""
    with output.tempdir("isolate-") as tmp:  # named so a killed run's is swept
        work = Path(tmp)
        (work / "call.pkl").write_bytes(pickle.dumps((function, args, kwargs)))
        status = work / "status"
        status.touch()
        child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
                     _STATUS_ENV: str(status), **(env or {})}
        with open(work / "stderr", "wb") as err:
            # the caller's cwd (relative paths in the call keep their meaning); -P: nothing imported from it
            argv, child_env, cwd = children.safe_python([sys.executable, "-m", "edgekit.isolate", str(work)],
                                                        child_env)
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    env=child_env, cwd=cwd, start_new_session=True, preexec_fn=children.die_with_parent)
            with children.tracking(proc):
                where = _follow(proc, status, progress, timeout, step)
        return _outcome(proc.returncode, work, step, where)


def _follow(proc: subprocess.Popen, status: Path, progress, timeout: float | None, step: str) -> str | None:
    """Wait for the child, forwarding its progress lines; returns its last `where` note, else the
    last progress line (what it was doing)."""
    started, offset, where, doing = time.monotonic(), 0, None, None
    while True:
        finished = proc.poll() is not None
        with open(status, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            kind, _, text = line.partition(" ")
            if kind == "W":
                where = text or None
            elif kind == "P":
                doing = text
                if progress:
                    progress(text)
        if finished:
            return where or (f"'{doing}'" if doing else None)
        if timeout is not None and time.monotonic() - started > timeout:
            raise ConversionError(f"{step} timed out after {timeout:.0f} s")  # tracking() kills it
        time.sleep(0.1)


def _outcome(code: int, work: Path, step: str, where: str | None):
    result = work / "result.pkl"
    if code == 0 and result.is_file():
        ok, value = pickle.loads(result.read_bytes())
        if ok:
            return value
        if isinstance(value, str):
            raise ConversionError(f"{step} failed: {value}")
        raise value
    if code < 0:
        name = signal.Signals(-code).name
        at = f" in {where}" if where else ""
        raise StepCrashed(f"{step} {VERBS.get(name, 'died')}{at} ({name})", name, where)
    lines = [ln for ln in (work / "stderr").read_text(errors="replace").splitlines() if ln.strip()]
    raise ConversionError(f"{step} failed (exit {code}): {(lines or ['no output'])[-1][:200]}")


# --- child side -------------------------------------------------------------------------------------

def where(note: str | None) -> None:
    """Name the native call about to run, so a crash in it is reported by name. No-op outside a child."""
    _send("W", note or "")


def progress(message: str) -> None:
    """A progress line for the parent's progress callback (stderr outside a child)."""
    if not _send("P", message):
        print(message, file=sys.stderr)


def _send(kind: str, text: str) -> bool:
    path = os.environ.get(_STATUS_ENV)
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{kind} {' '.join(text.splitlines())}\n")
    return True


def _child(work: Path) -> None:
    faulthandler.enable()  # a native crash leaves its Python stack in the child's stderr
    function, args, kwargs = pickle.loads((work / "call.pkl").read_bytes())
    module, _, name = function.partition(":")
    try:
        value = (True, getattr(importlib.import_module(module), name)(*args, **kwargs))
    except (EdgekitError, ConversionError) as exc:
        value = (False, exc)
    except Exception as exc:  # an unexpected error: the parent reports it as one line naming the step
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        value = (False, f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    (work / "result.tmp").write_bytes(pickle.dumps(value))
    os.replace(work / "result.tmp", work / "result.pkl")


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
