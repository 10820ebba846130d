"""convert(): load the input, build every artifact of the target, verify and measure each.

    source = sources.load()  ->  for each format: backend.export() [-> artifact passes: quantize, pow2]
           -> runner (subprocess) -> measure.fidelity/accuracy/size  ->  report.json / report.md

For a quantized precision each format also gets its fp32 baseline (in `fp32/`), so the
report can give size and latency ratios against it. Everything is written into a staging
directory beside the output and renamed into place at the end, so a failed or interrupted
run leaves no half-written output.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import (backends, bounds, convert_report, data, explain, layers, measure, native, opreport, output, probes,
               recommend, report, runner, sources, targets, timing)
from .context import Context, cache_dir
from .options import ConvertOptions
from .errors import ConversionError, EdgekitError
from . import passes
from .passes import mixed, quantize
from .recipe import Recipe


def default_model() -> dict[str, Path]:
    """The bundled digits CNN (trained once, cached): paths of `model`, `eval` and `train` data."""
    from . import zoo
    return zoo.trained_reference("digits-cnn", cache_dir())


def convert(model: str | Path | None = None, progress: Callable[[str], None] | None = None, **kwargs) -> dict:
    """Build and measure every artifact of a target. Returns the report (also written as JSON)."""
    options = ConvertOptions.make(**kwargs)
    progress = progress or (lambda msg: None)
    target = targets.get_target(options.target, tuple(options.targets_dirs))
    check_bounds(options, target)
    model, name = _resolve_model(model, options, progress)
    out = Path(options.out or Path("edgekit-out") / f"{name}-{target.name}")
    replacing = output.check(out, _inputs(model, options), options.force) == "replace"
    with output.staging(out) as stage, output.tempdir() as work:
        ctx = prepare(model, name, target, options, work, progress)
        ctx.stage = stage
        result = convert_report.header(ctx, model)
        result["artifacts"] = [a for fmt in _formats(ctx) for a in _build_format(ctx, fmt)]
        layers.refuse_unknown(result["artifacts"], model.name)
        result["warnings"] += convert_report.slower_than_fp32(result["artifacts"])
        result["recommended"] = recommend.choose(result["artifacts"], target.profile.build.max_accuracy_drop,
                                                 _formats(ctx))
        if len(ctx.stages) > 1:
            stages = _stage_figures(ctx, result["artifacts"])
            for name, info in ctx.passes.items():
                result[passes.report_key(name)] = {**info, "stages": stages}
        result["estimate"] = convert_report.estimate(ctx, result["artifacts"])
        if options.sensitivity:
            result["sensitivity"] = layer_sensitivity(ctx)
        if replacing:
            _keep_previous_unless_built(result["artifacts"], out)
        report.write(stage, result)
        (stage / "recipe.json").write_text(json.dumps(result["recipe"], indent=2) + "\n")
        output.commit(stage, out, "convert")
    result["out_dir"] = str(out)
    return result


def check_bounds(options: ConvertOptions, target) -> None:
    """The numbers of a run (flags or API arguments) within bounds.RANGES; threads against this host."""
    for field, path in (("runs", "bench.runs"), ("warmup", "bench.warmup"), ("threads", "bench.threads"),
                        ("calib_samples", "quantize.calib_samples"), ("finetune_epochs", "prune.finetune_epochs"),
                        ("mixed_rounds", "mixed.rounds")):
        value = getattr(options, field, None)
        why = None if value is None else bounds.out_of_range(path, value)
        if why:
            raise EdgekitError(f"--{field.replace('_', '-')}: {why}", "see `edgekit convert --help`")
    bounds.check_threads(options.threads or bounds.host_threads(target.profile.bench.threads),
                         options.threads_unbounded)


def _inputs(model: Path, options: ConvertOptions) -> list[Path]:
    """Every file the user gave us to read: --out may never be, or contain, one of them."""
    paths = [model, options.data, options.train_data]
    if options.calib and options.calib != "random":
        paths.append(Path(options.calib))
    return [Path(p) for p in paths if p]


def _keep_previous_unless_built(artifacts: list[dict], out: Path) -> None:
    """A --force run that built nothing does not replace the previous output."""
    if not any(a["status"] == "ok" for a in artifacts):
        reasons = "; ".join(f"{a['format']} {a['precision']}: {a.get('reason', '')}" for a in artifacts)
        raise EdgekitError(f"no artifact could be built ({reasons[:300]})", f"the previous output in {out} was kept")


def layer_sensitivity(ctx: Context) -> list[dict]:
    from .passes import sensitivity
    if ctx.calib is None:
        raise EdgekitError("layer sensitivity needs calibration data", "pass --data or --calib (or use an int8 target)")
    ctx.progress("per-layer sensitivity: quantizing one layer at a time")
    try:
        return sensitivity.analyze(ctx.source, ctx.evalset.samples, ctx.calib)
    except ConversionError as exc:
        raise EdgekitError(f"analysis reads the ONNX form of the model: {exc}", "check `edgekit convert "
                           "--format onnx` works on this model") from None


def _resolve_model(model, options: ConvertOptions, progress) -> tuple[Path, str]:
    """The model path and its short name; no model means the bundled default and its eval data."""
    if model is None:
        progress("preparing the default model (digits CNN, trained once and cached)")
        paths = default_model()
        options.data = options.data or paths["eval"]
        options.train_data = options.train_data or paths["train"]
        return paths["model"], "digits_cnn"
    model = Path(model)
    sources.detect_kind(model)  # fail fast on a missing or unknown file, before any heavy import
    return model, model.stem


def resolve_recipe(profile, options: ConvertOptions) -> Recipe:
    """Every pass's settings, once: a --recipe file as written, else the profile with the flags on top."""
    if options.recipe is None:
        return Recipe.resolve(profile, options)
    given = [passes.base.flag_name(f) for p in passes.all_passes() for f in passes.given(passes.flags_from(p, options))]
    if given:
        raise EdgekitError(f"--recipe replays every pass's settings, and {given[0]} was given too",
                           "drop the pass flags, or edit the recipe")
    if isinstance(options.recipe, dict):
        return Recipe.from_json(options.recipe)
    return Recipe.load(Path(options.recipe))


