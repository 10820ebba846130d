"""Arm Ethos-U through Vela on the zoo and the corpus: NPU coverage, and Vela's cycle estimate against
edgekit's own MAC-array cycle model on the same MACs/cycle, clock and bandwidth (a benchmark that
prints figures; not a test). Used to calibrate the cycle model's efficiency factors
(docs/ACCELERATOR.md, "Calibration against Vela").

    python benchmarks/npu.py [--models a,b] [--configs ethos-u55-128,ethos-u65-256] [--out DIR]
                             [--table-only] [--fit] [--retry]

1. build: an int8 (int8 I/O) .tflite per model. Zoo models (models/: digits CNN trained, the MLPerf
   Tiny architectures with random weights) through `zoo.full_integer_tflite` with random calibration;
   corpus models (~/.cache/edgekit/corpus, `make setup`) through `edgekit convert --target
   ethos-u55-128` in a child (benchmarks/corpus.py's convert, with its real inputs for data and
   calibration), whose int8 model.tflite is kept.
2. compile: each .tflite through Vela for each configuration (the built-in profiles of that name),
   and edgekit's cycle model on Vela's placement, per layer at ideal efficiency (compute and memory
   cycles kept apart, so factors can be fitted without recompiling).
   A rerun with the same --out reuses the built models (and the recorded build failures: --retry)
   and compiles them again.
3. table: coverage, CPU-fallback ops, Vela's cycles, edgekit's cycles with the profile's factors and
   the ratio; --fit searches the factors per accelerator family that put most models within 1.5x.
Figures are Vela's estimate and edgekit's estimate; nothing here runs on an NPU. Random weights say
nothing about accuracy and nothing is claimed about it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
ZOO = ("digits-cnn", "resnet8", "ds-cnn", "mobilenet-v1-0.25")
SLOW_LAST = ("layout_picodet", "keras_densenet121", "ddddocr_crnn", "ddddocr_crnn_int8")  # longest conversions
WITHIN = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated; default: the zoo and every corpus model")
    parser.add_argument("--configs", default="ethos-u55-128,ethos-u65-256")
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-npu"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per corpus conversion")
    parser.add_argument("--table-only", action="store_true", help="print from --out/npu.json, build nothing")
    parser.add_argument("--fit", action="store_true", help="search the efficiency factors per family")
    parser.add_argument("--retry", action="store_true", help="try again to build the models that failed before")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "npu.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    configs = args.configs.split(",")
    names = [n for n in args.models.split(",") if n] or \
        [*ZOO, *sorted(corpus_manifest(), key=lambda n: (n in SLOW_LAST, SLOW_LAST.index(n) if n in SLOW_LAST else 0, n))]
    for name in names if not args.table_only else []:
        entry = results.setdefault(name, {})
        if "error" not in entry or args.retry:  # a model that could not be built is not tried again
            print(f"{name}: building the int8 model", file=sys.stderr, flush=True)
            entry.pop("error", None)
            entry.update(build(name, args))
        for config in configs if "tflite" in entry else []:
            print(f"{name}: Vela for {config}", file=sys.stderr, flush=True)
            entry[config] = compile_one(Path(entry["tflite"]), config, args.out / name / config)
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    names = [n for n in names if n in results]
    factors = fit(results, configs) if args.fit else {}
    print_table(results, names, configs, factors)


def corpus_manifest() -> dict:
    from corpus import CORPUS
    path = CORPUS / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def build(name: str, args) -> dict:
    """{"tflite": path} of the model's int8 .tflite, or {"error": why}."""
    path = args.out / name / "model.tflite"
    if path.is_file():
        return {"tflite": str(path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if name in ZOO:
        return {"tflite": str(zoo_tflite(name, path)), "source": "zoo"}
    import corpus
    manifest = corpus_manifest()
    if manifest[name]["path"].endswith(".keras"):  # built in code (random weights): quantized directly
        return {"tflite": str(keras_tflite(corpus.CORPUS / manifest[name]["path"], path)), "source": "corpus"}
    ns = SimpleNamespace(dir=corpus.CORPUS, out=args.out / "convert", runs=1, warmup=0, timeout=args.timeout,
                         inputs="real", mixed="")
    result = corpus.convert(name, manifest[name], "ethos-u55-128", ns)
    built = args.out / "convert" / name / "ethos-u55-128" / "model.tflite"
    if "error" in result or not built.is_file():
        reason = result.get("error") or next((a.get("reason") for a in result.get("artifacts", [])
                                              if a["precision"] != "fp32"), "no int8 model")
        return {"error": f"no int8 TFLite: {reason}", "source": "corpus"}
    path.write_bytes(built.read_bytes())
    return {"tflite": str(path), "source": "corpus", "input_unchanged": result["input_unchanged"]}


def zoo_tflite(name: str, path: Path) -> Path:
    from edgekit import pipeline, zoo
    if name == "digits-cnn":  # the bundled model, trained; calibrated on its own data
        import keras
        paths = zoo.trained_reference(name, pipeline.cache_dir())
        model, data = keras.models.load_model(paths["model"]), np.load(paths["eval"])["x"][:100]
    else:  # the architecture with random weights: structure and speed only
        model = zoo.build(name)
        data = np.random.default_rng(0).random((64, *model.input_shape[1:]), dtype=np.float32)
    return zoo.full_integer_tflite(model, data.astype(np.float32), path)


def keras_tflite(model_path: Path, path: Path) -> Path:
    import keras
    from edgekit import zoo
    model = keras.models.load_model(model_path)
    data = np.random.default_rng(0).random((16, *model.input_shape[1:]), dtype=np.float32) * 255
    return zoo.full_integer_tflite(model, data, path)


def compile_one(model: Path, config: str, out: Path) -> dict:
    """Vela's figures and edgekit's per-layer cycles at ideal efficiency for one configuration."""
    import dataclasses
    from edgekit import targets
    from edgekit.errors import ConversionError
    from edgekit.passes import _vela as vela
    from edgekit.passes import vela as vela_pass
    profile = targets.get_target(config).profile
    try:
        fig = vela.compile(model, vela_pass.configure(profile, None), out)
    except ConversionError as exc:
        return {"error": str(exc)}
    ideal = dataclasses.replace(vela.accel_spec(profile.device, profile.accelerator, fig), compute_efficiency=1.0,
                                dram_efficiency=1.0, layer_overhead_cycles=0)
    est = vela.placed_cycles(model, ideal, {f["index"] for f in fig["fallback"]})
    return {"ops": fig["ops"], "fallback": [f"{f['op']} ({f['reason']})" for f in fig["fallback"]],
            "vela_cycles": fig["cycles"]["total"], "vela_ms": fig["inference_ms"], "vela_npu_cycles": fig["cycles"]["npu"],
            "macs": fig["macs"], "sram_bytes": fig["memory_used_bytes"].get("SRAM", 0),
            "layers": [[layer["compute_cycles"], layer["weight_traffic_bytes"], layer["activation_bytes"]]
                       for layer in est["layers"]],
            "bytes_per_cycle": ideal.dram_gbps * 1e3 / ideal.clock_mhz, "activations_offchip": ideal.activations_offchip,
            "onchip_bytes_per_cycle": ideal.onchip_gbps * 1e3 / ideal.clock_mhz,
            "spec": dataclasses.asdict(ideal) | {"ops": []}}


def model_cycles(x: dict, factors: tuple[float, float, float]) -> float:
    """edgekit's total cycles for one compiled model with these factors (the sum cycles() makes, without
    its rounding up per layer)."""
    ce, de, overhead = factors
    dram, local, offchip = x["bytes_per_cycle"] * de, x.get("onchip_bytes_per_cycle", 0) * de, x["activations_offchip"]
    return sum(max(c / ce, (w + (a if offchip else 0)) / dram, 0 if offchip or not local else a / local) + overhead
               for c, w, a in x["layers"])


def profile_factors(config: str) -> tuple[float, float, float]:
    from edgekit import targets
    acc = targets.get_target(config).profile.accelerator
    return acc.compute_efficiency, acc.dram_efficiency, acc.layer_overhead_cycles


def fit(results: dict, configs: list[str]) -> dict[str, tuple[float, float, float]]:
    """Per configuration: the factors on a grid that put the most models within WITHIN of Vela, ties
    broken by the smallest mean |log ratio|."""
    found = {}
    for config in configs:
        rows = [r[config] for r in results.values() if "error" not in r.get(config, {"error": 1})]
        best = None
        for ce in np.linspace(0.05, 1.0, 20):
            for de in np.linspace(0.05, 1.0, 20):
                for overhead in (0, 250, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000):
                    logs = [abs(math.log(model_cycles(r, (ce, de, overhead)) / r["vela_cycles"]))
                            for r in rows if r["vela_cycles"]]
                    score = (sum(v <= math.log(WITHIN) for v in logs), -float(np.mean(logs)))
                    if best is None or score > best[0]:
                        best = (score, (round(float(ce), 3), round(float(de), 3), overhead))
        found[config] = best[1]
        print(f"fit {config}: compute_efficiency={best[1][0]}, dram_efficiency={best[1][1]}, "
              f"layer_overhead_cycles={best[1][2]}: {best[0][0]} of {len(rows)} within {WITHIN}x, mean |log ratio| "
              f"{-best[0][1]:.3f}", file=sys.stderr)
    return found


def print_table(results: dict, names: list[str], configs: list[str], fitted: dict) -> None:
    """One row per model: coverage and CPU fallback per configuration, Vela's estimate, and edgekit's
    cycles over Vela's at ideal efficiency and with the profile's (or the fitted) factors."""
    header = ["model", "ops", *[f"{c}: on NPU" for c in configs], f"CPU fallback ({configs[0]})"]
    header += [f"{c}: Vela cycles (ms), edgekit/Vela ideal -> calibrated" for c in configs]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    inside = {c: [0, 0, 0, []] for c in configs}
    for name in names:
        r = results[name]
        if "error" in r:
            print(f"| {name} | - | " + " | ".join(["-"] * (len(header) - 3)) + f" | not built: {r['error'][:150]} |")
            continue
        compiled = {c: r.get(c, {"error": "not compiled"}) for c in configs}
        first = next((x for x in compiled.values() if "error" not in x), None)
        cells = [name, str(first["ops"]["total"]) if first else "-"]
        cells += [f"{x['ops']['npu']}/{x['ops']['total']}" if "error" not in x else "not compiled"
                  for x in compiled.values()]
        x0 = compiled[configs[0]]
        cells.append((", ".join(sorted({f.split(" (")[0] for f in x0["fallback"]})) or "none")  # reasons: npu.json
                     if "error" not in x0 else x0["error"][:150])
        for c, x in compiled.items():
            if "error" in x:
                cells.append("-")
                continue
            ideal = model_cycles(x, (1, 1, 0)) / x["vela_cycles"]
            ratio = model_cycles(x, fitted.get(c) or profile_factors(c)) / x["vela_cycles"]
            inside[c][0] += 1
            inside[c][1] += 1 / WITHIN <= ratio <= WITHIN
            inside[c][2] += 1 / WITHIN <= ideal <= WITHIN
            if not 1 / WITHIN <= ratio <= WITHIN:
                inside[c][3].append(f"{name} {ratio:.2f}x")
            cells.append(f"{x['vela_cycles']:,} ({x['vela_ms']:.3g}), {ideal:.2f} -> {ratio:.2f}")
        print("| " + " | ".join(cells) + " |")
    for c, (n, ok, ok_ideal, outside) in inside.items():
        factors = fitted.get(c) or profile_factors(c)
        print(f"\n{c}: {ok} of {n} models within {WITHIN}x of Vela with (compute_efficiency, dram_efficiency, "
              f"layer_overhead_cycles) = {factors}; {ok_ideal} of {n} at ideal efficiency. Outside: "
              f"{', '.join(outside) or 'none'}")

if __name__ == "__main__":
    main()
