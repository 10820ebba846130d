"""convert(): load the input, build every artifact of the target, verify and measure each.

    source = sources.load()  ->  for each format: backend.export() -> runner (subprocess)
           -> measure.fidelity/accuracy/size  ->  report.json / report.md

Everything is written into a staging directory beside the output and renamed into place
at the end, so a failed or interrupted run leaves no half-written output.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, backends, measure, report, runner, sources, targets
from .errors import ConversionError, EdgekitError
from .schema import option

REPORT_SCHEMA = "edgekit.report/1"
RUNNER_TIMEOUT_S = 900


@dataclass
class ConvertOptions:
    target: str = option("cpu", "Target profile name (see `edgekit targets`).")
    out: Path | None = option(None, "Output directory; default ./edgekit-out/<model>-<target>/.")
    data: Path | None = option(None, "Evaluation .npz with `x` (inputs) and optional `y` (labels).")
    input_shape: list[str] = option([], "Input shape that fixes dynamic dims: '1,224,224,3' or 'name:1,3,32,32'.")
    force: bool = option(False, "Replace an existing output directory.")
    trust_model: bool = option(False, "Allow Keras models that need unsafe deserialisation (Lambda with Python code).")
    formats: list[str] = option([], "Artifact formats to build instead of the profile's list.")
    threads: int | None = option(None, "Inference threads for latency, instead of the profile's.")
    runs: int | None = option(None, "Timed runs, instead of the profile's.")
    warmup: int | None = option(None, "Warm-up runs, instead of the profile's.")
    targets_dirs: list[str] = option([], "Extra directories searched for target profiles.")
    seed: int = option(0, "Seed for generated inputs when no --data is given.")


@dataclass
class EvalSet:
    samples: list[list[np.ndarray]]
    labels: np.ndarray | None
    origin: str


@dataclass
class Context:
    source: sources.Source
    target: targets.Target
    options: ConvertOptions
    stage: Path
    workdir: Path
    evalset: EvalSet
    reference: list[list[np.ndarray]]
    progress: Callable[[str], None] = field(default=lambda msg: None)


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))


def default_model() -> tuple[Path, Path]:
    from . import zoo
    return zoo.default_model(cache_dir())


def convert(model: str | Path | None = None, progress: Callable[[str], None] | None = None, **kwargs) -> dict:
    """Build and measure every artifact of a target. Returns the report (also written as JSON)."""
    options = ConvertOptions(**kwargs)
    progress = progress or (lambda msg: None)
    target = targets.get_target(options.target, tuple(options.targets_dirs))
    name = None
    if model is None:
        progress("preparing the default model (digits CNN, trained once and cached)")
        model, default_data = default_model()
        options.data = options.data or default_data
        name = "digits_cnn"
    model = Path(model)
    sources.detect_kind(model)  # fail fast on a missing or unknown file, before any heavy import
    out = Path(options.out or Path("edgekit-out") / f"{name or model.stem}-{target.name}")
    if out.exists() and not options.force:
        raise EdgekitError(f"output directory {out} already exists", "pass --force to replace it, or choose --out")
    with _staging(out) as stage, tempfile.TemporaryDirectory(prefix="edgekit-") as work:
        ctx = _prepare(model, name, target, options, stage, Path(work), progress)
        result = _report_header(ctx, model)
        result["artifacts"] = [_build_artifact(ctx, fmt) for fmt in _formats(ctx)]
        report.write(stage, result)
        _replace(stage, out)
    result["out_dir"] = str(out)
    return result


def _prepare(model: Path, name: str | None, target, options: ConvertOptions, stage: Path, work: Path, progress) -> Context:
    build = target.profile.build
    opts = sources.LoadOptions(workdir=work, batch=build.batch, trust_model=options.trust_model,
                               input_shapes=parse_input_shapes(options.input_shape, build.input_shape))
    progress(f"loading {model}")
    source = sources.load(model, opts)
    source.name = name or source.name
    evalset = load_evalset(options.data, source.inputs, target.profile.bench.eval_samples, options.seed)
    progress(f"running the source model on {len(evalset.samples)} samples")
    reference = source.predict(evalset.samples)
    _check_finite(reference, "the source model's outputs")
    return Context(source, target, options, stage, work, evalset, reference, progress)


def _formats(ctx: Context) -> list[str]:
    formats = ctx.options.formats or ctx.target.profile.build.formats
    for fmt in formats:
        backends.get(fmt)  # unknown names fail before any work
    return list(dict.fromkeys(formats))


def parse_input_shapes(flags: list[str], profile_shape: list[int]) -> dict:
    shapes: dict[str | None, tuple[int, ...]] = {None: tuple(profile_shape)} if profile_shape else {}
    for flag in flags:
        name, _, dims = flag.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            raise EdgekitError(f"--input-shape '{flag}' is not a list of integers", "write it like 1,224,224,3") from None
        if any(d < 1 for d in shape):
            raise EdgekitError(f"--input-shape '{flag}' has a dimension below 1", "use positive sizes")
        shapes[name or None] = shape
    return shapes


def load_evalset(path: Path | None, specs: list[sources.TensorSpec], limit: int, seed: int) -> EvalSet:
    if path is None:
        return EvalSet(sources.make_inputs(specs, min(limit, 32), seed), None, f"random inputs (seed {seed})")
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"data file not found: {path}", "give an .npz with arrays x (and y)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise EdgekitError(f"{path} is not a readable .npz ({exc})", "save it with numpy.savez(path, x=..., y=...)") from None
    keys = ["x"] if len(specs) == 1 else [s.name for s in specs]
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise EdgekitError(f"{path} has no array named {missing[0]!r} (has: {', '.join(arrays) or 'none'})",
                           "save inputs as x (one input) or under each input's name")
    columns = [_split_batches(arrays[k], s, path) for k, s in zip(keys, specs)]
    count = min(len(columns[0]), limit)
    samples = [[c[i] for c in columns] for i in range(count)]
    labels = arrays.get("y")
    if labels is not None:
        batch = specs[0].shape[0]
        if len(labels) < count * batch:
            raise EdgekitError(f"{path}: y has {len(labels)} labels for {count * batch} inputs", "give one label per input")
        labels = np.asarray(labels)[: count * batch: batch]
    return EvalSet(samples, labels, str(path))


def _split_batches(x: np.ndarray, spec: sources.TensorSpec, path: Path) -> list[np.ndarray]:
    per_sample = spec.shape[1:]
    if tuple(x.shape[1:]) != tuple(per_sample):
        raise EdgekitError(f"{path}: x has shape {x.shape} but input '{spec.name}' takes (N, {', '.join(map(str, per_sample))})",
                           "reshape the data to the model's input layout")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise EdgekitError(f"{path}: x contains NaN or infinite values", "clean the data before converting")
    batch = spec.shape[0]
    x = x.astype(spec.dtype, copy=False)
    return [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)]


def _check_finite(outputs: list[list[np.ndarray]], what: str) -> None:
    if any(not np.all(np.isfinite(o)) for s in outputs for o in s if np.issubdtype(o.dtype, np.floating)):
        raise EdgekitError(f"{what} contain NaN or infinite values", "check the model's weights and the input range")


def _report_header(ctx: Context, model: Path) -> dict:
    profile = ctx.target.profile
    header = {
        "schema": REPORT_SCHEMA,
        "edgekit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(model), "name": ctx.source.name, "kind": ctx.source.kind, "sha256": _sha256(model),
                  "inputs": [asdict(s) for s in ctx.source.inputs]},
        "target": {"name": profile.name, "profile": str(ctx.target.path), "device": asdict(profile.device),
                   "precision": profile.build.precision},
        "host": runner.host_info(),
        "data": {"origin": ctx.evalset.origin, "samples": len(ctx.evalset.samples),
                 "labelled": ctx.evalset.labels is not None},
        "source_accuracy": None,
    }
    if ctx.evalset.labels is not None:
        header["source_accuracy"] = measure.accuracy(ctx.reference, ctx.evalset.labels)
    return header


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def _build_artifact(ctx: Context, fmt: str) -> dict:
    backend = backends.get(fmt)
    precision = ctx.target.profile.build.precision
    entry = {"format": fmt, "precision": precision, "file": f"model{backend.SUFFIX}", "status": "ok", "notes": []}
    artifact = ctx.stage / entry["file"]
    try:
        if ctx.source.kind not in backend.SOURCES:
            raise ConversionError(f"no converter from a {ctx.source.kind} model to {fmt}")
        ctx.progress(f"{fmt}: exporting")
        started = time.perf_counter()
        entry["notes"] = backend.export(ctx.source, artifact, ctx)
        entry["export_seconds"] = round(time.perf_counter() - started, 2)
        ctx.progress(f"{fmt}: verifying and benchmarking")
        entry.update(_measure(ctx, backend, artifact))
    except (ConversionError, EdgekitError) as exc:
        for f in backend.files(artifact):
            f.unlink(missing_ok=True)
        entry.update(status="failed", reason=str(exc))
        ctx.progress(f"{fmt}: failed: {exc}")
    return entry


def _measure(ctx: Context, backend, artifact: Path) -> dict:
    bench = ctx.target.profile.bench
    opts = ctx.options
    run_dir = ctx.workdir / f"run-{backend.FORMAT}"
    run_dir.mkdir(exist_ok=True)
    runner.save_stacked(run_dir / "in.npz", "in", ctx.evalset.samples)
    cmd = [sys.executable, "-m", "edgekit.runner", str(artifact),
           "--threads", str(opts.threads or bench.threads), "--warmup", str(bench.warmup if opts.warmup is None else opts.warmup),
           "--runs", str(opts.runs or bench.runs), "--inputs", str(run_dir / "in.npz"),
           "--outputs", str(run_dir / "out.npz"), "--json", str(run_dir / "result.json")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUNNER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"the {backend.RUNTIME} runner timed out after {RUNNER_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise ConversionError(f"{backend.RUNTIME} could not run the artifact: {(lines or ['no output'])[-1][:300]}")
    result = json.loads((run_dir / "result.json").read_text())
    with np.load(run_dir / "out.npz") as npz:
        columns = [npz[f"out{i}"] for i in range(len(npz.files))]
    outputs = [[c[n] for c in columns] for n in range(len(columns[0]))]
    try:
        _check_finite(outputs, "the artifact's outputs")
    except EdgekitError as exc:
        raise ConversionError(exc.problem) from None
    try:
        figures = {"fidelity": measure.fidelity(ctx.reference, outputs, ctx.target.profile.build.precision)}
    except ValueError as exc:
        raise ConversionError(f"artifact outputs do not match the source model: {exc}") from None
    where = f"{measure.MEASURED} ({result['host']['cpu']}, {result['host']['machine']})"
    figures["size"] = measure.size(backend.files(artifact))
    figures["latency_ms"] = {**result["latency_ms"], "threads": result["threads"], "warmup": result["warmup"],
                             "runs": result["runs"], "how": where}
    figures["memory"] = {**result["memory"], "how": where}
    figures["runtime"] = result["runtime"]
    if ctx.evalset.labels is not None:
        acc = measure.accuracy(outputs, ctx.evalset.labels)
        source_acc = measure.accuracy(ctx.reference, ctx.evalset.labels)
        figures["accuracy"] = {"value": acc, "delta": acc - source_acc, "samples": len(outputs), "how": measure.MEASURED}
    return figures


@contextmanager
def _staging(out: Path):
    created_parent = not out.parent.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output should not be
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created_parent and not any(out.parent.iterdir()):
            out.parent.rmdir()


def _replace(stage: Path, out: Path) -> None:
    """Swap the finished staging directory into place (the old output only goes once the new is complete)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)
