"""Peer comparison for int8 quantization (a benchmark that prints figures; not a test).

For the bundled digits model and the MLPerf-Tiny-shaped reference models it builds:
  * edgekit's cpu-int8 recipe (`edgekit.convert(..., target="cpu-int8")`), and
  * each backend's plain defaults on the same float model and the same calibration samples:
    the TFLite converter's int8 recipe (optimizations + representative dataset),
    `onnxruntime.quantization.quantize_static` with default arguments, and
    `nncf.quantize` with default arguments;
then measures test accuracy (every model is trained on the bundled digits, resized to its input
shape: edgekit.zoo.trained_reference), size and 1-thread median latency
with edgekit's runner, and times edgekit's artifacts with `litert-benchmark` and OpenVINO's
`benchmark_app` at the same thread count.

    python benchmarks/peer_quant.py [--models digits,resnet8,mobilenet] [--runs 200] [--out DIR]

Prints markdown tables and writes peer_quant.json to --out. All figures are measured on this host.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BIN = Path(sys.executable).parent
MODELS = {"digits": "digits-cnn", "resnet8": "resnet8", "ds-cnn": "ds-cnn", "mobilenet": "mobilenet-v1-0.25"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet8,mobilenet")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--calib-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-peer-quant"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.models.split(","):
        started = time.time()
        results[name] = bench_model(name, args)
        print(f"\n## {name}  ({time.time() - started:.0f} s)\n", flush=True)
        print_rows(results[name])
    (args.out / "peer_quant.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out / 'peer_quant.json'}")
    print_targets(results)


def bench_model(name: str, args) -> dict:
    import edgekit
    work = args.out / name
    model_path, data_path, labelled = prepare(name, work, args.calib_samples)
    report = edgekit.convert(model_path, target="cpu-int8", data=data_path, out=work / "edgekit", force=True,
                             runs=args.runs, calib_samples=args.calib_samples)
    with np.load(data_path) as npz:
        x, y = npz["x"], npz["y"]
    calib, evalx, evaly = x[-args.calib_samples:], x[:-args.calib_samples], y[:-args.calib_samples]
    evalx, evaly = evalx[:300], evaly[:300]
    rows = []
    for artifact in report["artifacts"]:
        if artifact["status"] != "ok":
            rows.append({"format": artifact["format"], "recipe": f"edgekit {artifact['precision']}",
                         "error": artifact["reason"]})
            continue
        rows.append({"format": artifact["format"], "recipe": f"edgekit {artifact['precision']}",
                     "accuracy": artifact["accuracy"]["value"], "bytes": artifact["size"]["bytes"],
                     "median_ms": artifact["latency_ms"]["median"],
                     "path": str(work / "edgekit" / artifact["file"])})
    for fmt, make in (("tflite", peer_tflite), ("onnx", peer_onnx), ("openvino", peer_openvino)):
        path = make(model_path, work, calib, work / "edgekit" / "fp32")
        latency, outputs = run(path, evalx, args.runs)
        rows.append({"format": fmt, "recipe": "peer default int8", "accuracy": accuracy(outputs, evaly),
                     "bytes": sum(p.stat().st_size for p in files(path)), "median_ms": latency, "path": str(path)})
    for row in rows:
        if "path" in row and row["recipe"].startswith("edgekit"):
            row["native_median_ms"] = native_median(Path(row["path"]), args.runs)
    return {"labelled": labelled, "rows": rows, "source_accuracy": report["source_accuracy"]}


def prepare(name: str, work: Path, calib_samples: int) -> tuple[Path, Path, bool]:
    """A trained float Keras model (trained once and cached by edgekit.zoo) and its test split (x, y)."""
    from edgekit import pipeline, zoo
    work.mkdir(parents=True, exist_ok=True)
    paths = zoo.trained_reference(MODELS[name], pipeline.cache_dir())
    return paths["model"], paths["eval"], True


def peer_tflite(model_path: Path, work: Path, calib: np.ndarray, fp32_dir: Path) -> Path:
    import keras
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.saving.load_model(model_path))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    path = work / "peer.tflite"
    path.write_bytes(converter.convert())
    return path


def peer_onnx(model_path: Path, work: Path, calib: np.ndarray, fp32_dir: Path) -> Path:
    import onnx
    from onnxruntime.quantization import quantize_static
    source = fp32_dir / "model.onnx"
    name = onnx.load(str(source)).graph.input[0].name

    class Reader:
        def __init__(self):
            self.feeds = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.feeds, None)

    path = work / "peer.onnx"
    quantize_static(str(source), str(path), Reader())
    return path


def peer_openvino(model_path: Path, work: Path, calib: np.ndarray, fp32_dir: Path) -> Path:
    import nncf
    import openvino as ov
    model = ov.Core().read_model(str(fp32_dir / "model.xml"))
    quantized = nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]))
    path = work / "peer.xml"
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def files(path: Path) -> list[Path]:
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def run(path: Path, x: np.ndarray, runs: int) -> tuple[float, list]:
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", in0=x[:, None])
        subprocess.run([sys.executable, "-m", "edgekit.runner", str(path), "--threads", "1", "--runs", str(runs),
                        "--inputs", f"{tmp}/in.npz", "--outputs", f"{tmp}/out.npz", "--json", f"{tmp}/r.json"],
                       check=True, capture_output=True)
        result = json.loads(Path(tmp, "r.json").read_text())
        with np.load(Path(tmp) / "out.npz") as out:
            return result["latency_ms"]["median"], list(out["out0"])


def accuracy(outputs: list, labels: np.ndarray) -> float:
    return float(np.mean([np.argmax(o) == y for o, y in zip(outputs, labels)]))


def native_median(path: Path, runs: int) -> float | None:
    """The runtime's own benchmark tool on the same artifact, 1 thread."""
    if path.suffix == ".tflite":
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([str(BIN / "litert-benchmark"), "--model", str(path), "--num_threads", "1",
                            "--num_runs", str(runs), "--warmup_runs", "10", "--result_json", f"{tmp}/r.json"],
                           check=True, capture_output=True)
            return json.loads(Path(tmp, "r.json").read_text())["latency"]["median_ms"]
    if path.suffix == ".xml":
        # -infer_precision f32: edgekit pins f32 too; on bf16-capable CPUs benchmark_app would otherwise run bf16
        proc = subprocess.run([str(BIN / "benchmark_app"), "-m", str(path), "-d", "CPU", "-hint", "none",
                               "-nstreams", "1", "-nthreads", "1", "-niter", str(runs), "-api", "sync",
                               "-infer_precision", "f32"],
                              check=True, capture_output=True, text=True)
        match = re.search(r"Median:\s+([\d.]+) (ms|us)", proc.stdout)
        return float(match.group(1)) / (1000 if match.group(2) == "us" else 1) if match else None
    return None