def prepare(model: Path, name: str, target, options: ConvertOptions, work: Path, progress) -> Context:
    """Load the source, the evaluation data and the calibration set; run the source passes; run the last
    model for reference outputs."""
    profile = target.profile
    recipe = resolve_recipe(profile, options)
    opts = sources.LoadOptions(workdir=work, batch=profile.build.batch, trust_model=options.trust_model,
                               input_shapes=parse_input_shapes(options.input_shape, profile.build.input_shape),
                               data_shapes=data.sample_shapes(options.data) or data.sample_shapes(options.calib),
                               data_origin="--data" if data.sample_shapes(options.data) else "--calib")
    progress(f"loading {model}")
    source = sources.load(model, opts)
    source.name = name
    source_passes = recipe.applied("source", source)
    needs = {p.needs_training(config) for p, config in source_passes if p.needs_training} - {None}
    held = recipe["quantize"].calib_samples if recipe["quantize"].precision in quantize.CALIBRATED and \
        not options.calib else 0
    evalset = data.load_evalset(options.data, source.inputs, options.seed, held=held,  # only the rows used
                                scored=None if needs else profile.bench.eval_samples)
    evalset, calib = _calibration(evalset, source, profile, options, recipe["quantize"])
    train = None
    if needs:
        evalset, train = _training_data(options, evalset, source, need_labels="labelled" in needs)
    evalset = data.take(evalset, profile.bench.eval_samples)
    ctx = Context(source, target, options, recipe, None, work, evalset, calib, [], progress,
                  stages=[("original", source)], load_opts=opts, train=train)
    for module, config in source_passes:
        stages, ctx.passes[module.NAME] = module.run(ctx, config, ctx.stages[-1][1])
        if stages and stages[0][1] is ctx.stages[-1][1]:  # the pass names the model it started from
            ctx.stages[-1] = stages.pop(0)
        ctx.stages += stages
    ctx.source = ctx.stages[-1][1]
    progress(f"running the source model on {len(evalset.samples)} samples")
    ctx.reference = ctx.source.predict(evalset.samples)
    _check_finite(ctx.reference, "the source model's outputs")
    data.check_classes(evalset.labels, _classes(ctx.reference), evalset.origin)
    ctx.load_notes = opts.notes
    if evalset.labels is not None:
        original = source.predict(evalset.samples) if len(ctx.stages) > 1 else ctx.reference
        ctx.source_accuracy = measure.accuracy(original, evalset.labels)
    return ctx


