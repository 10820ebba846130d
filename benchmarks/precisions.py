"""fp32, the host's native precision (bf16) and int8 per backend on real corpus models, beside the runtimes'
own tools at their defaults (a benchmark that prints figures; not a test).

For each model it runs `edgekit convert MODEL --target cpu-int8` on real inputs (benchmarks/corpus_inputs.py:
a scored --data set and a disjoint --calib set), which builds per format the fp32 baseline, int8 and,
where this host runs it natively, OpenVINO bf16 (the fp32 IR with INFERENCE_PRECISION_HINT=bf16). Then,
for every artifact, the runtime's own tool, one thread, under edgekit's host timing lock:
  * .tflite: `litert-benchmark` (XNNPACK, its default);
  * .onnx: a bare onnxruntime loop (default session options, one intra-op thread) on edgekit's timing sample;
  * .xml: `benchmark_app` (one stream, one thread, sync: edgekit's latency setting) at the inference precision
    edgekit ran the IR with (f32, which edgekit pins for fp32 and int8 IRs; bf16 for the native row), and
    again at its own default precision (bf16 on AVX512-BF16/AMX CPUs: the figure users see), shown beside.
Each artifact is timed by edgekit's runner (one process) and by its peer alternately, 3 times each, on the
same sample; edgekit/peer is the ratio of those medians (interleaved, so not a drift of the host between
phases). It prints one table (convert's latency, ratio to the format's fp32, fidelity, the interleaved
runner and peer figures, edgekit/peer) and each model's `recommended` line.

    python benchmarks/precisions.py [--models mp_face_landmark,ppocr_cls,ppocr_rec] [--runs 100] [--out DIR] [--reuse]

--reuse times the artifacts of an earlier run in --out again instead of converting.

Needs the corpus (`make setup`). Every figure is measured on this host; the load average before and
after is printed: quote it with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from corpus import CORPUS  # noqa: E402
from measurement import ORT_LOOP  # noqa: E402

BIN = Path(sys.executable).parent
MODELS = "mp_face_landmark,ppocr_cls,ppocr_rec"


def tool(name: str) -> str:
    """A command of the environment: beside this Python, else on PATH (a worktree venv sharing another's packages)."""
    return str(BIN / name) if (BIN / name).is_file() else shutil.which(name) or name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-precisions"))
    parser.add_argument("--reuse", action="store_true", help="time the artifacts already converted in --out")
    args = parser.parse_args()
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"host load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    rows, recommended = [], {}
    for name in args.models.split(","):
        report = convert(name, CORPUS / manifest[name]["path"], args)
        recommended[name] = report.get("recommended") or {"reason": report.get("error", "failed")}
        rows += peers(name, report, args)
    print(f"host load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    (args.out / "precisions.json").write_text(json.dumps({"rows": rows, "recommended": recommended}, indent=2) + "\n")
    print_rows(rows, recommended)


def convert(name: str, model: Path, args) -> dict:
    from corpus_inputs import real_inputs
    work = args.out / name
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "data.npz", x=real_inputs(name, "eval"))
    np.savez(work / "calib.npz", x=real_inputs(name, "calib"))
    out = work / "convert"
    if args.reuse and (out / "report.json").is_file():
        return {**json.loads((out / "report.json").read_text()), "out": str(out)}
    print(f"converting {name} (cpu-int8: fp32, int8, native bf16) ...", file=sys.stderr, flush=True)
    proc = subprocess.run([tool("edgekit"), "convert", str(model), "--target", "cpu-int8", "--data",
                           str(work / "data.npz"), "--calib", str(work / "calib.npz"), "--runs", str(args.runs),
                           "--out", str(out), "--force", "--quiet"], capture_output=True, text=True)
    if not (out / "report.json").is_file():
        return {"artifacts": [], "error": proc.stderr.strip().splitlines()[-1:] or ["no report"]}
    report = json.loads((out / "report.json").read_text())
    report["out"] = str(out)
    return report


def peers(name: str, report: dict, args) -> list[dict]:
    from edgekit import timing
    rows = []
    sample = args.out / name / "timing-in.npz"  # the sample edgekit times with (timing.one_sample: the first scored)
    with np.load(args.out / name / "data.npz") as npz:
        np.savez(sample, in0=npz["x"][None, :1])
    for a in report["artifacts"]:
        row = {"model": name, "format": a["format"], "precision": a["precision"], "status": a["status"]}
        if a["status"] != "ok":
            rows.append({**row, "reason": a.get("reason", "")})
            continue
        lat, fid = a["latency_ms"], a["fidelity"]
        row.update(edgekit_ms=lat["median"], cv=lat["cv"], unstable=lat["unstable"],
                   vs_fp32=(a.get("vs_fp32") or {}).get("latency"), verified=fid["verified"],
                   fidelity=_fidelity(fid))
        path = Path(report["out"]) / a["file"]
        with timing.host_lock():
            row.update(interleaved(path, a["precision"], args, sample))
            if path.suffix == ".xml":
                row["default"], row["default_ms"] = benchmark_app(path, args.runs, None)
        rows.append(row)
    return rows


def interleaved(path: Path, precision: str, args, sample: Path) -> dict:
    """edgekit's runner (one process, the settings convert timed with) and the peer, alternately, ROUNDS
    times each on the same sample: the ratio of their medians is not a drift of the host between two phases
    (on a quiet 2-core host one process's median moves by up to 8% from run to run)."""
    ours, theirs, label = [], [], ""
    for _ in range(ROUNDS):
        ours.append(runner_median(path, args.runs, sample))
        label, ms = peer(path, precision, args.runs, sample)
        theirs.append(ms)
    theirs = [t for t in theirs if t]
    return {"runner_ms": float(np.median(ours)), "peer": label,
            "peer_ms": float(np.median(theirs)) if theirs else None}


ROUNDS = 3


def runner_median(path: Path, runs: int, sample: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "edgekit.runner", str(path), "--threads", "1", "--warmup", "10",
                        "--runs", str(runs), "--inputs", str(sample), "--json", f"{tmp}/r.json"],
                       check=True, capture_output=True)
        return json.loads(Path(tmp, "r.json").read_text())["latency_ms"]["median"]


