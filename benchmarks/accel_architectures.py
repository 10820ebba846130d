"""The accelerator table in docs/ACCELERATOR.md: real architectures (keras.applications, random
weights) on the fpga-int8 and fpga-int8-pot profiles: op coverage, CPU fallback ops,
bit-exactness against LiteRT's reference kernels op by op, estimated latency and MAC
utilisation, whether weights and activations fit on chip.

    .venv/bin/python benchmarks/accel_architectures.py [--size 224] [--samples 3] [--models mobilenet_v2,...]

Random weights: the figures are about structure and speed, never accuracy.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODELS = {
    "mobilenet_v2": lambda keras, s: keras.applications.MobileNetV2(input_shape=(s, s, 3), weights=None),
    "mobilenet_v3_small": lambda keras, s: keras.applications.MobileNetV3Small(input_shape=(s, s, 3), weights=None),
    "efficientnet_b0": lambda keras, s: keras.applications.EfficientNetB0(input_shape=(s, s, 3), weights=None),
}


def int8_tflite(model, path: Path, size: int, per_channel: bool) -> None:
    """What edgekit's TFLite backend does for an int8-io accelerator target (random calibration)."""
    from edgekit import zoo
    zoo.full_integer_tflite(model, np.random.default_rng(0).random((32, size, size, 3), dtype=np.float32), path,
                            per_channel)


def row(name: str, target: str, path: Path, samples: Path, count: int) -> str:
    from edgekit import accel, targets
    from edgekit.accel import reference
    spec = targets.get_target(target).profile.accelerator
    emu = accel.Emulator(path, spec)
    placement = emu.placement()
    macs = {op.index: accel.mac_count(emu, op, spec) for op, _ in placement}
    coverage = sum(macs[op.index] for op, w in placement if w == "accelerator") / max(sum(macs.values()), 1)
    fallback = sorted({op.kind for op, w in placement if w == "cpu"} - {"QUANTIZE", "DEQUANTIZE"})
    check = reference.check(path, spec, samples, count)
    if "error" in check:
        exact = check["error"]
    elif check["bit_exact"]:
        exact = f"bit-exact ({check['ops_compared']} ops × {check['samples']} samples)"
    else:
        exact = "; ".join(f"{op}: {n}" for op, n in list(check["mismatched_ops"].items())[:3]) + \
            f" ({len(check['mismatched_ops'])} of {check['ops_compared']} ops differ)"
    if check.get("not_compared"):
        exact += "; not compared: " + "; ".join(check["not_compared"])
    est = accel.cycles(emu, spec)
    weights = sum(t.data.nbytes for t in emu.tensors if t.data is not None)
    acts = all(layer["fits_onchip"] for layer in est["layers"])
    return (f"| {name} | {target} | {len(emu.ops)} | {coverage:.1%} | {', '.join(fallback) or 'none'} | {exact} | "
            f"{est['latency_ms']:.3g} | {est['mac_utilisation']:.1%} | {weights / 1024:.0f} KiB: "
            f"{'fit' if weights <= spec.onchip_kib * 1024 else 'do not fit'}; activations "
            f"{'fit' if acts else 'do not all fit'} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    import keras
    from edgekit.passes import pow2
    print(f"| model ({args.size}×{args.size}) | target | ops | MACs on accelerator | CPU fallback ops | "
          f"vs LiteRT reference kernels | est. latency (ms) | MAC utilisation | weights on chip |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "in.npz"
        rng = np.random.default_rng(1)
        np.savez(samples, in0=rng.random((args.samples, 1, args.size, args.size, 3), dtype=np.float32))
        for name in args.models.split(","):
            keras.utils.set_random_seed(0)
            model = MODELS[name](keras, args.size)
            for target, per_channel in (("fpga-int8", True), ("fpga-int8-pot", False)):
                path = Path(tmp) / f"{name}-{target}.tflite"
                int8_tflite(model, path, args.size, per_channel)
                if target == "fpga-int8-pot":
                    pow2.rewrite(path, path)
                print(row(name, target, path, samples, args.samples), flush=True)


if __name__ == "__main__":
    main()
