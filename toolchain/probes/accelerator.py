"""The int8 graph run on the accelerator emulator (fpga profiles): coverage, fallback ops, fidelity
against the float model and TFLite, bit-exactness against LiteRT's reference kernels (op by op),
and the cycle model's estimate (docs/ACCELERATOR.md). Both native-heavy steps run in isolated
children: a crash there marks this figure failed, not the run."""
from __future__ import annotations

from pathlib import Path

from .. import isolate, runner
from ..errors import ConversionError
from ..measure import kib

NAME = "accelerator"
ORDER = 40
REFERENCE_SAMPLES = 20  # samples checked op by op against the reference kernels


def applies(ctx, backend, precision: str) -> bool:
    return ctx.target.profile.device.kind == "fpga" and backend.FORMAT == "tflite" and precision != "fp32"


def run(ctx, backend, artifact: Path, host) -> dict:
    from ..accel import figures, reference
    spec, run_dir = ctx.target.profile.accelerator, host.run_dir
    runner.save_stacked(run_dir / "reference.npz", "out", ctx.reference)
    ctx.progress("tflite: running the accelerator emulator")
    try:
        result = isolate.run("edgekit.accel.figures:emulate_file", artifact, spec, run_dir, ctx.qconfig.precision,
                             ctx.evalset.labels, ctx.source_accuracy, step="accelerator emulator",
                             progress=ctx.progress)
    except ConversionError as exc:
        return {NAME: {"error": f"not emulated: {exc}", "how": figures.HOW}}
    ctx.progress("tflite: checking the emulator against LiteRT's reference kernels, op by op")
    result["vs_tflite_reference"] = reference.check(artifact, spec, run_dir / "in.npz", REFERENCE_SAMPLES,
                                                    ctx.progress)
    return {NAME: result}


def warnings(ctx) -> list[str]:
    return []


def notes(result: dict) -> list[str]:
    return [line for a in result["artifacts"] if a.get(NAME) for line in artifact_notes(a[NAME])]


def artifact_notes(acc: dict) -> list[str]:
    if "error" in acc:
        return [f"ACCELERATOR: {acc['error']}"]
    est, ref = acc["estimate"], acc["vs_tflite_reference"]
    if "error" in ref:
        exact = f"not checked: {ref['error']}"
    else:
        exact = "bit-exact" if ref["bit_exact"] else f"differs in {len(ref['mismatched_ops'])} op(s): " + \
            ", ".join(list(ref["mismatched_ops"])[:3])
        if not ref["bit_exact"] and ref.get("exact_by_design") is False:
            exact += " (expected: this profile's requantization or accumulator width is not TFLite's)"
        exact = f"{ref['ops_compared']} ops on {ref['samples']} samples: {exact}"
        if ref.get("not_compared"):
            exact += "; not compared: " + "; ".join(f"{k}: {v}" for k, v in list(ref["not_compared"].items())[:3])
    accuracy = f"accuracy {acc['accuracy']['value']:.2%}" if acc.get("accuracy") else ""
    if accuracy and acc["accuracy"].get("delta") is not None:
        accuracy += f" ({acc['accuracy']['delta'] * 100:+.2f}pt)"
    accuracy += "; " if accuracy else ""
    return [
        f"ACCELERATOR ({acc['how']}): {acc['coverage_macs']:.1%} of MACs on the accelerator; CPU fallback ops: "
        f"{', '.join(acc['fallback_ops']) or 'none'}; {accuracy}cosine vs float "
        f"{acc['fidelity_vs_float']['cosine']:.6f}, vs TFLite int8 max diff {acc['fidelity_vs_tflite']['max_abs_error']:.2e}"
        f" (top-1 {acc['fidelity_vs_tflite']['top1_agreement']:.1%}); against TFLite reference kernels, op by op: "
        f"{exact}.",
        f"ACCELERATOR ESTIMATED ({est['how']}): {est['latency_ms']:.4g} ms, {est['cycles']:,} cycles, MAC utilisation "
        f"{est['mac_utilisation']:.1%}, DRAM traffic {kib(est['dram_bytes'])}; weights {kib(acc['weights_bytes'])} "
        f"{'fit' if acc['weights_fit_onchip'] else 'DO NOT FIT'} in {kib(acc['onchip_bytes'])} on chip; activations "
        f"{'fit' if acc['activations_fit_onchip'] else 'DO NOT all fit'} layer by layer.",
    ]
