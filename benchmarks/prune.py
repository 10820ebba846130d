"""Pruning figures (a benchmark that prints figures; not a test).

1. ResNet-8 trained on the bundled digits (32x32x3): `channels:0.5` + fine-tuning, against the
   original: MACs, TFLite fp32 latency at 1 thread, accuracy. Targets: MACs -40% or more,
   latency -25% or more, accuracy loss at most 2 points.
2. The default digits CNN: `magnitude:0.8` + int8 against int8 alone, TFLite gzip size.
   Target: at least 2x smaller.

    python benchmarks/prune.py [--epochs 5] [--runs 300] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-prune"))
    args = parser.parse_args()
    import edgekit
    from edgekit import pipeline, zoo

    resnet = zoo.trained_reference("resnet8", pipeline.cache_dir())
    report = edgekit.convert(resnet["model"], target="cpu", formats=["tflite"], data=resnet["eval"],
                             train_data=resnet["train"], prune="channels:0.5", finetune_epochs=args.epochs,
                             runs=args.runs, out=args.out / "resnet8-channels", force=True)
    stages = report["pruning"]["stages"]
    original, final = stages[0], stages[-1]
    print("## ResNet-8, channels:0.5 + fine-tuning (TFLite fp32, 1 thread, this host)\n")
    print("| stage | params | MACs | size KiB | median ms | accuracy |\n|---|---|---|---|---|---|")
    for s in stages:
        print(f"| {s['stage']} | {s['params']:,} | {s['macs']:,} | {s['size']['bytes'] / 1024:.1f} | "
              f"{s['latency_ms']:.4f} | {s['accuracy']:.2%} |")
    macs_cut = 1 - final["macs"] / original["macs"]
    latency_cut = 1 - final["latency_ms"] / original["latency_ms"]
    loss = (original["accuracy"] - final["accuracy"]) * 100
    print(f"\nMACs -{macs_cut:.0%} (target >= 40%), latency -{latency_cut:.0%} (target >= 25%), "
          f"accuracy loss {loss:.2f} points (target <= 2)")

    digits = pipeline.default_model()
    common = dict(target="cpu-int8", formats=["tflite"], data=digits["eval"], runs=args.runs, force=True)
    plain = edgekit.convert(digits["model"], out=args.out / "digits-int8", **common)
    sparse = edgekit.convert(digits["model"], out=args.out / "digits-magnitude-int8", prune="magnitude:0.8", **common)
    int8 = lambda r: next(a for a in r["artifacts"] if a["role"] == "target")
    a, b = int8(plain), int8(sparse)
    print("\n## Digits CNN, magnitude:0.8 + int8 against int8 alone (TFLite)\n")
    print("| recipe | size KiB | gzip KiB | accuracy |\n|---|---|---|---|")
    for name, art in (("int8", a), ("magnitude:0.8 + int8", b)):
        print(f"| {name} | {art['size']['bytes'] / 1024:.1f} | {art['size']['gzip_bytes'] / 1024:.1f} | "
              f"{art['accuracy']['value']:.2%} |")
    print(f"\ngzip {a['size']['gzip_bytes'] / b['size']['gzip_bytes']:.2f}x smaller (target >= 2x)")
    (args.out / "prune.json").write_text(json.dumps({"resnet8": stages, "digits": {"int8": a, "pruned": b}},
                                                    indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
