"""`edgekit analyze`: parameters and MACs per layer, and optionally per-layer int8 sensitivity."""
from __future__ import annotations

from pathlib import Path

import click

from ..bounds import limit
from .common import _help, _stdout, json_option, print_json, targets_dir_option, working


@click.command()
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
    from .. import analyze as analyzer
    from ..report import show_note, show_table
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    stack, status = working("analyzing")
    with stack:
        result = analyzer.analyze(model, sensitivity=layers, progress=lambda msg: status.update(msg), **options)
    if as_json:
        return print_json(result)
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
