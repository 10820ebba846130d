"""`edgekit explain`: the first op where a quantized artifact diverges from its float model.

Resolves a convert output directory (its report.json: every quantized artifact and its fp32 baseline) or one
artifact file (its fp32 twin in `fp32/` beside it, or --reference) to jobs, picks the samples (--data, else
the data convert scored on when that file is still there, else generated and labelled so), and runs
`divergence.summary` on each in an isolated child (a runtime that aborts fails that artifact, in one line).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import backends, data, divergence, isolate
from .errors import ConversionError, EdgekitError
from .sources import TensorSpec, make_inputs

SCHEMA = "edgekit.explain/1"
DEFAULT_SAMPLES = 8
MISMATCH_SAMPLES = 4  # evaluation samples convert runs tensor by tensor for an artifact that missed its gate


@dataclass
class Job:
    artifact: Path
    fmt: str            # a divergence tap: tflite, onnx, openvino, fpga
    reference: Path
    precision: str
    spec: object = None  # AcceleratorSpec for fpga
    data_origin: str | None = None  # the data convert scored on, from report.json


def explain(path: Path, data_path: Path | None = None, samples: int = DEFAULT_SAMPLES, reference: Path | None = None,
            precision: str | None = None, target: str | None = None, formats: tuple[str, ...] = (),
            progress: Callable[[str], None] = lambda _: None) -> dict:
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path} not found", "give a convert output directory or a quantized artifact file")
    jobs = _from_outdir(path) if path.is_dir() else [_from_artifact(path, reference, precision, target)]
    if formats:
        jobs = [j for j in jobs if j.fmt in formats or (j.fmt == "fpga" and "tflite" in formats)]
    if not jobs:
        raise EdgekitError(f"{path} holds no quantized artifact to explain"
                           f"{' in ' + ', '.join(formats) if formats else ''}",
                           "convert with an int8 target (e.g. --target cpu-int8) first")
    results = []
    for job in jobs:
        progress(f"{job.fmt}: running {job.artifact.name} and {job.reference.name} tensor by tensor")
        results.append(_explain_one(job, data_path, samples, progress))
    return {"schema": SCHEMA, "path": str(path), "artifacts": results}


def mismatch(ctx, fmt: str, artifact: Path, reference: Path, precision: str) -> dict:
    """For convert, on a quantized artifact that missed its fidelity gate: its `reason` names the first op
    below the SNR gate; `divergence` keeps that op and the worst ones."""
    from .measure import judged_as
    if fmt not in divergence.FORMATS:
        return {}
    profile = ctx.target.profile
    fpga = profile.device.kind == "fpga" and fmt == "tflite"
    ctx.progress(f"{fmt} {precision}: MISMATCH; running it tensor by tensor against fp32")
    try:
        found = isolate.run("edgekit.divergence:summary", artifact, "fpga" if fpga else fmt, reference,
                            ctx.evalset.samples[:MISMATCH_SAMPLES], judged_as(precision, ctx.source.reference_precision),
                            profile.accelerator if fpga else None, step=f"{fmt} tensor-by-tensor run")
    except (ConversionError, EdgekitError) as exc:  # that artifact only; a MISMATCH stays a MISMATCH
        return {"reason": f"the op that diverges first was not found: {exc}"}
    keep = ("first_divergent", "worst", "gate_db", "samples", "mapped", "how")
    return {"reason": divergence.reason(found), "divergence": {k: found[k] for k in keep}}


def _explain_one(job: Job, data_path: Path | None, count: int, progress) -> dict:
    inputs, origin = _samples(job, data_path, count)
    entry = {"file": str(job.artifact), "reference_file": str(job.reference), "samples_origin": origin}
    try:
        entry.update(isolate.run("edgekit.divergence:summary", job.artifact, job.fmt, job.reference, inputs,
                                 job.precision, job.spec, step=f"{job.fmt} tensor-by-tensor run", progress=progress))
    except (ConversionError, EdgekitError) as exc:  # that artifact only; a MISMATCH stays a MISMATCH
        entry.update(format=job.fmt, precision=job.precision, error=str(exc))
    return entry


def _from_outdir(path: Path) -> list[Job]:
    if (path / "summary.json").is_file() and not (path / "report.json").is_file():
        return [job for sub in sorted(p for p in path.iterdir() if (p / "report.json").is_file())
                for job in _from_outdir(sub)]
    report = _read_report(path / "report.json")
    artifacts = report.get("artifacts") or []
    baselines = {a["format"]: a for a in artifacts if a.get("role") == "baseline" and a.get("status") == "ok"}
    device = (report.get("target") or {}).get("device") or {}
    jobs = []
    for a in artifacts:
        if a.get("role") != "target" or a.get("precision") == "fp32" or a.get("status") != "ok":
            continue
        if a["format"] not in baselines:
            continue
        fpga = device.get("kind") == "fpga" and a["format"] == "tflite"
        jobs.append(Job(path / a["file"], "fpga" if fpga else a["format"], path / baselines[a["format"]]["file"],
                        a["precision"], _accelerator(report) if fpga else None,
                        (report.get("data") or {}).get("origin")))
    return jobs


def _read_report(path: Path) -> dict:
    if not path.is_file():
        raise EdgekitError(f"{path.parent} is not an edgekit convert output (no report.json)",
                           "give the --out directory of `edgekit convert`, or an artifact file")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise EdgekitError(f"{path} is not valid JSON", "re-run edgekit convert to rewrite it") from None


def _accelerator(report: dict):
    from .targets import get_target, load_profile
    target = report.get("target") or {}
    profile = Path(target.get("profile") or "")
    found = load_profile(profile) if profile.is_file() else get_target(target.get("name", ""))
    return found.profile.accelerator


def _from_artifact(path: Path, reference: Path | None, precision: str | None, target: str | None) -> Job:
    backend = backends.for_artifact(path)
    reference = Path(reference) if reference else path.parent / "fp32" / path.name
    if not reference.is_file():
        raise EdgekitError(f"no float model to compare {path.name} with ({reference} not found)",
                           "pass --reference FP32_ARTIFACT (the same model in float, same format)")
    if backends.for_artifact(reference).FORMAT != backend.FORMAT:
        raise EdgekitError(f"--reference {reference.name} is not a {backend.FORMAT} model like {path.name}",
                           f"give the float {backend.FORMAT} artifact")
    report = path.parent / "report.json"
    known = _read_report(report) if report.is_file() else {}
    precision = precision or (known.get("target") or {}).get("precision") or "int8"
    fmt, spec = backend.FORMAT, None
    if target:
        from .targets import get_target
        profile = get_target(target).profile
        if profile.device.kind == "fpga" and fmt == "tflite":
            fmt, spec = "fpga", profile.accelerator
    return Job(path, fmt, reference, precision, spec, (known.get("data") or {}).get("origin"))


def _samples(job: Job, data_path: Path | None, count: int) -> tuple[list[list[np.ndarray]], str]:
    """(samples, where they come from): --data, else convert's --data file when still there, else generated."""
    specs = _input_specs(job.reference)
    for candidate, origin in ((data_path, "--data"), (_existing(job.data_origin), "the data convert scored on")):
        if candidate is None:
            continue
        samples, _ = data.load_npz_inputs(Path(candidate), specs, "evaluation")
        return samples[:count], f"{len(samples[:count])} samples of {candidate} ({origin})"
    kind = "uniform [0, 1) samples" if all(np.issubdtype(np.dtype(s.dtype), np.floating) for s in specs) else \
        "samples (uniform [0, 1) floats; integers 0-9 for integer inputs)"
    return make_inputs(specs, count, seed=0), (
        f"{count} generated {kind} (no --data): int8 ranges were calibrated on other data, "
        "so a verdict on noise says little; pass --data")


def _existing(origin: str | None) -> Path | None:
    path = Path(origin) if origin else None
    return path if path is not None and path.suffix in (".npz", ".npy") and path.is_file() else None


def _input_specs(reference: Path) -> list[TensorSpec]:
    session = backends.for_artifact(reference).Session(reference)
    return [TensorSpec(name, tuple(max(int(d), 1) for d in shape), dtype) for name, shape, dtype in session.inputs]
