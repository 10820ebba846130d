"""Signals: an interrupted run cleans up after itself.

`install()` (done by the CLI) turns SIGINT, SIGTERM and SIGHUP into an `Interrupted` exception,
so every `finally` and context manager on the way out runs: staging and scratch directories go,
remote runs stop their runner and clean their device, and `children` kills every child process
group it started (runners, converters, ssh) on the way.
"""
from __future__ import annotations

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 3.0


class Interrupted(KeyboardInterrupt):
    """A signal asked us to stop; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


_raised = False


def _handler(signum, frame):
    global _raised
    if _raised:  # already stopping: let the clean-up finish
        return
    _raised = True
    raise Interrupted(signum)


def install():
    """Make SIGINT, SIGTERM and SIGHUP raise Interrupted once; returns a function that puts the
    previous handlers back. Only the main thread can do this; elsewhere it does nothing."""
    global _raised
    _raised = False
    previous = {}
    try:
        for signum in SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup'd runs keep ignoring SIGHUP
                previous[signum] = signal.signal(signum, _handler)
    except ValueError:  # not the main thread
        pass

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return restore
