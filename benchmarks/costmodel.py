"""The latency cost model against published measurements (a benchmark that prints figures).

The device models in targets/arm*.toml and targets/arm-m-int8.toml take their peak rates from
the cores' documented SIMD widths; two constants per device are calibrated on ONE published
run each (marked "calibration"); every other row checks the model against an independent
measurement ("check"). Models are built in code with random weights (latency does not depend
on weight values): MobileNetV1/V2 1.0 224 from keras.applications, the MLPerf-Tiny-shaped
ResNet-8, DS-CNN and MobileNetV1-0.25 from edgekit.zoo.

    python benchmarks/costmodel.py
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

KRAI = "MLPerf Inference v2.0 open, Krai, rpi4-tflite-v2.7.1-ruy (github.com/mlcommons/inference_results_v2.0), SingleStream p50"
XNN_814 = "XNNPACK issue #814 (github.com/google/XNNPACK/issues/814), end2end-bench, RPi 4 at 1500 MHz"
NCNN = "Tencent/ncnn benchmark/README.md, Raspberry Pi 4 Model B (1.5GHz x 4), benchncnn, 4 threads"
TINY = "MLPerf Tiny v0.5 reference, Nucleo-L4R5ZI, TFLM v2.3.1 + CMSIS-NN (github.com/mlcommons/tiny_results_v0.5)"

# (model, target profile, precision, threads, clock GHz, published ms, role, source)
PUBLISHED = [
    ("mobilenet_v1_224", "arm", "fp32", 4, 1.8, 72.5, "calibration", KRAI),
    ("mobilenet_v1_224", "arm", "fp32", 1, 1.5, 312.0, "check (T1/T4 ratio set parallel_efficiency)", XNN_814),
    ("mobilenet_v1_224", "arm", "fp32", 4, 1.5, 142.4, "check (T1/T4 ratio set parallel_efficiency)", XNN_814),
    ("mobilenet_v1_224", "arm", "fp32", 4, 1.5, 72.08, "check", NCNN),
    ("mobilenet_v1_224", "arm", "int8", 4, 1.5, 40.30, "check", NCNN),
    ("mobilenet_v1_224", "arm", "int8", 4, 1.8, 27.4, "check", KRAI),
    ("mobilenet_v2_224", "arm", "fp32", 4, 1.8, 62.4, "check", KRAI),
    ("mobilenet_v2_224", "arm", "int8", 4, 1.8, 23.0, "check", KRAI),
    ("resnet8", "arm-m-int8", "int8", 1, 0.12, 704.0, "calibration", TINY),
    ("ds-cnn", "arm-m-int8", "int8", 1, 0.12, 182.0, "check", TINY),
    ("mobilenet-v1-0.25", "arm-m-int8", "int8", 1, 0.12, 601.0, "check", TINY),
]


def onnx_of(name: str, work: Path) -> Path:
    """The model's ONNX form, through edgekit's own loader and converter."""
    import keras

    from edgekit import sources, zoo
    from edgekit.backends import onnx as onnx_backend
    if name == "mobilenet_v1_224":
        model = keras.applications.MobileNet(input_shape=(224, 224, 3), weights=None)
    elif name == "mobilenet_v2_224":
        model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    else:
        model = zoo.build(name)
    path = work / f"{name}.keras"
    model.save(path)
    source = sources.load(path, sources.LoadOptions(workdir=work / name))
    return onnx_backend.float_model(source)[0]


def main() -> None:
    from edgekit import analysis, costmodel, targets
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = {}
        for model, profile, precision, threads, clock, published, role, source in PUBLISHED:
            if model not in stats:
                stats[model] = analysis.node_stats(onnx_of(model, Path(tmp)))
            device = dataclasses.replace(targets.get_target(profile).profile.device, clock_ghz=clock)
            est = costmodel.estimate(stats[model], device, precision, threads)
            macs = sum(n["macs"] for n in stats[model])
            rows.append((model, f"{macs / 1e6:.1f}M", profile, precision, threads, clock, published,
                         est["latency_ms"], role, source))
    print("| model | MACs | profile | precision | threads | GHz | published ms | estimated ms | est/pub | role | source |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, macs, profile, precision, threads, clock, published, estimated, role, source in rows:
        print(f"| {model} | {macs} | {profile} | {precision} | {threads} | {clock} | {published:g} | "
              f"{estimated:.1f} | {estimated / published:.2f} | {role} | {source} |")
    checks = [r[7] / r[6] for r in rows if r[8].startswith("check")]
    print(f"\nchecks: estimate/published from {min(checks):.2f} to {max(checks):.2f} "
          f"(median {sorted(checks)[len(checks) // 2]:.2f}) over {len(checks)} independent measurements")


if __name__ == "__main__":
    main()
