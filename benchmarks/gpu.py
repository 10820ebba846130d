"""The `gpu` target's fp16 against its fp32 on a real GPU, timed by edgekit's own runner (a benchmark that
prints figures; not a test).

Two halves, because the machine with the GPU need not have edgekit's converters:
  build (here):  python benchmarks/gpu.py build --models ppocr_rec,keras_efficientnet_b0 --out DIR
                 runs `edgekit convert MODEL --target gpu --format onnx` on real inputs (corpus_inputs.py) and
                 writes DIR/MODEL/{fp32.onnx,fp16.onnx,in.npz}: everything the GPU host needs.
  time (there):  python benchmarks/gpu.py time DIR [--rounds 3 --runs 300]
                 needs only numpy, onnxruntime-gpu and edgekit's runner (PYTHONPATH with edgekit -> toolchain/):
                 per model, fp32 and fp16 alternately on the CUDA provider, `rounds` runner processes each, and
                 both against fp32 on the CPU for fidelity (SNR, cosine, top-1). Every figure is measured on
                 that GPU host; the per-round medians are printed so drift (clock ramp-up) shows.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CORPUS = Path.home() / ".cache" / "edgekit" / "corpus"


def build(args) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from corpus_inputs import real_inputs
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    for name in args.models.split(","):
        work = args.out / name
        work.mkdir(parents=True, exist_ok=True)
        x = real_inputs(name, "eval")[:8]
        np.savez(work / "data.npz", x=x)
        np.savez(work / "in.npz", in0=x[:, None])
        subprocess.run(["edgekit", "convert", str(CORPUS / manifest[name]["path"]), "--target", "gpu", "--format",
                        "onnx", "--data", str(work / "data.npz"), "--out", str(work / "convert"), "--force",
                        "--quiet"], check=True)
        (work / "fp16.onnx").write_bytes((work / "convert" / "model.onnx").read_bytes())
        (work / "fp32.onnx").write_bytes((work / "convert" / "fp32" / "model.onnx").read_bytes())
        print(f"{name}: {work}/fp32.onnx, fp16.onnx, in.npz")


def run(model: Path, inputs: Path, device: str, runs: int, warmup: int, outputs: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--outputs", str(outputs)] if outputs else []
        subprocess.run([sys.executable, "-m", "edgekit.runner", str(model), "--device", device, "--runs", str(runs),
                        "--warmup", str(warmup), "--inputs", str(inputs), "--json", f"{tmp}/r.json", *extra], check=True)
        return json.loads(Path(tmp, "r.json").read_text())


def fidelity(ref: Path, out: Path) -> str:
    with np.load(ref) as a_npz, np.load(out) as b_npz:
        a, b = (np.asarray(z[sorted(z.files)[0]], np.float64) for z in (a_npz, b_npz))
    snr = 10 * np.log10((a ** 2).sum() / max(((a - b) ** 2).sum(), 1e-30))
    cosine = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
    return f"SNR {snr:.1f} dB, cosine {cosine:.6f}, top-1 {(a.argmax(-1) == b.argmax(-1)).mean():.1%}"


def time_models(args) -> None:
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        sys.exit(f"no GPU here: onnxruntime {onnxruntime.__version__} has no CUDA provider (install onnxruntime-gpu on "
                 "a host with an NVIDIA GPU and run this step there)")
    for work in sorted(p for p in args.dir.iterdir() if (p / "fp16.onnx").is_file()):
        with tempfile.TemporaryDirectory() as tmp:
            ref = Path(tmp) / "cpu.npz"
            run(work / "fp32.onnx", work / "in.npz", "cpu", 3, 1, ref)
            medians = {"fp32": [], "fp16": []}
            for i in range(args.rounds):
                for precision in medians:
                    out = Path(tmp) / f"{precision}.npz" if i == 0 else None
                    result = run(work / f"{precision}.onnx", work / "in.npz", "gpu", args.runs, 50, out)
                    medians[precision].append(result["latency_ms"]["median"])
            ratios = [b / a for a, b in zip(medians["fp32"], medians["fp16"])]
            print(f"{work.name}: fp32 {', '.join(f'{m:.3g}' for m in medians['fp32'])} ms; fp16 "
                  f"{', '.join(f'{m:.3g}' for m in medians['fp16'])} ms; fp16/fp32 per round "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; fp16 vs fp32 on CPU: {fidelity(ref, Path(tmp) / 'fp16.npz')}"
                  f" (measured on {result['host']['hostname']}, {result['runtime']['name']} {result['runtime']['version']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build")
    b.add_argument("--models", default="ppocr_rec,keras_efficientnet_b0,keras_densenet121")
    b.add_argument("--out", type=Path, default=Path("edgekit-out/bench-gpu"))
    t = sub.add_parser("time")
    t.add_argument("dir", type=Path)
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    build(args) if args.step == "build" else time_models(args)


if __name__ == "__main__":
    main()