def print_rows(result: dict) -> None:
    what = "accuracy" if result["labelled"] else "agreement with float"
    print(f"| format | recipe | {what} | size KiB | median ms (edgekit runner) | native tool median ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(result["rows"], key=lambda r: (r["format"], r["recipe"])):
        if "error" in r:
            print(f"| {r['format']} | {r['recipe']} | failed: {r['error']} | | | | |")
            continue
        native = r.get("native_median_ms")
        ratio = f"{r['median_ms'] / native:.2f}" if native else "-"
        print(f"| {r['format']} | {r['recipe']} | {r['accuracy']:.2%} | {r['bytes'] / 1024:.1f} | "
              f"{r['median_ms']:.4f} | {native if native is not None else '-'} | {ratio} |")


def print_targets(results: dict) -> None:
    print("\n## Targets")
    for name, result in results.items():
        rows = result["rows"]
        for fmt in ("tflite", "onnx", "openvino"):
            ours = next((r for r in rows if r["format"] == fmt and r["recipe"] == "edgekit int8" and "error" not in r), None)
            base = next((r for r in rows if r["format"] == fmt and r["recipe"] == "edgekit fp32" and "error" not in r), None)
            peer = next((r for r in rows if r["format"] == fmt and r["recipe"] == "peer default int8"), None)
            if not (ours and base and peer):
                continue
            print(f"- {name} {fmt}: size {ours['bytes'] / base['bytes']:.2f}x fp32; latency "
                  f"{ours['median_ms'] / base['median_ms']:.2f}x fp32; accuracy edgekit {ours['accuracy']:.2%} vs "
                  f"peer {peer['accuracy']:.2%} ({'ok' if ours['accuracy'] >= peer['accuracy'] else 'BELOW PEER'})")


if __name__ == "__main__":
    main()
