"""A probe plug-in (named in $EDGEKIT_PROBES): every artifact also goes through a command the user
gives in $EDGEKIT_PROBE_COMMAND, run as `COMMAND ARTIFACT IN.npz OUT.npz`, and its outputs are
compared with the host run. The worked example in docs/ARCHITECTURE.md."""
from __future__ import annotations

import os
import shlex
import subprocess

from edgekit import measure, runner

NAME = "command"
ORDER = 50


def applies(ctx, backend, precision: str) -> bool:
    return bool(os.environ.get("EDGEKIT_PROBE_COMMAND"))


def run(ctx, backend, artifact, host) -> dict:
    command = os.environ["EDGEKIT_PROBE_COMMAND"]
    out = host.run_dir / "out-command.npz"
    argv = [*shlex.split(command), str(artifact), str(host.run_dir / "in.npz"), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=runner.TIMEOUT_S)
    if proc.returncode != 0:
        return {NAME: {"error": runner.failure_reason(proc.returncode, proc.stderr), "how": f"run by {command}"}}
    fid = measure.fidelity(host.outputs, runner.load_stacked(out, "out"))
    return {NAME: {"max_abs_diff_vs_host": fid["max_abs_error"], "samples": fid["samples"], "how": f"run by {command}"}}


def warnings(ctx) -> list[str]:
    return []


def notes(result: dict) -> list[str]:
    return [f"COMMAND ({a[NAME]['how']}): {a['format']} {a['precision']}: "
            + (a[NAME]["error"] if "error" in a[NAME] else f"max abs diff vs host {a[NAME]['max_abs_diff_vs_host']:.1e}")
            for a in result["artifacts"] if a.get(NAME)]
