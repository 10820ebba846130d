"""Figures from elsewhere than this host's CPU runner, each attached to an artifact's entry:
the GPU, emulated aarch64 (QEMU), devices over SSH, the int8 accelerator emulator, and the
TFLite Micro probe for microcontrollers (tflm.py).

Each function takes the conversion Context and returns a figures dict (or an error entry); none
substitutes a host CPU figure for the place it names.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import isolate, measure, runner
from .errors import ConversionError, EdgekitError, RunnerError

REFERENCE_SAMPLES = 20  # samples checked op by op against the reference kernels

if TYPE_CHECKING:
    from .context import Context


def gpu_latency(ctx: Context, backend, artifact: Path, run_dir: Path) -> dict:
    """Latency on the GPU where the format's runtime sees one; otherwise say so, never a CPU figure."""
    gpu = backend.gpu_name() if backend.gpu_name else None
    if gpu is None:
        return {"status": "not measured: no GPU found", "how": "not measured"}
    _, warmup, runs = ctx.bench_settings()
    try:
        result = runner.invoke(artifact, run_dir / "gpu.json", warmup=warmup, runs=runs, inputs=run_dir / "in.npz",
                               device="gpu", what="the GPU run")
    except RunnerError as exc:
        return {"status": f"not measured: {exc}", "how": "not measured"}
    return {**result["latency_ms"], "threads": result["threads"], "warmup": result["warmup"], "runs": result["runs"],
            "how": f"measured on host GPU ({gpu})"}


def remote_run(ctx: Context, backend, artifact: Path, run_dir: Path, host_outputs, url: str) -> dict:
    """The artifact measured on a device over SSH, with its outputs checked against the host run."""
    from . import remote
    threads, warmup, runs = ctx.bench_settings()
    ctx.progress(f"{backend.FORMAT}: running on {url}")
    try:
        result = remote.bench(url, backend.files(artifact), run_dir / "in.npz", threads, warmup, runs,
                              outputs=run_dir / "out-remote.npz")
    except EdgekitError as exc:
        return {"device": url, "error": exc.one_line()}
    fid = measure.fidelity(host_outputs, runner.load_stacked(run_dir / "out-remote.npz", "out"))
    return {"device": url, "host": result["host"], "runtime": result["runtime"],
            "latency_ms": {**result["latency_ms"], "threads": result["threads"], "warmup": result["warmup"],
                           "runs": result["runs"], "how": result["how"]},
            "memory": {**result["memory"], "how": result["how"]},
            "max_abs_diff_vs_host": fid["max_abs_error"], "top1_agreement_vs_host": fid["top1_agreement"]}


def accelerated(ctx: Context, backend) -> bool:
    return ctx.target.profile.device.kind == "fpga" and backend.FORMAT == "tflite"


def accelerator_figures(ctx: Context, artifact: Path, run_dir: Path) -> dict:
    """Run the int8 graph on the accelerator emulator and check it against LiteRT's reference kernels,
    each in an isolated child: a native crash there marks this figure failed, not the run."""
    from .accel import figures, reference
    spec = ctx.target.profile.accelerator
    runner.save_stacked(run_dir / "reference.npz", "out", ctx.reference)
    ctx.progress("tflite: running the accelerator emulator")
    try:
        result = isolate.run("edgekit.accel.figures:emulate_file", artifact, spec, run_dir, ctx.qconfig.precision,
                             ctx.evalset.labels, ctx.source_accuracy, step="accelerator emulator",
                             progress=ctx.progress)
    except ConversionError as exc:
        return {"error": f"not emulated: {exc}", "how": figures.HOW}
    ctx.progress("tflite: checking the emulator against LiteRT's reference kernels, op by op")
    result["vs_tflite_reference"] = reference.check(artifact, spec, run_dir / "in.npz", REFERENCE_SAMPLES,
                                                    ctx.progress)
    return result


def emulating(ctx: Context) -> bool:
    from . import emulate
    if ctx.options.emulate is not None:
        return ctx.options.emulate
    return ctx.target.profile.device.arch == "aarch64" and not emulate.missing_tools()


def emulated_run(ctx: Context, backend, artifact: Path, run_dir: Path, host_outputs) -> dict:
    """Run the artifact on emulated aarch64 and compare with the host run. Never a latency."""
    from . import emulate
    if backend.FORMAT not in emulate.RUNTIMES:
        return {"runs": None, "reason": f"only {', '.join(emulate.RUNTIMES)} artifacts run under emulation",
                "how": emulate.HOW}
    try:
        from .context import cache_dir
        home = emulate.environment(Path(os.environ.get("EDGEKIT_EMULATION_CACHE", cache_dir() / "emulation")),
                                   ctx.progress)
        ctx.progress(f"{backend.FORMAT}: running on emulated aarch64")
        result = emulate.run(home, artifact, run_dir / "in.npz", run_dir / "out-aarch64.npz")
    except ConversionError as exc:
        return {"runs": False, "reason": str(exc), "how": emulate.HOW}
    fid = measure.fidelity(host_outputs, runner.load_stacked(run_dir / "out-aarch64.npz", "out"))
    return {"runs": True, "max_abs_diff_vs_host": fid["max_abs_error"], "top1_agreement_vs_host": fid["top1_agreement"],
            "samples": fid["samples"], "runtime": result["runtime"], "how": emulate.HOW}


def mcu_probe(ctx: Context, backend, artifact: Path, precision: str, host_outputs) -> dict | None:
    """The target artifact of an MCU profile in TFLite Micro, its C artifact and the board verdict (tflm.py)."""
    from . import tflm
    if backend.FORMAT != "tflite" or precision != ctx.qconfig.precision or not tflm.applies(ctx.target):
        return None
    return tflm.run(artifact, ctx, host_outputs)