def _training_data(options: ConvertOptions, evalset: data.EvalSet, source,
                   need_labels: bool = True) -> tuple[data.EvalSet, tuple]:
    """(samples, labels or None, origin) for training: --train-data, else a held-apart half of --data (never scored)."""
    if options.train_data:
        samples, arrays = data.load_npz_inputs(Path(options.train_data), source.inputs, "training")
        if "y" not in arrays and need_labels:
            raise EdgekitError(f"{options.train_data} has no labels (y)", "save it with numpy.savez(path, x=..., y=...)")
        labels = data.labels_for(arrays["y"], len(samples), source.inputs[0].shape[0], options.train_data) \
            if "y" in arrays else None
        return evalset, (samples, labels, str(options.train_data))
    if evalset.labels is None and need_labels:
        raise EdgekitError("fine-tuning needs labelled data", "pass --train-data train.npz or --data with y")
    if options.data is None:
        raise EdgekitError("distillation needs training inputs", "pass --train-data train.npz (x, and y if labelled) "
                                                               "or --data (half of it is held apart for training)")
    half = len(evalset.samples) // 2
    if half < 2:
        raise EdgekitError(f"--data has {len(evalset.samples)} sample(s) left: too few to hold half apart for training",
                           "give more data, or a separate --train-data")
    labels = evalset.labels
    rest = dataclasses.replace(evalset, samples=evalset.samples[half:],
                               labels=labels[half:] if labels is not None else None)
    return rest, (evalset.samples[:half], labels[:half] if labels is not None else None,
                  f"first {half} samples of {evalset.origin}, held apart from scoring")


def _calibration(evalset: data.EvalSet, source, profile, options: ConvertOptions, qconfig):
    """The one calibration set every backend of this target is quantized from."""
    if qconfig.precision not in quantize.CALIBRATED:
        if options.calib:
            raise EdgekitError(f"--calib was given but precision {qconfig.precision} is not calibrated",
                               "use --precision int8, int8-io or int16x8, or drop --calib")
        return evalset, None
    if options.calib:
        preprocess = profile.preprocess if options.calib_scale is None else \
            dataclasses.replace(profile.preprocess, scale=options.calib_scale)
        calib = data.load_calibration(options.calib, source.inputs, qconfig.calib_samples, preprocess, options.seed)
        data.check_range(calib, evalset)
        return evalset, calib
    if options.data is None:
        raise EdgekitError(f"precision {qconfig.precision} needs calibration data and none was given",
                           "pass --calib data.npz, --data val.npz (a slice is held apart), or --calib random "
                           "(uncalibrated, for plumbing only)")
    return data.hold_out(evalset, qconfig.calib_samples)


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


def _classes(outputs: list[list[np.ndarray]]) -> int:
    """How many classes top-1 chooses from: the size of the first output of one sample."""
    return int(np.size(outputs[0][0])) if outputs and outputs[0] else 0


