"""TFLite/ONNX artifacts run on emulated aarch64 (QEMU user mode, the same runtime versions) and
compared with the host run: does it run on the target's architecture, with the same outputs?
Never a latency: emulation says nothing about speed."""
from __future__ import annotations

import os
from pathlib import Path

from ... import measure, runner
from . import emulate
from ...context import cache_dir
from ...errors import ConversionError

NAME = "aarch64"
ORDER = 20


def applies(ctx, backend, precision: str) -> bool:
    if ctx.options.emulate is not None:
        return ctx.options.emulate
    return ctx.target.profile.device.arch == "aarch64" and not emulate.missing_tools()


def run(ctx, backend, artifact: Path, host) -> dict:
    if backend.FORMAT not in emulate.RUNTIMES:
        return {NAME: {"runs": None, "reason": f"only {', '.join(emulate.RUNTIMES)} artifacts run under emulation",
                       "how": emulate.HOW}}
    try:
        home = emulate.environment(Path(os.environ.get("EDGEKIT_EMULATION_CACHE", cache_dir() / "emulation")),
                                   ctx.progress)
        ctx.progress(f"{backend.FORMAT}: running on emulated aarch64")
        result = emulate.run(home, artifact, host.run_dir / "in.npz", host.run_dir / "out-aarch64.npz")
    except ConversionError as exc:
        return {NAME: {"runs": False, "reason": str(exc), "how": emulate.HOW}}
    fid = measure.fidelity(host.outputs, runner.load_stacked(host.run_dir / "out-aarch64.npz", "out"))
    return {NAME: {"runs": True, "max_abs_diff_vs_host": fid["max_abs_error"],
                   "top1_agreement_vs_host": fid["top1_agreement"], "samples": fid["samples"],
                   "runtime": result["runtime"], "how": emulate.HOW}}


def warnings(ctx) -> list[str]:
    return []


def notes(result: dict) -> list[str]:
    lines = []
    for a in result["artifacts"]:
        arm = a.get(NAME)
        if arm and arm["runs"]:
            lines.append(f"aarch64 ({arm['how']}): {a['format']} {a['precision']} runs: yes; max abs diff vs host "
                         f"{arm['max_abs_diff_vs_host']:.1e}, top-1 agreement {arm['top1_agreement_vs_host']:.1%} "
                         f"on {arm['samples']} samples (no latency: emulation says nothing about speed)")
        elif arm:
            lines.append(f"aarch64: {a['format']} {a['precision']} runs: {'no' if arm['runs'] is False else 'not run'}"
                         f" ({arm['reason']})")
    return lines
