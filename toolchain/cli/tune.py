"""`edgekit tune`: the cheapest artifact within an accuracy budget, and the whole trade-off."""
from __future__ import annotations

import os
from pathlib import Path

import click

from ..options import TUNE_OBJECTIVES
from .common import Number, _console, _stdout, json_option, print_json, targets_dir_option, working


@click.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--target", "-t", default="cpu-int8", show_default=True, help="Target profile; its first format is tuned.")
@click.option("--data", type=click.Path(path_type=Path), help="Labelled .npz (x, y): half tunes, half checks the result.")
@click.option("--max-accuracy-drop", default=0.5, show_default=True, type=Number(-100, 100),
              help="Budget in accuracy points (or percent of the source accuracy with --relative).")
@click.option("--relative", is_flag=True, help="The budget is relative to the source accuracy.")
@click.option("--budget-minutes", type=Number(0, 10 ** 6, min_open=True), help="Stop starting new trials after this long.")
@click.option("--objective", type=click.Choice(TUNE_OBJECTIVES), default="latency", show_default=True)
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
    from .. import tune as tuner
    from ..report import show_note, show_table
    console, out = _console(), _stdout()
    stack, status = working("tuning")
    with stack:
        result = tuner.tune(model, targets_dirs=list(targets_dirs), progress=status.update, **options)
    if as_json:
        return print_json(result)
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
