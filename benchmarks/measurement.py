"""edgekit's own measurements against independent ones (a benchmark that prints figures; not a test).

For each zoo model it runs `edgekit.convert(..., target="cpu-int8")` (fp32 baseline + int8 in
TFLite, ONNX and OpenVINO) and then, for every artifact, at 1 thread:
  * latency: edgekit's reported median (median of runner-process medians, interleaved) against
    the runtime's own tool: `litert-benchmark` (.tflite), `benchmark_app` (.xml), and a bare
    onnxruntime loop (`session.run` timed in a plain Python loop, .onnx); the peers run under
    edgekit's host timing lock, one at a time;
  * peak memory: the report's figure against `/usr/bin/time -v` (maximum resident set size) of the
    runner alone on the same artifact and input.
It prints the ratios. The target is ±10% for artifacts of 1 ms or more; below that, the table says
how many microseconds per call separate the two, which is the per-call cost of the Python binding
(edgekit times `invoke()` / `run_with_iobinding()` from Python, the C++ tools time the kernel loop).

    python benchmarks/measurement.py [--models digits,resnet8,ds-cnn,mobilenet] [--runs 200] [--out DIR]

All figures are measured on this host; note its load (printed) when you quote them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BIN = Path(sys.executable).parent
MODELS = {"digits": "digits-cnn", "resnet8": "resnet8", "ds-cnn": "ds-cnn", "mobilenet": "mobilenet-v1-0.25"}
TOLERANCE = 0.10

ORT_LOOP = """
import sys, time, json, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
with np.load(sys.argv[2]) as npz:
    x = npz["in0"][0]
feed = {session.get_inputs()[0].name: x}
for _ in range(int(sys.argv[4])):
    session.run(None, feed)
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter_ns(); session.run(None, feed); times.append((time.perf_counter_ns() - t0) / 1e6)
print(json.dumps({"median_ms": float(np.median(times))}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet8,ds-cnn,mobilenet")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-measurement"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"host load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, args)
    print(f"host load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    (args.out / "measurement.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_rows(rows)
    print(f"\nwrote {args.out / 'measurement.json'}")


def bench_model(name: str, args) -> list[dict]:
    import edgekit
    from edgekit import context, timing, zoo
    paths = zoo.trained_reference(MODELS[name], context.cache_dir())
    out = args.out / name
    print(f"converting {name} (cpu-int8) ...", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # converters' progress bars: stdout is for the table
        report = edgekit.convert(paths["model"], target="cpu-int8", data=paths["eval"], out=out, force=True,
                                 runs=args.runs, threads=1)
    with np.load(paths["eval"]) as npz:
        sample = npz["x"][:1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in.npz"
        np.savez(inputs, in0=sample[None])
        for artifact in report["artifacts"]:
            if artifact["status"] != "ok":
                continue
            path = out / artifact["file"]
            with timing.host_lock():
                peer_name, peer_ms = peer(path, inputs, args.runs)
                alone_mib = time_v_peak(path, inputs, args.runs)
            lat = artifact["latency_ms"]
            rows.append({"model": name, "format": artifact["format"], "precision": artifact["precision"],
                         "edgekit_ms": lat["median"], "cv": lat["cv"], "unstable": lat["unstable"],
                         "process_medians": lat["process_medians"], "peer": peer_name, "peer_ms": peer_ms,
                         "edgekit_peak_mib": artifact["memory"]["peak_rss_mib"], "time_v_peak_mib": alone_mib})
    return rows


def peer(path: Path, inputs: Path, runs: int) -> tuple[str, float | None]:
    """The runtime's own benchmark tool (or a bare loop) on the artifact, 1 thread."""
    if path.suffix == ".tflite":
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([str(BIN / "litert-benchmark"), "--model", str(path), "--num_threads", "1",
                            "--num_runs", str(runs), "--warmup_runs", "10", "--result_json", f"{tmp}/r.json"],
                           check=True, capture_output=True)
            return "litert-benchmark", json.loads(Path(tmp, "r.json").read_text())["latency"]["median_ms"]
    if path.suffix == ".xml":
        # -infer_precision f32: edgekit pins f32 too; on bf16-capable CPUs benchmark_app would otherwise run bf16
        proc = subprocess.run([str(BIN / "benchmark_app"), "-m", str(path), "-d", "CPU", "-hint", "none",
                               "-nstreams", "1", "-nthreads", "1", "-niter", str(runs), "-api", "sync",
                               "-infer_precision", "f32"], check=True, capture_output=True, text=True)
        match = re.search(r"Median:\s+([\d.]+) (ms|us)", proc.stdout)
        return "benchmark_app", float(match.group(1)) / (1000 if match.group(2) == "us" else 1) if match else None
    proc = subprocess.run([sys.executable, "-c", ORT_LOOP, str(path), str(inputs), str(runs), "10"],
                          check=True, capture_output=True, text=True)
    return "onnxruntime loop", json.loads(proc.stdout)["median_ms"]


def time_v_peak(path: Path, inputs: Path, runs: int) -> float:
    """Maximum resident set size of the runner alone, as GNU time reports it (MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "edgekit.runner", str(path), "--threads",
                               "1", "--runs", str(runs), "--inputs", str(inputs), "--json", f"{tmp}/r.json"],
                              check=True, capture_output=True, text=True)
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024


def verdict(row: dict) -> str:
    if row["peer_ms"] is None:
        return "no peer figure"
    ratio = row["edgekit_ms"] / row["peer_ms"]
    if row["peer_ms"] >= 1.0:
        return "within ±10%" if abs(ratio - 1) <= TOLERANCE else f"OUTSIDE ±10% ({ratio:.2f}x)"
    gap_us = (row["edgekit_ms"] - row["peer_ms"]) * 1000
    if row["peer"] == "litert-benchmark" and row["peer_ms"] < 0.1:
        return f"< 1 ms: litert-benchmark reports in 0.01 ms steps, too coarse here ({gap_us:+.1f} µs)"
    if row["unstable"]:
        return f"< 1 ms, UNSTABLE here: machine load dominates ({gap_us:+.1f} µs)"
    return f"< 1 ms: {gap_us:+.1f} µs per call (per-call cost of the Python binding, timer, and the peer's own noise)"


def print_rows(rows: list[dict]) -> None:
    print("\n| model | format | precision | edgekit median ms (CV) | peer | peer median ms | ratio | "
          "edgekit peak MiB | time -v MiB | mem ratio | latency verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['edgekit_ms'] / r['peer_ms']:.2f}" if r["peer_ms"] else "-"
        cv = f"{r['cv']:.0%}{' UNSTABLE' if r['unstable'] else ''}"
        print(f"| {r['model']} | {r['format']} | {r['precision']} | {r['edgekit_ms']:.4g} ({cv}) | {r['peer']} | "
              f"{r['peer_ms']:.4g} | {ratio} | {r['edgekit_peak_mib']:.0f} | {r['time_v_peak_mib']:.0f} | "
              f"{r['edgekit_peak_mib'] / r['time_v_peak_mib']:.2f} | {verdict(r)} |")


if __name__ == "__main__":
    main()
