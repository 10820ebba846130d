"""Convert every real-model corpus model and tabulate what came out (a benchmark that prints figures; not a test).

The corpus is fetched by `make setup` (benchmarks/corpus_fetch.py) into ~/.cache/edgekit/corpus.
Each model goes through `edgekit convert` in its own process, once per target. The cpu-int8 run
builds every format's fp32 baseline with the cpu target's converters and settings, so by default
those baselines are the cpu (fp32) artifacts: `--targets cpu,cpu-int8` converts for cpu separately.

    python benchmarks/corpus.py [--targets cpu-int8[,arm-int8]] [--models a,b] [--runs 20] [--out DIR]

Prints a markdown table (model x format x precision: status, fidelity, size, latency, recipe),
the success rate `built and verified / attempted` per precision, and every failure reason; writes
corpus.json to --out. There are no labels: fidelity is measured against the source model on the same
inputs. Models with dynamic dims get --data of the manifest's shape (no --input-shape). Every input file's
SHA-256 is compared before and after each conversion.

Inputs (`--inputs real`, the default) are real content preprocessed the way each model's own package does
(benchmarks/corpus_inputs.py: photos, faces, rendered text lines and pages, MNIST digits, real files'
bytes, real words): every model gets --data (24 samples, scored) and, for calibrated targets, a disjoint
--calib set (32 samples). `--inputs random` is the old behaviour: random inputs, --calib random (or a
held-apart slice of random --data for models with dynamic dims).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
CORPUS = Path(os.environ.get("EDGEKIT_CORPUS", Path.home() / ".cache/edgekit/corpus"))
SAMPLES = 48  # of random data for models with dynamic dims: scored and calibration slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="cpu-int8")
    parser.add_argument("--models", default="")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=CORPUS)
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-corpus"))
    parser.add_argument("--inputs", choices=("real", "random"), default="real",
                        help="real content preprocessed per model (default), or random data (the old behaviour)")
    parser.add_argument("--mixed", default="", help="pass --mixed MODE to edgekit convert (e.g. auto)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per model and target")
    parser.add_argument("--table-only", action="store_true", help="print the table from --out/corpus.json, convert nothing")
    parser.add_argument("--explain", action="store_true",
                        help="run `edgekit explain` on every MISMATCH artifact and name its first diverging op")
    args = parser.parse_args()
    manifest_path = args.dir / "manifest.json"
    if not manifest_path.is_file():
        sys.exit(f"no corpus in {args.dir}: run `make setup` (or python benchmarks/corpus_fetch.py)")
    manifest = json.loads(manifest_path.read_text())
    names = [n for n in args.models.split(",") if n] or sorted(manifest)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "corpus.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if args.table_only:
        names = [n for n in names if any(k.startswith(f"{n}|") for k in results)]
    for name in names if not args.table_only else []:
        for target in args.targets.split(","):
            started = time.time()
            print(f"converting {name} for {target}", file=sys.stderr, flush=True)
            results[f"{name}|{target}"] = convert(name, manifest[name], target, args)
            results[f"{name}|{target}"]["seconds"] = round(time.time() - started)
            results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    rows = table_rows(results, manifest, names, args.targets.split(","))
    if args.explain:
        explain_mismatches(rows, results, args.out)
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
        rows = table_rows(results, manifest, names, args.targets.split(","))
    print_table(rows, results)
    print(f"\nwrote {results_path}", file=sys.stderr)


def convert(name: str, entry: dict, target: str, args) -> dict:
    model = args.dir / entry["path"]
    out = args.out / name / target
    before = digest(model)
    cmd = [str(BIN / "edgekit"), "convert", str(model), "--target", target, "--out", str(out), "--force",
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--quiet"]
    cmd += input_flags(name, entry, target, args, out.parent)
    if args.mixed:
        cmd += ["--mixed", args.mixed]
    for fmt in getattr(args, "formats", None) or []:
        cmd += ["--format", fmt]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        error = None if (out / "report.json").is_file() else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if error and proc.returncode < 0:  # a native crash (e.g. inside a converter) says nothing on stderr
            error = f"edgekit was killed by signal {-proc.returncode} ({signal.Signals(-proc.returncode).name}): {error}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {args.timeout} s"
    result = {"input_unchanged": digest(model) == before, "command": " ".join(cmd)}
    if error:
        return {**result, "error": error}
    report = json.loads((out / "report.json").read_text())
    return {**result, "artifacts": report["artifacts"], "warnings": report["warnings"],
            "inputs": report["model"]["inputs"]}


def input_flags(name: str, entry: dict, target: str, args, folder: Path) -> list[str]:
    """--data (and --calib for calibrated targets) for one model: real inputs written once per model."""
    calibrated = target != "cpu" and not target.startswith("gpu")
    folder.mkdir(parents=True, exist_ok=True)
    if args.inputs == "real":
        from corpus_inputs import real_inputs
        data, calib = folder / "data.npz", folder / "calib.npz"
        np.savez(data, x=real_inputs(name, "eval"))
        np.savez(calib, x=real_inputs(name, "calib"))
        return ["--data", str(data)] + (["--calib", str(calib)] if calibrated else [])
    if entry.get("data_shape"):
        data = folder / "data.npz"
        shape = entry["data_shape"][1:]
        rng = np.random.default_rng(0)
        x = rng.integers(0, entry["data_ints"], (SAMPLES, *shape)).astype(np.int32) if entry.get("data_ints") \
            else rng.random((SAMPLES, *shape), dtype=np.float32)
        np.savez(data, x=x)
        return ["--data", str(data)]
    return ["--calib", "random"] if calibrated else []


def explain_mismatches(rows: list[dict], results: dict, out: Path) -> None:
    """`edgekit explain` on each MISMATCH artifact (once; kept in corpus.json): its first op below the gate."""
    for r in rows:
        result = results[f"{r['model']}|{r['target']}"]
        done = result.setdefault("explain", {})
        if r["status"] != "MISMATCH" or f"{r['format']}/{r['precision']}" in done:
            continue
        print(f"explaining {r['model']} {r['format']} {r['precision']}", file=sys.stderr, flush=True)
        proc = subprocess.run([str(BIN / "edgekit"), "explain", str(out / r["model"] / r["target"]), "--format",
                               r["format"], "--samples", "4", "--json"], capture_output=True, text=True)
        try:
            artifact = next(a for a in json.loads(proc.stdout)["artifacts"] if a.get("precision") == r["precision"])
            first = artifact.get("first_divergent")
            done[f"{r['format']}/{r['precision']}"] = (
                f"first op below {artifact['gate_db']:g} dB: {first['op_type']} '{first['op']}' (layer "
                f"{first['layer']}), SNR {first['snr_db']:.1f} dB" if first else
                f"no single op below {artifact['gate_db']:g} dB (the error builds up)")
        except (ValueError, KeyError, StopIteration):
            done[f"{r['format']}/{r['precision']}"] = "explain failed: " + \
                ((proc.stderr.strip().splitlines() or ["no output"])[-1])


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(f.read_bytes())
    return h.hexdigest()


def recipe(artifact: dict) -> str:
    """The conversion route, short: which onnx2tf recipe, whether quantization had to retry."""
    notes = artifact.get("notes", [])
    picked = [n.split(";")[0] for n in notes if n.startswith("onnx2tf recipe")]
    picked += ["int8 retried: " + n.rsplit("then ", 1)[-1] for n in notes if n.startswith("retried:")]
    return "; ".join(picked) or (notes[0] if notes else "")


def table_rows(results: dict, manifest: dict, names: list[str], targets: list[str]) -> list[dict]:
    from edgekit.report import fidelity_figure
    rows = []
    for name in names:
        for target in targets:
            result = results.get(f"{name}|{target}")
            if result is None:
                continue
            if "error" in result:  # edgekit built nothing: every artifact of the target counts as failed
                precisions = ("fp32", "int8") if target.endswith("-int8") else ("fp32",)
                rows += [{"model": name, "target": target, "format": fmt, "precision": precision, "status": "FAILED",
                          "reason": result["error"], "task": manifest[name]["task"]}
                         for fmt in ("tflite", "onnx", "openvino") for precision in precisions]
                continue
            for a in result["artifacts"]:
                row = {"model": name, "target": target, "format": a["format"], "precision": a["precision"],
                       "task": manifest[name]["task"], "recipe": recipe(a)}
                if a["status"] != "ok":
                    row.update(status="FAILED", reason=a["reason"])
                else:
                    row.update(status="verified" if a["fidelity"]["verified"] else "MISMATCH",
                               fidelity=fidelity_figure(a["fidelity"]), size_kib=a["size"]["bytes"] / 1024,
                               median_ms=a["latency_ms"].get("median"),
                               # a delivered-but-differing onnx2tf result: the other recipes' reasons name nodes
                               why=" | ".join([*([a["reason"]] if a.get("reason") else []),  # the op that diverges
                                               *(n for n in a.get("notes", []) if n.startswith("recipe "))]),
                               recipes=" | ".join(n for n in a.get("notes", []) if n.startswith("recipe ")),
                               explained=result.get("explain", {}).get(f"{a['format']}/{a['precision']}"))
                row.update(_mixed_columns(a, row))
                rows.append(row)
    return rows


def _mixed_columns(a: dict, row: dict) -> dict:
    """With --mixed auto: the same convert's plain int8 build judged on the scored samples (mixed.plain.scored),
    and what --mixed auto kept; an artifact that kept nothing is its own plain build."""
    m = a.get("mixed")
    if not m:
        return {}
    scored = (m.get("plain") or {}).get("scored")
    plain = ("verified" if scored["verified"] else "MISMATCH") if scored else row["status"]
    share = (m.get("int8_share") or {}).get("int8_share")
    stopped = "" if m.get("gate_met") else f"; --mixed auto: {m.get('rounds')} round(s), {len(m.get('kept') or [])} " \
        f"kept, {m.get('stopped') or 'gate not met'}" + (f" (whole-model {m['fallback']['precision']}: " \
        f"SNR {m['fallback'].get('snr_db') or 0:.1f} dB on calibration samples)" if m.get("fallback") else "")
    return {"group": (m.get("plain") or {}).get("precision") or row["precision"], "plain_status": plain,
            "plain_fidelity": fidelity_of(scored) if scored else row.get("fidelity", "-"), "mixed_stopped": stopped,
            "mixed_note": f"{m.get('rounds', '-')} round(s), {len(m.get('kept') or [])} kept"
                          + (f", {share:.0%} of MACs int8" if share is not None else "")
                          + (f", whole-model {m['fallback']['chosen']}" if (m.get("fallback") or {}).get("chosen") else "")}


def fidelity_of(fid: dict) -> str:
    from edgekit.report import fidelity_figure
    return fidelity_figure(fid)


def print_table(rows: list[dict], results: dict) -> None:
    mixed = any("plain_status" in r for r in rows)
    extra = " plain int8 (same run) | --mixed auto |" if mixed else ""
    print(f"| model | task | target | format | precision | status | fidelity | size KiB | median ms | recipe |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if mixed else ""))
    for r in rows:
        size = f"{r['size_kib']:.0f}" if "size_kib" in r else "-"
        ms = f"{r['median_ms']:.3g}" if r.get("median_ms") else "-"
        cells = f" {r['plain_status']} ({r['plain_fidelity']}) | {r['mixed_note']} |" if "plain_status" in r else \
            (" - | - |" if mixed else "")
        print(f"| {r['model']} | {r['task']} | {r['target']} | {r['format']} | {r['precision']} | {r['status']} | "
              f"{r.get('fidelity', '-')} | {size} | {ms} | {r.get('recipe', '')} |{cells}")
    print()
    for precision in sorted({r.get("group", r["precision"]) for r in rows if r["precision"] != "-"}):
        picked = [r for r in rows if r.get("group", r["precision"]) == precision]  # a 16x8 fallback counts as int8
        ok = sum(r["status"] == "verified" for r in picked)
        print(f"- {precision}: built and verified / attempted = {ok}/{len(picked)} ({ok / max(len(picked), 1):.0%})"
              + (" with --mixed auto" if any("plain_status" in r for r in picked) else ""))
        if any("plain_status" in r for r in picked):
            plain = sum(r.get("plain_status", r["status"]) == "verified" for r in picked)
            print(f"- {precision} plain (the same run's plain builds, scored samples): {plain}/{len(picked)} "
                  f"({plain / max(len(picked), 1):.0%})")
    unchanged = [r["input_unchanged"] for r in results.values()]
    print(f"- input model files byte-identical after conversion: {sum(unchanged)}/{len(unchanged)} conversions")
    print("\nFailures and mismatches:\n")
    for r in rows:
        if r["status"] == "FAILED":
            print(f"- {r['model']} {r['format']} {r['precision']}: {r['reason']}")
        elif r["status"] == "MISMATCH":
            explained = (r.get("explained") or "").startswith(("first op", "no single op"))  # explain's words
            why = f"; {r['explained']}" if r.get("explained") else ""           # replace convert's own reason
            rest = r.get("recipes") if explained else r.get("why")
            why += f"; {rest}" if rest else ""
            why += r.get("mixed_stopped", "")
            print(f"- {r['model']} {r['format']} {r['precision']}: MISMATCH ({r['fidelity']}){why}")


if __name__ == "__main__":
    main()
