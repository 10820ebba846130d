"""fp32 against int8 artifacts timed interleaved, one process at a time under edgekit's host timing lock, with
litert-benchmark beside each .tflite (a benchmark that prints figures; not a test).

Each round runs every file once in a fresh process (LiteRT interpreter or onnxruntime session, one thread,
10 warm-up runs, then --runs timed) and, for a .tflite, litert-benchmark --num_threads 1 once. It prints per
file the median across rounds, the quietest round (the minimum: on a shared host int8 figures swing far more
than fp32 ones) and litert-benchmark's median. The load average before and after is printed: quote it.

    python benchmarks/int8_speed.py [--rounds 5] [--runs 100] FILE...
    python benchmarks/int8_speed.py --narrow-convs     # XNNPACK int8 vs fp32 on stacks of 1x1 convs, 16/64/128 wide

Artifacts: `python benchmarks/precisions.py --out DIR` writes DIR/<model>/convert/{fp32/,}model.tflite.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from precisions import tool

CHILD = r"""
import sys, time, numpy as np
path, runs = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
if path.endswith(".tflite"):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], rng.random(d["shape"]).astype(d["dtype"]))
    step = it.invoke
else:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in session.get_inputs()}
    step = lambda: session.run(None, feeds)
for _ in range(10):
    step()
times = []
for _ in range(runs):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(1000 * float(np.median(times)))
"""


def litert_benchmark(path: str, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([tool("litert-benchmark"), "--model", path, "--num_threads", "1", "--num_runs", str(runs),
                        "--result_json", f"{tmp}/r.json"], check=True, capture_output=True)
        return json.loads(Path(tmp, "r.json").read_text())["latency"]["median_ms"]


def measure(files: list[str], rounds: int, runs: int) -> None:
    from edgekit import timing
    ours: dict[str, list[float]] = {f: [] for f in files}
    peer: dict[str, list[float]] = {f: [] for f in files}
    print(f"host load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    with timing.host_lock():
        for _ in range(rounds):
            for f in files:
                proc = subprocess.run([sys.executable, "-c", CHILD, f, str(runs)], capture_output=True, text=True,
                                      check=True)
                ours[f].append(float(proc.stdout.strip().splitlines()[-1]))
                if f.endswith(".tflite"):
                    peer[f].append(litert_benchmark(f, runs))
    print(f"host load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| file | median ms | quietest ms | litert-benchmark median ms |\n|---|---|---|---|")
    for f in files:
        lite = f"{np.median(peer[f]):.3g}" if peer[f] else "-"
        print(f"| {f} | {np.median(ours[f]):.3g} | {min(ours[f]):.3g} | {lite} |")


def narrow_convs(folder: Path) -> list[str]:
    """Eight stacked 1x1 convolutions at 96x96x16, 24x24x64 and 12x12x128, in fp32 and in int8 (TFLiteConverter)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf
    files = []
    for channels, side in ((16, 96), (64, 24), (128, 12)):
        x = keras.Input((side, side, channels), batch_size=1)
        y = x
        for _ in range(8):
            y = keras.layers.Conv2D(channels, 1)(y)
        model = keras.Model(x, y)
        for int8 in (False, True):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if int8:
                rng = np.random.default_rng(0)
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: ([rng.random((1, side, side, channels), np.float32)]
                                                            for _ in range(4))
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            path = folder / f"conv1x1_{side}x{side}x{channels}_{'int8' if int8 else 'fp32'}.tflite"
            path.write_bytes(converter.convert())
            files.append(str(path))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--narrow-convs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = args.files + (narrow_convs(Path(tmp)) if args.narrow_convs else [])
        if not files:
            parser.error("give artifacts to time, or --narrow-convs")
        measure(files, args.rounds, args.runs)


if __name__ == "__main__":
    main()
