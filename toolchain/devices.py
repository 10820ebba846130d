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

import numpy as np

from . import measure, runner
from .errors import ConversionError, EdgekitError, RunnerError

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


def accelerator_figures(ctx: Context, artifact: Path, tflite_outputs) -> dict:
    """Run the int8 graph on the accelerator emulator; compare with the float model and with TFLite."""
    from . import accel
    spec = ctx.target.profile.accelerator
    ctx.progress("tflite: running the accelerator emulator")
    try:
        emu = accel.Emulator(artifact, spec)
    except ConversionError as exc:
        return {"error": f"not emulated: {exc}", "how": "emulated (integer-only numpy emulator of the accelerator)"}
    outputs = emulate_samples(emu, ctx.evalset.samples)
    placement = emu.placement()
    macs = {op.outputs[0]: accel.mac_count(emu, op, spec) for op, _ in placement}
    on_accel = sum(macs[op.outputs[0]] for op, where in placement if where == "accelerator")
    vs_tflite = measure.fidelity(tflite_outputs, outputs, ctx.qconfig.precision)
    figures = {
        "how": "emulated (integer-only numpy emulator of the accelerator)",
        "coverage_macs": float(on_accel / max(sum(macs.values()), 1)),
        "fallback_ops": sorted({op.kind for op, where in placement if where == "cpu"} - {"QUANTIZE", "DEQUANTIZE"}),
        "fidelity_vs_float": measure.fidelity(ctx.reference, outputs, ctx.qconfig.precision),
        "fidelity_vs_tflite": vs_tflite,
        "vs_tflite_reference": accel.compare_with_reference(emu, artifact, [s[0] for s in ctx.evalset.samples[:20]]),
        "estimate": accel.cycles(emu, spec),
        "weights_bytes": int(sum(t.data.nbytes for t in emu.tensors if t.data is not None)),
        "onchip_bytes": spec.onchip_kib * 1024,
    }
    figures["weights_fit_onchip"] = figures["weights_bytes"] <= figures["onchip_bytes"]
    figures["activations_fit_onchip"] = all(layer["fits_onchip"] for layer in figures["estimate"]["layers"])
    if ctx.evalset.labels is not None:
        acc = measure.accuracy(outputs, ctx.evalset.labels)
        figures["accuracy"] = {"value": acc, "delta": acc - ctx.source_accuracy, "how": figures["how"]}
    return figures


def emulate_samples(emu, samples: list[list[np.ndarray]], chunk: int = 64) -> list[list[np.ndarray]]:
    """Emulator outputs (dequantized) for batch-1 samples, run `chunk` at a time."""
    from .accel import quantize_input, dequantize_output
    results = []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        arrays = [quantize_input(emu, i, np.concatenate([s[k] for s in part])) for k, i in enumerate(emu.inputs)]
        outs = [dequantize_output(emu, i, o) for i, o in zip(emu.outputs, emu.run(arrays))]
        results += [[o[n:n + 1] for o in outs] for n in range(len(part))]
    return results


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