def _check_finite(outputs: list[list[np.ndarray]], what: str) -> None:
    if any(not np.all(np.isfinite(o)) for s in outputs for o in s if np.issubdtype(o.dtype, np.floating)):
        raise EdgekitError(f"{what} contain NaN or infinite values", "check the model's weights and the input range")


def _stage_figures(ctx: Context, artifacts: list[dict]) -> list[dict]:
    """Params, MACs, size, latency and accuracy of the float model at each stage, then the target artifact."""
    from . import analysis
    from .backends import onnx as onnx_backend
    fmt = _formats(ctx)[0]
    backend = backends.get(fmt)
    rows = []
    for i, (name, source) in enumerate(ctx.stages):
        ctx.progress(f"measuring stage: {name}")
        row = {"stage": name, "format": f"{fmt} fp32", **analysis.totals(analysis.layer_stats(
            onnx_backend.float_model(source)[0]))}
        path = ctx.workdir / f"stage-{i}" / f"model{backend.SUFFIX}"
        path.parent.mkdir()
        backend.export(source, path, ctx)
        _, outputs, _ = _run(ctx, backend, path)
        _, warmup, runs = ctx.bench_settings()
        latency = timing.measure([path], timing.one_sample(ctx.evalset.samples, ctx.workdir), threads=ctx.host_threads(),
                                 warmup=warmup, runs=runs, processes=ctx.timing_processes())[0]
        row.update(size=measure.size(backend.files(path)), latency_ms=latency.get("latency_ms", {}).get("median"),
                   accuracy=measure.accuracy(outputs, ctx.evalset.labels) if ctx.evalset.labels is not None else None)
        rows.append(row)
    final = next((a for a in artifacts if a["format"] == fmt and a["role"] == "target" and a["status"] == "ok"), None)
    if final and final["precision"] != "fp32":
        rows.append({"stage": f"{rows[-1]['stage']} + {final['precision']}", "format": f"{fmt} {final['precision']}",
                     **{k: rows[-1][k] for k in ("params", "macs")}, "size": final["size"],
                     "latency_ms": final["latency_ms"].get("median"),
                     "accuracy": final.get("accuracy", {}).get("value")})
    return rows


def _build_format(ctx: Context, fmt: str) -> list[dict]:
    """The target's artifact for one format, preceded by its fp32 baseline when the target quantizes;
    then one timing phase for both, interleaved, so the ratio between them holds under load."""
    backend = backends.get(fmt)
    if ctx.qconfig.precision == "fp32":
        entries = [_artifact(ctx, backend, "fp32", ctx.stage, "target")]
    else:
        baseline = _artifact(ctx, backend, "fp32", ctx.stage / "fp32", "baseline")
        entries = [baseline, _artifact(ctx, backend, ctx.qconfig.precision, ctx.stage, "target", baseline)]
    entries += _native(ctx, backend, entries[0])
    plain = mixed.plain_entries(entries)  # --mixed auto's plain int8 build, timed with the others
    _time(ctx, backend, entries + plain)
    if ctx.options.ops:
        opreport.profile_entries(ctx, entries)
    baseline = entries[0]
    for other in entries[1:]:
        if baseline["status"] == other["status"] == "ok":
            other["vs_fp32"] = {"size": other["size"]["bytes"] / baseline["size"]["bytes"],
                                **_latency_ratio(other, baseline)}
    mixed.latency_cost(entries, plain, _latency_ratio)
    mixed.scored_fidelity(entries, plain, lambda p: _fidelity(ctx, ctx.stage / p["file"], p["precision"].split()[0]))
    native.against_native(entries, _latency_ratio)
    return entries