def _fidelity(fid: dict) -> str:
    outputs = fid.get("outputs") or []
    snr = [o["snr_db"] for o in outputs if o.get("snr_db") is not None]
    return f"SNR {min(snr):.1f} dB" if snr else f"cosine {fid['cosine']:.4f}"


def peer(path: Path, precision: str, runs: int, sample: Path) -> tuple[str, float | None]:
    """The runtime's own tool in the settings edgekit ran the artifact with (one thread; OpenVINO at the
    inference precision edgekit pins: f32, or the native row's bf16/fp16). litert-benchmark feeds its own
    random inputs (it takes raw files only per named layer); the onnxruntime loop gets edgekit's timing
    sample: a landmark model's median moves 14% between random and real inputs (3.6 against 3.1 ms)."""
    if path.suffix == ".tflite":
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([tool("litert-benchmark"), "--model", str(path), "--num_threads", "1",
                            "--num_runs", str(runs), "--result_json", f"{tmp}/r.json"], check=True, capture_output=True)
            return "litert-benchmark", json.loads(Path(tmp, "r.json").read_text())["latency"]["median_ms"]
    if path.suffix == ".xml":
        return benchmark_app(path, runs, NATIVE_HINTS.get(precision, "f32"))
    proc = subprocess.run([sys.executable, "-c", ORT_LOOP, str(path), str(sample), str(runs), "10"],
                          check=True, capture_output=True, text=True)
    return "onnxruntime loop", json.loads(proc.stdout)["median_ms"]


NATIVE_HINTS = {"bf16": "bf16", "fp16": "f16"}


def benchmark_app(path: Path, runs: int, hint: str | None) -> tuple[str, float | None]:
    """benchmark_app on one stream, one thread, sync (edgekit's latency setting); `hint`: -infer_precision,
    None for its default (bf16 on AVX512-BF16/AMX CPUs: the figure users see)."""
    pinned = ["-infer_precision", hint] if hint else []
    proc = subprocess.run([tool("benchmark_app"), "-m", str(path), "-d", "CPU", "-hint", "none",
                           "-nstreams", "1", "-nthreads", "1", "-api", "sync", "-niter", str(runs), *pinned],
                          capture_output=True, text=True)
    match = re.search(r"Median:\s+([\d.]+) (ms|us)", proc.stdout)
    default = re.search(r"INFERENCE_PRECISION_HINT: (?:<Type: ')?(\w+)", proc.stdout)
    label = f"benchmark_app -infer_precision {hint}" if hint else \
        f"benchmark_app default ({default.group(1) if default else '?'})"
    return label, float(match.group(1)) / (1000 if match.group(2) == "us" else 1) if match else None


def print_rows(rows: list[dict], recommended: dict) -> None:
    print("\n| model | format | precision | convert's median ms (CV) | × fp32 | fidelity | edgekit runner ms, "
          "interleaved | peer, edgekit's settings | peer median ms | edgekit / peer | benchmark_app at its default |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['model']} | {r['format']} | {r['precision']} | FAILED: {r['reason'][:80]} | | | | | | | |")
            continue
        cv = f"{r['cv']:.0%}{' UNSTABLE' if r['unstable'] else ''}"
        ratio = f"{r['runner_ms'] / r['peer_ms']:.2f}" if r["peer_ms"] else "-"
        vs = f"{r['vs_fp32']:.2f}" if r["vs_fp32"] else "-"
        peer_ms = f"{r['peer_ms']:.4g}" if r["peer_ms"] else "-"
        print(f"| {r['model']} | {r['format']} | {r['precision']} | {r['edgekit_ms']:.4g} ({cv}) | {vs} | "
              f"{r['fidelity']}{'' if r['verified'] else ' MISMATCH'} | {r['runner_ms']:.4g} | {r['peer']} | {peer_ms} | "
              f"{ratio} | "
              f"{_default(r)} |")
    print()
    for name, rec in recommended.items():
        artifact = rec.get("artifact")
        print(f"- {name}: recommended {artifact['format'] + ' ' + artifact['precision'] if artifact else 'none'}: "
              f"{rec['reason']}")


def _default(row: dict) -> str:
    if not row.get("default_ms"):
        return "-"
    return f"{row['default_ms']:.4g} ms ({row['default'].split('(')[-1].rstrip(')')})"


if __name__ == "__main__":
    main()
