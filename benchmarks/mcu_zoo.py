"""Which zoo model fits which microcontroller board: every MCU profile on the trained zoo models,
with TFLite Micro's measured arena beside the lifetime estimate (a benchmark that prints figures).

    python benchmarks/mcu_zoo.py [--models digits-cnn,ds-cnn,resnet8,mobilenet-v1-0.25]

Trains each reference model on the bundled digits on first use (cached), then runs
`edgekit convert --target <every mcu profile>` on it. Several minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    from edgekit import pipeline, targets, zoo
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-cnn,ds-cnn,resnet8,mobilenet-v1-0.25")
    args = parser.parse_args()
    boards = sorted(n for n, t in targets.all_targets().items()  # the boards as they are, no extra passes
                    if t.profile.device.kind == "mcu" and t.profile.distill.student in ("", "none"))
    print("| model | board | arena, measured in TFLM | lifetime estimate | model array, compiled | vs LiteRT built-in "
          "| accuracy (TFLM) | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for name in args.models.split(","):
            paths = zoo.trained_reference(name, pipeline.cache_dir())
            for board in boards:
                result = pipeline.convert(paths["model"], target=board, data=paths["eval"], runs=5,
                                          out=Path(out) / f"{name}-{board}")
                mcu = result["artifacts"][-1]["mcu"]
                emu, verdict = mcu["emulated"], mcu["verdict"]
                parity = emu.get("parity_vs_litert_builtin", {})
                exact = "-" if not parity else "bit-exact" if parity["bit_exact"] else \
                    f"{parity['samples_differing']} samples differ, max {parity['max_abs_diff']:.3g}"
                compiled = mcu["c_artifact"].get("compiled", {})
                short = [f"{w} {v['needed_bytes'] - v['budget_bytes']:,} B over" for w, v in
                         (("RAM", verdict["ram"]), ("flash", verdict["flash"])) if v["fits"] is False]
                print(f"| {name} | {board} | {emu.get('arena', {}).get('used_bytes', '-'):,} B | "
                      f"{(verdict['lifetime_estimate'] or {}).get('peak_activation_bytes', 0):,} B | "
                      f"{compiled.get('model_section_bytes', 0):,} B | {exact} | "
                      f"{emu.get('accuracy', {}).get('value', float('nan')):.2%} | "
                      f"{'fits' if verdict['fits'] else 'DOES NOT FIT: ' + ', '.join(short)} |", flush=True)


if __name__ == "__main__":
    main()