def _native(ctx: Context, backend, fp32: dict) -> list[dict]:
    """Rows for the precisions this host runs natively (bf16 on AVX512-BF16/AMX CPUs), from the fp32 artifact;
    the fp32 row says what it is pinned to, and why a precision the profile names got no row."""
    profile = ctx.target.profile
    build, notes = native.plan(backend.FORMAT, profile.build.native, profile.device, ctx.qconfig.precision)
    rows = [_artifact(ctx, backend, p, ctx.stage / p, "native", fp32) for p in build]  # with fp32's provenance notes
    if fp32["status"] == "ok":
        fp32["notes"] += [n for n in [native.fp32_note(backend.FORMAT)] if n] + notes
    return rows


def _latency_ratio(artifact: dict, baseline: dict) -> dict:
    ratio = timing.ratio(artifact["latency_ms"], baseline["latency_ms"])
    if ratio is None:
        return {"latency": None}
    return {"latency": ratio["value"], "latency_range": ratio["range"], "latency_unstable": ratio["unstable"]}


def _time(ctx: Context, backend, entries: list[dict]) -> None:
    """One timing phase on this host's CPU for the format's working artifacts, where the profile's device is
    timed here (not for GPU targets: a CPU figure is never reported as a GPU one; targets.HOST_TIMING)."""
    ok = [e for e in entries if e["status"] == "ok"]
    if not ok or not ctx.target.profile.device.timed_on_host():
        return
    _, warmup, runs = ctx.bench_settings()
    threads = ctx.host_threads()
    ctx.progress(f"{backend.FORMAT}: timing")
    figures = timing.measure([ctx.stage / e["file"] for e in ok], timing.one_sample(ctx.evalset.samples, ctx.workdir),
                             threads=threads, warmup=warmup, runs=runs, processes=ctx.timing_processes(),
                             progress=ctx.progress)
    for entry, result in zip(ok, figures):
        if "error" in result:
            _fail(entry, backend, ctx.stage / entry["file"], result["error"], ctx)
            continue
        where = f"{measure.MEASURED} ({result['host']['cpu']}, {result['host']['machine']})"
        entry["latency_ms"] = {**result["latency_ms"], "how": where}
        entry["memory"] = {**result["memory"], "how": where}


def _fail(entry: dict, backend, path: Path, reason: str, ctx: Context) -> None:
    for f in backend.files(path):
        f.unlink(missing_ok=True)
    entry.update(status="failed", reason=reason)
    ctx.progress(f"{backend.FORMAT} {entry['precision']}: failed: {reason}")


def _artifact(ctx: Context, backend, precision: str, directory: Path, role: str, baseline: dict | None = None) -> dict:
    directory.mkdir(exist_ok=True)
    path = directory / f"model{backend.SUFFIX}"
    entry = {"format": backend.FORMAT, "precision": precision, "role": role,
             "file": str(path.relative_to(ctx.stage)), "status": "ok", "notes": []}
    try:
        if ctx.source.kind not in backend.SOURCES:
            raise ConversionError(f"no converter from a {ctx.source.kind} model to {backend.FORMAT}")
        ctx.progress(f"{backend.FORMAT} {precision}: converting")
        started = time.perf_counter()
        if precision == "fp32":
            entry["notes"] = backend.export(ctx.source, path, ctx)
        elif role == "native":
            if baseline is None or baseline["status"] != "ok":
                raise ConversionError(f"the fp32 {backend.FORMAT} baseline failed, so there is nothing to build from")
            entry["notes"] = [*baseline["notes"], *native.build(backend.FORMAT, precision,
                                                                ctx.stage / baseline["file"], path)]
        if role == "target":
            _artifact_passes(ctx, backend, entry, path, baseline)
        entry["convert_seconds"] = round(time.perf_counter() - started, 2)
        ctx.progress(f"{backend.FORMAT} {precision}: verifying and benchmarking")
        entry.update(_measure(ctx, backend, path, precision))
        if precision != "fp32" and not entry["fidelity"]["verified"]:
            entry.update(explain.mismatch(ctx, backend.FORMAT, path, ctx.stage / baseline["file"], precision))
    except (ConversionError, EdgekitError) as exc:
        _fail(entry, backend, path, str(exc), ctx)
    except RuntimeError as exc:  # a native library (LiteRT, onnxruntime, OpenVINO, TF) refused this artifact only
        _fail(entry, backend, path, f"{type(exc).__name__} from a native library: {' '.join(str(exc).split())[:300]}", ctx)
    return entry


