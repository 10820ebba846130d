"""The `edgekit` command: a thin Click layer over pipeline, targets and runner."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

import click

from . import __version__
from .bounds import limit
from .errors import EdgekitError

_OPTION_HELP = None


def _help(field: str) -> str:
    """Flag help comes from the documented ConvertOptions fields (one declaration)."""
    global _OPTION_HELP
    if _OPTION_HELP is None:
        from .options import ConvertOptions
        _OPTION_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(ConvertOptions)}
    return _OPTION_HELP[field]


def _console():
    """stderr: progress, warnings, logs."""
    from rich.console import Console
    return Console(stderr=True, highlight=False)


def _stdout():
    """stdout: results. Tables fall back to plain text when it is not a terminal (report.show_table)."""
    from rich.console import Console
    return Console(highlight=False)


def _working(status: str, quiet: bool = False):
    """A progress spinner on stderr while work runs; anything a library prints meanwhile (NNCF's
    progress bars, converters' chatter) goes to stderr too, so stdout carries only results."""
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(sys.stderr))
    return stack, None if quiet else stack.enter_context(_console().status(status))


def _print_json(result) -> None:
    click.echo(json.dumps(result, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (no table).")


class Number(click.FloatRange):
    """A finite float within a range (click's FloatRange lets NaN through)."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


targets_dir_option = click.option("--targets-dir", "targets_dirs", multiple=True, type=click.Path(file_okay=False),
                                  help="Extra directory of target profiles (repeatable); also $EDGEKIT_TARGETS_PATH.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("--verbose", is_flag=True, help="Show the converters' and runtimes' own log output (anywhere on the line).")
def cli(verbose):
    """Convert trained models to TFLite, ONNX and OpenVINO for an edge target, and measure them."""


@cli.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--target", "-t", default="cpu", show_default=True,
              help=_help("target") + " `all` or a comma-separated list builds several and compares them.")
@click.option("--out", "-o", type=click.Path(path_type=Path), help=_help("out"))
@click.option("--data", type=click.Path(path_type=Path), help=_help("data"))
@click.option("--input-shape", multiple=True, help=_help("input_shape"))
@click.option("--format", "formats", multiple=True, help=_help("formats"))
@click.option("--precision", "-p", type=click.Choice(["fp32", "fp16", "dynamic", "int8", "int8-io", "int16x8"]),
              help=_help("precision"))
@click.option("--calib", help=_help("calib"))
@click.option("--calib-samples", type=click.IntRange(1, limit("quantize.calib_samples")), help=_help("calib_samples"))
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy"]), help=_help("calib_method"))
@click.option("--calib-scale", type=Number(0, 1e6, min_open=True), help=_help("calib_scale"))
@click.option("--per-tensor", is_flag=True, help=_help("per_tensor"))
@click.option("--keep-float", multiple=True, metavar="LAYER", help=_help("keep_float"))
@click.option("--outputs", type=click.Choice(["auto", "classes", "values"]), default="auto", help=_help("outputs"))
@click.option("--threads", type=click.IntRange(min=1), help=_help("threads"))
@click.option("--threads-unbounded", is_flag=True, help=_help("threads_unbounded"))
@click.option("--runs", type=click.IntRange(1, limit("bench.runs")), help=_help("runs"))
@click.option("--processes", type=click.IntRange(1, limit("bench.processes")), help=_help("processes"))
@click.option("--warmup", type=click.IntRange(0, limit("bench.warmup")), help=_help("warmup"))
@click.option("--force", is_flag=True, help=_help("force"))
@click.option("--trust-model", is_flag=True, help=_help("trust_model"))
@click.option("--sensitivity", is_flag=True, help=_help("sensitivity"))
@click.option("--emulate/--no-emulate", default=None, help=_help("emulate"))
@click.option("--tflm-compress", is_flag=True, help=_help("tflm_compress"))
@click.option("--device", "devices", multiple=True, metavar="ssh://USER@HOST[:PORT]", help=_help("devices"))
@click.option("--prune", metavar="METHOD:AMOUNT", help=_help("prune"))
@click.option("--prune-scope", type=click.Choice(["per-layer", "global"]), help=_help("prune_scope"))
@click.option("--prune-skip", multiple=True, metavar="LAYER", help=_help("prune_skip"))
@click.option("--finetune-epochs", type=click.IntRange(0, limit("prune.finetune_epochs")), help=_help("finetune_epochs"))
@click.option("--train-data", type=click.Path(path_type=Path), help=_help("train_data"))
@click.option("--distill", metavar="width:R|STUDENT.keras", help=_help("distill"))
@click.option("--distill-temperature", type=Number(0, 100, min_open=True), help=_help("distill_temperature"))
@click.option("--distill-alpha", type=Number(0, 1), help=_help("distill_alpha"))
@click.option("--distill-epochs", type=click.IntRange(1, limit("distill.epochs")), help=_help("distill_epochs"))
@click.option("--distill-init", type=click.Choice(["inherit", "fresh"]), help=_help("distill_init"))
@click.option("--distill-features", multiple=True, metavar="LAYER", help=_help("distill_features"))
@targets_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No progress or table; only errors.")
@json_option
def convert(model, quiet, as_json, **options):
    """Build every artifact of a target from MODEL and report size, latency, fidelity and accuracy.

    MODEL is a Keras .keras/.h5 file, a SavedModel directory, an .onnx or a .tflite file.
    Without MODEL, the bundled digits CNN and its eval data are used.
    """
    from . import pipeline, report

    console, out = _console(), _stdout()
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    several = options["target"] == "all" or "," in options["target"]
    run = pipeline.convert_targets if several else pipeline.convert
    stack, status = _working("starting", quiet)
    with stack:
        result = run(model, progress=status and status.update, **options)
    if as_json:
        _print_json(result)
    elif several and not quiet:
        report.print_summary(result, out)
        console.print(f"wrote {result['out_dir']}/ (summary.json, summary.md, one directory per target)")
    elif not quiet:
        report.print_table(result, out)
        console.print(f"wrote {result['out_dir']}/ (report.json, report.md)")
    built = [a for r in result["targets"] for a in r["artifacts"]] if several else result["artifacts"]
    if not any(a["status"] == "ok" for a in built):
        raise EdgekitError("no artifact could be built" + (" for any target" if several else ""),
                           f"see the reasons in {result['out_dir']}/{'summary' if several else 'report'}.md")


@cli.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--layers", is_flag=True, help="Add per-layer int8 sensitivity: which layers to keep in float.")
@click.option("--target", "-t", default="cpu-int8", show_default=True, help="Profile whose calibration settings apply.")
@click.option("--data", type=click.Path(path_type=Path), help=_help("data"))
@click.option("--calib", help=_help("calib"))
@click.option("--calib-samples", type=click.IntRange(1, limit("quantize.calib_samples")), help=_help("calib_samples"))
@click.option("--input-shape", multiple=True, help=_help("input_shape"))
@click.option("--trust-model", is_flag=True, help=_help("trust_model"))
@json_option
@targets_dir_option
def analyze(model, layers, as_json, **options):
    """Parameters and MACs per layer; with --layers, how much each layer suffers from int8."""
    from . import pipeline
    from .report import show_note, show_table
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    stack, status = _working("analyzing")
    with stack:
        result = pipeline.analyze(model, sensitivity=layers, progress=lambda msg: status.update(msg), **options)
    if as_json:
        return _print_json(result)
    out = _stdout()
    show_table(out, f"{result['name']}: parameters and MACs per layer",
               ("layer", "ops", "params", "MACs", "weight KiB", "activation KiB"),
               [(row["layer"], ",".join(dict.fromkeys(row["ops"])), f"{row['params']:,}", f"{row['macs']:,}",
                 f"{row['weight_bytes'] / 1024:.1f}", f"{row['activation_bytes'] / 1024:.1f}")
                for row in [*result["layers"], {"layer": "total", "ops": [], **result["totals"]}]])
    show_note(out, result["how"])
    if layers:
        show_table(out, "int8 sensitivity per layer (most sensitive first)",
                   ("rank", "layer", "cosine", "max err", "top-1 agree"),
                   [(str(i), row["layer"], f"{row['cosine']:.6f}", f"{row['max_abs_error']:.2e}",
                     f"{row['top1_agreement']:.1%}") for i, row in enumerate(result["sensitivity"], 1)])
        show_note(out, f"Each layer quantized alone (QDQ int8, onnxruntime), others float; calibration: "
                       f"{result['calibration']}; scored on {result['data']}. Keep the top rows in float with "
                       f"--keep-float LAYER.")


@cli.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--target", "-t", default="cpu-int8", show_default=True, help="Target profile; its first format is tuned.")
@click.option("--data", type=click.Path(path_type=Path), help="Labelled .npz (x, y): half tunes, half checks the result.")
@click.option("--max-accuracy-drop", default=0.5, show_default=True, type=Number(-100, 100),
              help="Budget in accuracy points (or percent of the source accuracy with --relative).")
@click.option("--relative", is_flag=True, help="The budget is relative to the source accuracy.")
@click.option("--budget-minutes", type=Number(0, 10 ** 6, min_open=True), help="Stop starting new trials after this long.")
@click.option("--objective", type=click.Choice(["latency", "size", "memory"]), default="latency", show_default=True)
@click.option("--trials", default=16, show_default=True, type=click.IntRange(1, 10_000), help="Trials in the search.")
@click.option("--workers", type=click.IntRange(1, 4 * (os.cpu_count() or 1)),
              help="Parallel trial workers (default: up to 2; at most 4 per core).")
@click.option("--cluster", metavar="STORAGE_URL",
              help="Optuna storage shared by workers on other machines (postgresql://..., see docs/SCALING.md).")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Output directory; rerunning resumes it.")
@click.option("--force", is_flag=True, help="Start over instead of resuming.")
@click.option("--device", "devices", multiple=True, metavar="ssh://USER@HOST[:PORT]",
              help="Time every trial on this pool of devices over SSH instead of here (repeatable; one job per "
                   "device at a time, whichever is free).")
@click.option("--heartbeat", "heartbeat_s", default=15, show_default=True, type=click.IntRange(1, 3600),
              help="Seconds between a running trial's heartbeats; a trial silent for 4 beats is failed and retried.")
@targets_dir_option
@json_option
def tune(model, targets_dirs, as_json, **options):
    """Find the cheapest artifact within an accuracy budget, and show the whole trade-off."""
    from . import tune as tuner
    from .report import show_note, show_table
    console, out = _console(), _stdout()
    stack, status = _working("tuning")
    with stack:
        result = tuner.tune(model, targets_dirs=list(targets_dirs), progress=status.update, **options)
    if as_json:
        return _print_json(result)
    best_key = (result["best"] or {}).get("key")
    show_table(out, f"Pareto front ({result['format']}, objective {result['objective']}, budget "
                    f"{result['budget_points']:.2f} points; latency from the quiet phase)",
               ("recipe", "acc drop (tune split)", "size KiB", "median ms", "CV", "chosen"),
               [(tuner.recipe_text(t["recipe"]), f"{t['drop_points']:+.2f}", f"{t['bytes'] / 1024:.1f}",
                 f"{t['latency_ms']:.4g}", _cv(t.get("latency")), "yes" if t["key"] == best_key else "")
                for t in result["pareto"]])
    show_table(out, "every trial, and why it was not chosen",
               ("recipe", "acc drop", "size KiB", "median ms (search)", "why"),
               [(tuner.recipe_text(t["recipe"]), f"{t['drop_points']:+.2f}" if t["ok"] else "-",
                 f"{t['bytes'] / 1024:.1f}" if t["ok"] else "-",
                 f"{t.get('latency_ms_search', t['latency_ms']):.4g}" if t["ok"] else "-", t["why"])
                for t in tuner._unique(result["trials"])])
    fp32 = result["fp32"]
    if result["best"]:
        best = result["best"]
        ratio = best.get("vs_fp32_latency")
        speed = "latency against fp32: too unsteady on this host to compare" if not ratio or ratio["unstable"] else \
            f"{1 / ratio['value']:.2f}x faster than fp32 (interleaved, quiet phase)"
        show_note(out, f"chosen: {tuner.recipe_text(best['recipe'])}: {fp32['bytes'] / best['bytes']:.2f}x smaller, "
                       f"{speed}; accuracy drop {best['drop_points']:+.2f} points on the tuning split, "
                       f"{best['holdout_drop_points']:+.2f} on the held-out split. Artifact: {result['best_artifact']}",
                  "")
    else:
        show_note(out, f"No candidate met the {result['budget_points']:.2f}-point budget. Closest: "
                       + "; ".join(f"{tuner.recipe_text(t['recipe'])} ({t['drop_points']:+.2f})" for t in result["closest"])
                       + f". Layers that block it (most sensitive): {', '.join(result['blocking_layers'])}", "yellow")
    console.print(f"wrote {result['out_dir']}/tune.json (every trial, the Pareto front); rerun to resume")


def _cv(latency: dict | None) -> str:
    if not latency:
        return "-"
    return f"{latency['cv']:.0%}" + (" UNSTABLE" if latency.get("unstable") else "")


@cli.command("report")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", "-o", type=click.Path(path_type=Path, dir_okay=False), default=Path("edgekit-report.html"),
              show_default=True)
def report_cmd(dirs, out):
    """Render one self-contained HTML page from result directories (convert, --target all, tune)."""
    from . import html_report
    html_report.write(list(dirs), out)
    click.echo(f"wrote {out}")


@cli.group(invoke_without_command=True)
@targets_dir_option
@json_option
@click.pass_context
def targets(ctx, targets_dirs, as_json):
    """List target profiles (built-in and your own)."""
    ctx.obj = tuple(targets_dirs)
    if ctx.invoked_subcommand:
        return
    from .report import show_table
    from .targets import all_targets
    problems: list[str] = []  # a broken profile is skipped, never hides the others
    profiles = all_targets(ctx.obj, problems)
    if as_json:
        return _print_json([{"name": name, "path": str(t.path), **dataclasses.asdict(t.profile)}
                            for name, t in profiles.items()])
    show_table(_stdout(), "edgekit targets", ("name", "device", "arch", "precision", "formats", "threads", "description"),
               [(name, t.profile.device.kind, t.profile.device.arch, t.profile.quantize.precision,
                 ", ".join(t.profile.build.formats), str(t.profile.bench.threads), t.profile.description)
                for name, t in profiles.items()])
    for problem in problems:
        click.echo(f"warning: skipped {problem}", err=True)


@targets.command("show")
@click.argument("name")
@click.pass_obj
def targets_show(dirs, name):
    """Print one profile, validated, with every field filled in."""
    from .targets import get_target
    target = get_target(name, dirs or ())
    click.echo(f"# {target.path}")
    click.echo(json.dumps(dataclasses.asdict(target.profile), indent=2))


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Inference threads (at most 4 per core unless --threads-unbounded).")
@click.option("--threads-unbounded", is_flag=True, help="Allow more than 4 threads per core of this host.")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(1, limit("bench.runs")), help="Timed runs.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0, limit("bench.warmup")),
              help="Untimed warm-up runs.")
@click.option("--inputs", type=click.Path(path_type=Path, dir_okay=False),
              help="Inputs .npz (keys in0, in1, ...); default: seeded random inputs.")
@click.option("--processes", default=3, show_default=True, type=click.IntRange(1, limit("bench.processes")),
              help="Runner processes, one after another; the median is taken across them.")
@json_option
@click.option("--device", "devices", multiple=True, metavar="ssh://USER@HOST[:PORT]",
              help="Run on these devices over SSH instead of here (repeatable, in parallel, one job per device at "
                   "a time); results are compared.")
@click.option("--timeout", default=600, show_default=True, type=click.IntRange(1, 86_400), help="Seconds per remote step.")
def bench(artifact, threads, threads_unbounded, runs, warmup, processes, inputs, as_json, devices, timeout):
    """Time one artifact (.tflite, .onnx or OpenVINO .xml) in runner processes here, or on devices over SSH."""
    from . import timing
    from .bounds import check_threads
    if not artifact.is_file():
        raise EdgekitError(f"artifact not found: {artifact}", "check the path")
    if devices:
        return _remote_bench(artifact, threads, runs, warmup, inputs, as_json, devices, timeout)
    check_threads(threads, threads_unbounded)  # here; a device's cores are its own business
    stack, status = _working("timing")
    with stack:
        result = timing.measure([artifact], inputs, threads=threads, warmup=warmup, runs=runs, processes=processes,
                                progress=status.update)[0]
    if "error" in result:
        raise EdgekitError(result["error"], "check that the artifact loads: python -m edgekit.runner ARTIFACT")
    if as_json:
        return _print_json(result)
    lat, memory = result["latency_ms"], result["memory"]
    click.echo(f"{artifact.name} [{result['runtime']['name']} {result['runtime']['version']}] threads={threads} "
               f"warmup={warmup} runs={runs} x {processes} processes: median {lat['median']:.4g} ms "
               f"(process medians {', '.join(f'{m:.4g}' for m in lat['process_medians'])}), p90 {lat['p90']:.4g}, "
               f"p99 {lat['p99']:.4g}, CV {lat['cv']:.1%}{' UNSTABLE' if lat['unstable'] else ''}; peak RSS "
               f"{memory['peak_rss_mib']:.0f} MiB ({memory['source'].split(' ')[0]}; measured on "
               f"{result['host']['hostname']})")


def _on_each(devices: list[str], job) -> list:
    """job(device) on every device at once (each device's own lock keeps one job on it). On an error or a
    signal the other devices' runs are ended; each one's clean-up still stops its runner there."""
    if len(devices) == 1:
        return [job(devices[0])]
    from concurrent.futures import ThreadPoolExecutor

    from . import children
    pool = ThreadPoolExecutor(len(devices))
    try:
        return [f.result() for f in [pool.submit(job, url) for url in devices]]
    except BaseException:
        children.kill_all()
        raise
    finally:
        pool.shutdown(wait=True)


def _remote_bench(artifact, threads, runs, warmup, inputs, as_json, devices, timeout):
    from . import backends, remote
    from .report import show_note, show_table
    files = backends.for_artifact(artifact).files(artifact)
    results = _on_each(devices, lambda url: remote.bench(url, files, inputs, threads, warmup, runs, timeout=timeout))
    if as_json:
        return _print_json(results)
    out = _stdout()
    show_table(out, f"{artifact.name} on {len(results)} device(s)",
               ("device", "cpu", "runtime", "median ms", "p90 ms", "p99 ms", "CV", "peak RSS MiB"),
               [(url, f"{r['host']['cpu']} ({r['host']['machine']})", f"{r['runtime']['name']} {r['runtime']['version']}",
                 f"{r['latency_ms']['median']:.4g}", f"{r['latency_ms']['p90']:.4g}", f"{r['latency_ms']['p99']:.4g}",
                 f"{r['latency_ms'].get('cv', 0):.0%}", f"{r['memory']['peak_rss_mib']:.0f}")
                for url, r in zip(devices, results)])
    for url, r in zip(devices, results):
        show_note(out, f"{url}: {r['how']}; {threads} thread(s), {warmup} warm-up, {runs} runs", "")


NOISY_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3", "TF_CPP_MIN_VLOG_LEVEL": "0",
             "ORT_LOGGING_LEVEL": "3", "OPENVINO_LOG_LEVEL": "0", "KERAS_BACKEND": "tensorflow"}
NOISY_LOGGERS = ("tensorflow", "absl", "keras", "tf2onnx", "onnx2tf", "nncf", "openvino", "onnxruntime", "h5py")


def silence_native_logs() -> Callable[[], None]:
    """Until the returned function is called, what native libraries (TensorFlow, absl, onnxruntime,
    OpenVINO) write to file descriptor 2 goes to a scratch log instead of the terminal: their
    start-up chatter must not come before our one-line errors. Python's own stderr stays on the
    terminal. `--verbose` (or EDGEKIT_VERBOSE=1) keeps everything."""
    import logging
    import tempfile
    import warnings
    for key, value in NOISY_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("", *NOISY_LOGGERS):  # "": the root logger, which onnxruntime.quantization warns through
        logging.getLogger(name).setLevel(logging.CRITICAL)  # their errors reach us as exceptions
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|tf2onnx|onnx2tf|nncf|openvino|onnxruntime|ai_edge_litert|h5py|google)")
    try:
        real_stderr = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real_stderr = False  # already captured (in-process tests): nothing native reaches it anyway
    if not real_stderr:
        return lambda: None
    sys.stderr.flush()
    terminal = os.dup(2)
    log = tempfile.TemporaryFile(prefix="edgekit-log-")
    os.dup2(log.fileno(), 2)
    previous = sys.stderr
    sys.stderr = open(os.dup(terminal), "w", encoding=previous.encoding, errors=previous.errors, buffering=1)

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        sys.stderr.close()
        sys.stderr = previous
        log.close()
    return restore


def _interrupted(exc: KeyboardInterrupt | None) -> None:
    """Everything was cleaned up on the way here; also sweep the scratch of workers killed with us."""
    import tempfile

    from .interrupt import Interrupted
    from .output import sweep
    sweep(Path(tempfile.gettempdir()))
    click.echo("interrupted; no partial output was kept" if exc else "aborted", err=True)
    sys.exit(exc.exit_code if isinstance(exc, Interrupted) else 130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2; nothing prints a traceback unless EDGEKIT_DEBUG=1."""
    from . import interrupt
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or os.environ.get("EDGEKIT_VERBOSE") == "1"
    args = [a for a in args if a != "--verbose"]
    if verbose:
        os.environ["EDGEKIT_VERBOSE"] = "1"  # libraries' own progress output stays too (backends read it)
    restore_logs = (lambda: None) if verbose else silence_native_logs()
    restore_signals = interrupt.install()
    try:
        _main(args)
    finally:
        restore_signals()
        restore_logs()


def _main(args: list[str]) -> None:
    try:
        cli.main(args=args, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (and our signals) into Abort
        _interrupted(exc.__context__ if isinstance(exc.__context__, KeyboardInterrupt) else None)
    except click.UsageError as exc:  # one line, like every other user error
        command = exc.ctx.command_path if exc.ctx else "edgekit"
        click.echo(f"error: {exc.format_message()} — see `{command} --help`", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgekitError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:  # a bug, not a user error: say so in one line
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        click.echo(f"internal error: {type(exc).__name__}: {text} (set EDGEKIT_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
