"""`edgekit tune` on the default digits CNN and on ResNet-8 (trained on the bundled digits), with a
0.5-point budget (a benchmark that prints figures; not a test).

Targets: an artifact at least 3x smaller and 2x faster (TFLite, 1 thread) than fp32, within the
budget on the held-out split, in under 15 minutes on a 2-core machine. Writes the Pareto plot of
each run to docs/tune-<model>.svg (the README shows them) and the HTML report to --out.

    python benchmarks/tune.py [--trials 12] [--out edgekit-out/bench-tune]
"""
from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-tune"))
    args = parser.parse_args()
    from edgekit import html_report, pipeline, tune, zoo
    from edgekit.tune import recipe_text
    print("| model | chosen recipe | size vs fp32 | latency vs fp32 | drop (tune) | drop (held-out) | trials | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("digits-cnn", "resnet8"):
        paths = zoo.trained_reference(name, pipeline.cache_dir())
        started = time.time()
        result = tune.tune(paths["model"], target="cpu-int8", data=paths["eval"], max_accuracy_drop=0.5,
                           trials=args.trials, out=args.out / name, force=True)
        minutes = (time.time() - started) / 60
        best, fp32 = result["best"], result["fp32"]
        print(f"| {name} | {recipe_text(best['recipe'])} | {best['bytes'] / fp32['bytes']:.2f}x "
              f"({fp32['bytes'] / best['bytes']:.1f}x smaller) | {best['latency_ms'] / fp32['latency_ms']:.2f}x "
              f"({fp32['latency_ms'] / best['latency_ms']:.1f}x faster) | {best['drop_points']:+.2f} | "
              f"{best['holdout_drop_points']:+.2f} | {len(result['trials'])} | {minutes:.1f} |", flush=True)
        page = args.out / f"{name}.html"
        html_report.write([args.out / name], page)
        svg = re.search(r"<svg class='pareto'.*?</svg>", page.read_text(), re.S).group(0)
        (DOCS / f"tune-{name}.svg").write_text(svg.replace("<svg class='pareto'", "<svg", 1) + "\n")
    print(f"\nPareto plots: docs/tune-digits-cnn.svg, docs/tune-resnet8.svg; reports in {args.out}/*.html")


if __name__ == "__main__":
    main()