def _artifact_passes(ctx: Context, backend, entry: dict, path: Path, baseline: dict | None) -> None:
    """Every artifact pass of the recipe that works on this format, in order, on the target artifact."""
    if baseline is not None and baseline["status"] != "ok":
        raise ConversionError(f"the fp32 {backend.FORMAT} baseline failed, so there is nothing to quantize")
    before = ctx.stage / baseline["file"] if baseline is not None else None
    for module, config in ctx.recipe.applied("artifact", ctx.source):
        if not module.FORMATS or backend.FORMAT in module.FORMATS:
            figures = dict(module.run(ctx, config, backend, before, path))
            notes = figures.pop("notes", [])
            entry.update(figures)
            entry["notes"] = list(dict.fromkeys([*entry["notes"], *notes]))  # a rebuild repeats the build's own


def _measure(ctx: Context, backend, artifact: Path, precision: str) -> dict:
    result, outputs, run_dir = _run(ctx, backend, artifact)
    figures = {"fidelity": _judged(ctx, outputs, precision)}
    where = f"{measure.MEASURED} ({result['host']['cpu']}, {result['host']['machine']})"
    figures["size"] = measure.size(backend.files(artifact))
    figures["memory"] = {**result["memory"], "how": where}  # replaced by the timing phase's on the CPU
    figures["runtime"] = result["runtime"]
    if backend.op_summary:
        figures["ops"] = backend.op_summary(artifact)
    host = probes.HostRun(result, outputs, run_dir)
    for probe in probes.for_artifact(ctx, backend, precision):
        figures.update(probe.run(ctx, backend, artifact, host))
    if ctx.evalset.labels is not None:
        acc = measure.accuracy(outputs, ctx.evalset.labels)
        figures["accuracy"] = {"value": acc, "delta": acc - ctx.source_accuracy, "samples": len(outputs),
                               "how": measure.MEASURED}
    return figures


def _judged(ctx: Context, outputs: list[list[np.ndarray]], precision: str) -> dict:
    try:
        _check_finite(outputs, "the artifact's outputs")
        judged = measure.judged_as(precision, ctx.source.reference_precision)
        return measure.fidelity(ctx.reference, outputs, judged, ctx.options.outputs)
    except EdgekitError as exc:
        raise ConversionError(exc.problem) from None
    except ValueError as exc:
        raise ConversionError(f"artifact outputs do not match the source model: {exc}") from None


def _fidelity(ctx: Context, artifact: Path, precision: str) -> dict:
    """Only the verdict: the artifact run on every scored sample, judged at its precision's tolerance."""
    return _judged(ctx, _run(ctx, backends.for_artifact(artifact), artifact)[1], precision)


def _run(ctx: Context, backend, artifact: Path) -> tuple[dict, list[list[np.ndarray]], Path]:
    """Run the artifact on every evaluation sample in the light runner, in its own process (no timing
    here: that happens in the host's timing phase); returns its JSON, its outputs and the run directory
    (with `in.npz`, which probes reuse)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{backend.FORMAT}-", dir=ctx.workdir))
    runner.save_stacked(run_dir / "in.npz", "in", ctx.evalset.samples)
    result = runner.invoke(artifact, run_dir / "result.json", threads=ctx.host_threads(), warmup=0, runs=1,
                           inputs=run_dir / "in.npz", outputs=run_dir / "out.npz", what=f"the {backend.RUNTIME} runner")
    return result, runner.load_stacked(run_dir / "out.npz", "out"), run_dir

