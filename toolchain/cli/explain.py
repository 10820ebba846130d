"""`edgekit explain`: the first op where a quantized artifact diverges from its float model, and the worst."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import EdgekitError
from .common import _stdout, choice, json_option, print_json, working

FORMATS = ("tflite", "onnx", "openvino")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path),
              help="Samples (.npz with x, as convert's --data). Default: the data convert scored on, else generated.")
@click.option("--samples", type=click.IntRange(1, 1000), default=8, show_default=True, help="Samples to run.")
@click.option("--reference", type=click.Path(path_type=Path),
              help="The float artifact to compare with (default: fp32/<same name> beside the artifact).")
@click.option("--precision", type=choice("precision", without=("fp32",)),
              help="Whose SNR gate applies (default: the convert report's, else int8).")
@click.option("--target", "-t", help="Profile of an artifact file given alone; an fpga profile runs it on the "
                                     "accelerator emulator.")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS), help="Only these formats (repeatable).")
@json_option
def explain(path, data_path, samples, reference, precision, target, formats, as_json):
    """Run a quantized artifact and its float model side by side, tensor by tensor: the first op whose SNR
    falls below the precision's gate (its scales and op type) and the 5 worst ops. PATH: a convert output
    directory or one artifact (.tflite, .onnx, .xml)."""
    from .. import explain as flow
    stack, status = working("explaining", quiet=as_json)
    with stack:
        result = flow.explain(path, data_path, samples, reference, precision, target, tuple(formats),
                              progress=(lambda msg: status.update(msg)) if status else (lambda _: None))
    if as_json:
        print_json(result)
    else:
        out = _stdout()
        for entry in result["artifacts"]:
            for line in lines(entry):
                out.print(line, highlight=False, soft_wrap=True, markup=False)
    failed = [e for e in result["artifacts"] if "error" in e]
    if failed:  # the others are printed above; an artifact that could not be run is the user's to fix
        raise EdgekitError(f"{len(failed)} of {len(result['artifacts'])} artifact(s) not explained: "
                           f"{failed[0]['file']}: {failed[0]['error']}",
                           "re-run edgekit convert to rewrite it, or give an intact artifact and its float model")


def lines(entry: dict) -> list[str]:
    from ..divergence import describe, reason
    head = f"{entry['format']} {entry['precision']}: {entry['file']} against {entry['reference_file']}"
    if "error" in entry:
        return [head, f"  not explained: {entry['error']}", ""]
    mapped = ", ".join(f"{n} {how}" for how, n in sorted(entry["mapped"].items()))
    text = [head, f"  {entry['samples_origin']}; {entry['how']}; ops mapped to the float model: {mapped}",
            f"  {reason(entry)}", f"  worst {len(entry['worst'])}:"]
    text += [f"    #{row['index']} {describe(row)}" for row in entry["worst"]]
    return [*text, ""]
