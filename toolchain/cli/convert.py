"""`edgekit convert`: build every artifact of one or several targets and print the report."""
from __future__ import annotations

from pathlib import Path

import click

from ..bounds import limit
from ..errors import EdgekitError
from .common import (Number, WithPassFlags, _console, _help, _stdout, choice, json_option, print_json, targets_dir_option,
                     working)


@click.command(cls=WithPassFlags)
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--target", "-t", default="cpu", show_default=True,
              help=_help("target") + " `all` or a comma-separated list builds several and compares them.")
@click.option("--out", "-o", type=click.Path(path_type=Path), help=_help("out"))
@click.option("--data", type=click.Path(path_type=Path), help=_help("data"))
@click.option("--input-shape", multiple=True, help=_help("input_shape"))
@click.option("--format", "formats", multiple=True, help=_help("formats"))
@click.option("--precision", "-p", type=choice("precision"),
              help=_help("precision"))
@click.option("--calib", help=_help("calib"))
@click.option("--calib-samples", type=click.IntRange(1, limit("quantize.calib_samples")), help=_help("calib_samples"))
@click.option("--calib-method", type=choice("calib_method"), help=_help("calib_method"))
@click.option("--calib-scale", type=Number(0, 1e6, min_open=True), help=_help("calib_scale"))
@click.option("--per-tensor", is_flag=True, help=_help("per_tensor"))
@click.option("--keep-float", multiple=True, metavar="LAYER", help=_help("keep_float"))
@click.option("--mixed", type=choice("mixed"), help=_help("mixed"))
@click.option("--mixed-rounds", type=click.IntRange(1, limit("mixed.rounds")), help=_help("mixed_rounds"))
@click.option("--outputs", type=choice("outputs"), default="auto", help=_help("outputs"))
@click.option("--threads", type=click.IntRange(min=1), help=_help("threads"))
@click.option("--threads-unbounded", is_flag=True, help=_help("threads_unbounded"))
@click.option("--runs", type=click.IntRange(1, limit("bench.runs")), help=_help("runs"))
@click.option("--processes", type=click.IntRange(1, limit("bench.processes")), help=_help("processes"))
@click.option("--warmup", type=click.IntRange(0, limit("bench.warmup")), help=_help("warmup"))
@click.option("--force", is_flag=True, help=_help("force"))
@click.option("--trust-model", is_flag=True, help=_help("trust_model"))
@click.option("--sensitivity", is_flag=True, help=_help("sensitivity"))
@click.option("--ops", is_flag=True, help=_help("ops"))
@click.option("--emulate/--no-emulate", default=None, help=_help("emulate"))
@click.option("--tflm-compress", is_flag=True, help=_help("tflm_compress"))
@click.option("--device", "devices", multiple=True, metavar="ssh://USER@HOST[:PORT]", help=_help("devices"))
@click.option("--recipe", type=click.Path(path_type=Path, dir_okay=False), help=_help("recipe"))
@click.option("--prune", metavar="METHOD:AMOUNT", help=_help("prune"))
@click.option("--prune-scope", type=choice("prune_scope"), help=_help("prune_scope"))
@click.option("--prune-skip", multiple=True, metavar="LAYER", help=_help("prune_skip"))
@click.option("--finetune-epochs", type=click.IntRange(0, limit("prune.finetune_epochs")), help=_help("finetune_epochs"))
@click.option("--train-data", type=click.Path(path_type=Path), help=_help("train_data"))
@click.option("--distill", metavar="width:R|STUDENT.keras", help=_help("distill"))
@click.option("--distill-temperature", type=Number(0, 100, min_open=True), help=_help("distill_temperature"))
@click.option("--distill-alpha", type=Number(0, 1), help=_help("distill_alpha"))
@click.option("--distill-epochs", type=click.IntRange(1, limit("distill.epochs")), help=_help("distill_epochs"))
@click.option("--distill-init", type=choice("distill_init"), help=_help("distill_init"))
@click.option("--distill-features", multiple=True, metavar="LAYER", help=_help("distill_features"))
@targets_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No progress or table; only errors.")
@json_option
def convert(model, quiet, as_json, **options):
    """Build every artifact of a target from MODEL and report size, latency, fidelity and accuracy.

    MODEL is a Keras .keras/.h5 file, a SavedModel directory, an .onnx or a .tflite file.
    Without MODEL, the bundled digits CNN and its eval data are used.
    """
    from .. import multitarget, pipeline, report

    console, out = _console(), _stdout()
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    several = options["target"] == "all" or "," in options["target"]
    run = multitarget.convert_targets if several else pipeline.convert
    stack, status = working("starting", quiet)
    with stack:
        result = run(model, progress=status and status.update, **options)
    if as_json:
        print_json(result)
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
