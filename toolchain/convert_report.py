"""The sections of convert's report beside the artifacts: the header (model, target, host, data, calibration,
recipe, passes), target-wide warnings, the cost-model estimate for devices that are not here, and the
notes on quantized artifacts slower than (or too unsteady to compare with) their fp32 baseline."""
from __future__ import annotations

import datetime
import hashlib
from dataclasses import asdict
from pathlib import Path

from . import __version__, passes, probes, runner, timing
from .context import Context
from .errors import ConversionError


REPORT_SCHEMA = "edgekit.report/1"


def header(ctx: Context, model: Path) -> dict:
    profile = ctx.target.profile
    header = {
        "schema": REPORT_SCHEMA,
        "edgekit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(model), "name": ctx.source.name, "kind": ctx.stages[0][1].kind if ctx.stages else
                  ctx.source.kind, "sha256": _sha256(model),
                  "inputs": [asdict(s) for s in ctx.source.inputs]},
        "target": {"name": profile.name, "profile": str(ctx.target.path), "device": asdict(profile.device),
                   "precision": ctx.qconfig.precision, "quantize": asdict(ctx.qconfig)},
        "host": runner.host_info(),
        "data": {"origin": ctx.evalset.origin, "samples": len(ctx.evalset.samples),
                 "labelled": ctx.evalset.labels is not None, "note": ctx.evalset.note},
        "calibration": None if ctx.calib is None else {"origin": ctx.calib.origin, "samples": len(ctx.calib.samples),
                                                       "uncalibrated": ctx.calib.uncalibrated},
        "warnings": warnings(ctx),
        "recipe": ctx.recipe.to_json(),
        "passes": [{"name": p.NAME, "stage": p.STAGE, "description": p.DESCRIPTION, "applies": p.NAME in ctx.passes or
                    (p.STAGE == "artifact" and p.applies(ctx.recipe, ctx.source))} for p in passes.all_passes()],
    }
    header["source_accuracy"] = ctx.source_accuracy
    return header


def warnings(ctx: Context) -> list[str]:
    device, host = ctx.target.profile.device, runner.host_info()
    notes = list(ctx.load_notes)
    if device.timed_on_host() and not device.host_is_device(host["machine"]):
        notes.append(f"latency was measured on this {host['machine']} host, not on the target device "
                     f"({device.description or device.arch}); it is not the device's latency")
    notes += [line for line in [ctx.host_threads_note()] if line]
    notes += probes.warnings(ctx)
    notes += unused_quantization_flags(ctx)
    if ctx.calib is not None and ctx.calib.uncalibrated:
        notes.append("UNCALIBRATED: quantization ranges come from random inputs (--calib random); "
                     "accuracy figures say nothing about real data")
    return notes


def unused_quantization_flags(ctx: Context) -> list[str]:
    """Flags that only shape a quantized build, given for a target that builds fp32 only: said, not ignored."""
    if ctx.recipe["quantize"].precision != "fp32":
        return []
    unused = [passes.flag_name(field) for p in passes.all_passes() if p.NAME in ("quantize", "mixed")
              for field in passes.given(passes.flags_from(p, ctx.options)) if field != "precision"]
    why = "--precision fp32" if ctx.options.precision == "fp32" else f"target {ctx.target.name}"
    return [f"{', '.join(unused)}: no effect, {why} builds fp32 only; choose an int8 target "
            "(e.g. --target cpu-int8) or --precision int8"] if unused else []


def estimate(ctx: Context, artifacts: list[dict]) -> dict | None:
    """Latency and memory on the profile's device model, for devices that are not here."""
    from . import costmodel
    from .backends import onnx as onnx_backend
    device = ctx.target.profile.device
    if not costmodel.has_device_model(device):
        return None
    target = next((a for a in artifacts if a["role"] == "target" and a["status"] == "ok"), None)
    try:
        float_path = onnx_backend.float_model(ctx.source)[0]
    except ConversionError as exc:
        return {"error": f"no estimate: {exc}", "how": costmodel.HOW}
    threads, _, _ = ctx.bench_settings()
    return costmodel.for_model(float_path, device, ctx.qconfig.precision, threads,
                               target["size"]["bytes"] if target else None)


def slower_than_fp32(artifacts: list[dict]) -> list[str]:
    """Quantized artifacts that run slower than their fp32 baseline here (users should know before
    shipping), and latencies too unsteady to compare (no ratio sentence is built on those)."""
    notes = []
    for a in artifacts:
        ratio = a.get("vs_fp32") or {}
        if ratio.get("latency_unstable"):
            notes.append(f"{a['format']}: latency too unsteady on this host to compare {a['precision']} with fp32 "
                         f"(dispersion above {timing.UNSTABLE_CV:.0%} CV or {timing.UNSTABLE_SPREAD:.0%} spread "
                         f"across processes); rerun on a quieter machine")
        elif ratio.get("latency") and min(ratio.get("latency_range") or [ratio["latency"]]) > 1.0:
            notes.append(f"{a['format']} {a['precision']} runs {ratio['latency']:.2f}x the fp32 latency on this "
                         f"host; the fp32 artifact is faster here{_outside_int8(a)}")
    return notes


def _outside_int8(artifact: dict) -> str:
    """Which ops of a quantized artifact miss the runtime's int8 path and why (the backend's op summary), and
    where the per-op view is."""
    ops = artifact.get("ops") or {}
    where = f"; per-op time: edgekit bench {artifact.get('file', 'ARTIFACT')} --ops"
    outside = ops.get("outside_int8") or {}
    if not outside:
        return where
    counts = ", ".join(f"{kind} x{n}" for kind, n in sorted(outside.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"; outside the int8 path: {counts} ({ops.get('outside_int8_why', 'no int8 kernel')}){where}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(f.read_bytes())
    return digest.hexdigest()
