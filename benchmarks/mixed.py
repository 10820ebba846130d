"""What `--mixed auto` costs on the real-model corpus (a benchmark that prints figures; not a test).

For each corpus model: one plain int8 `edgekit convert` and one with `--mixed auto`, same target, same
real inputs (benchmarks/corpus_inputs.py), same flags, one after the other in their own processes.
Per int8 artifact it prints the verdict without and with mixed precision, how many rebuild-and-evaluate
rounds `--mixed auto` took (as its report records them) and what it kept out of int8; per model, the
wall time of both conversions and their ratio. Target: median ratio <= 2x. Wall times are measured on
whatever machine runs this: on a shared machine they are noisy (each run says its load average).

    python benchmarks/mixed.py [--models a,b] [--formats onnx] [--target cpu-int8] [--out DIR] [--table-only]
    python benchmarks/mixed.py --failed-from CORPUS_OUT [--out DIR]   # the corpus rate with --mixed auto

--failed-from reads a plain corpus run (benchmarks/corpus.py --out CORPUS_OUT) and converts again, with
--mixed auto, only the int8 formats built there that did not verify (`--format` each); an artifact that verified
plain is what --mixed auto delivers too (its round 1 is the plain artifact and it stops there), so the rate
with --mixed auto is the plain run's verified artifacts plus those this run verifies. Prints both rates
side by side; its wall times are of the failing formats only, not a comparison with a plain convert.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import CORPUS, convert  # noqa: E402  (benchmarks/ is not a package)


def find(record, key: str):
    """The first value under `key` anywhere in a nested report record (None when absent)."""
    if isinstance(record, dict):
        if key in record:
            return record[key]
        record = list(record.values())
    if isinstance(record, list):
        for item in record:
            found = find(item, key)
            if found is not None:
                return found
    return None


def int8_rows(result: dict) -> dict[str, dict]:
    """format -> {status, rounds, kept} of each int8 artifact of one conversion."""
    rows = {}
    for a in result.get("artifacts", []):
        if not a["precision"].startswith("int"):  # fp32 baselines and native (bf16/fp16) rows
            continue
        status = "FAILED" if a["status"] != "ok" else "verified" if a["fidelity"]["verified"] else "MISMATCH"
        entry = find(a, "mixed") or {}  # the report's mixed-precision entry of this artifact
        rounds, kept = entry.get("rounds"), entry.get("kept")
        rows[a["format"]] = {"status": status, "rounds": len(rounds) if isinstance(rounds, list) else rounds,
                             "kept": [k.get("layer", k) if isinstance(k, dict) else k for k in kept or []],
                             "mixed_seconds": entry.get("seconds"), "stopped": entry.get("stopped"),
                             "snr_db": (a.get("fidelity") or {}).get("snr_db"),
                             "int8_share": (entry.get("int8_share") or {}).get("int8_share")}
    return rows


def run_model(name: str, entry: dict, args) -> dict:
    timed = {}
    for mode in ("plain", "mixed"):
        opts = argparse.Namespace(**{**vars(args), "mixed": "auto" if mode == "mixed" else "",
                                     "out": args.out / mode, "inputs": "real"})
        load = os.getloadavg()[0]
        started = time.time()
        result = convert(name, entry, args.target, opts)
        timed[mode] = {"seconds": round(time.time() - started, 1), "load": round(load, 1),
                       "error": result.get("error"), "int8": int8_rows(result)}
    return timed


def kept_text(row: dict) -> str:
    kept = row.get("kept") or []
    text = f"{len(kept)}: " + ", ".join(map(str, kept[:4])) + (" ..." if len(kept) > 4 else "") if kept else "none"
    return text + (f" (stopped: {row['stopped']})" if row.get("stopped") else "")


def failed_formats(plain: dict) -> dict[str, list[str]]:
    """model -> the int8 formats that were built but did not verify (MISMATCH) in a plain corpus run's
    corpus.json. A FAILED artifact (nothing built) is not re-run: --mixed auto acts on a built artifact."""
    failed = {}
    for key, result in plain.items():
        name = key.split("|")[0]
        formats = [fmt for fmt, row in int8_rows(result).items() if row["status"] == "MISMATCH"]
        if formats:
            failed[name] = formats
    return failed


def rerun_failed(plain_dir: Path, manifest: dict, args) -> None:
    plain = json.loads((plain_dir / "corpus.json").read_text())
    path = args.out / "mixed-failed.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name, formats in failed_formats(plain).items() if not args.table_only else []:
        if name in results or (args.models and name not in args.models.split(",")):
            continue
        print(f"{name}: --mixed auto on {', '.join(formats)}", file=sys.stderr, flush=True)
        opts = argparse.Namespace(**{**vars(args), "mixed": "auto", "formats": formats, "inputs": "real"})
        started = time.time()
        result = convert(name, manifest[name], args.target, opts)
        results[name] = {"seconds": round(time.time() - started, 1), "error": result.get("error"),
                         "int8": int8_rows(result), "formats": formats}
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, sort_keys=True))
    print_side_by_side(plain, results)


def print_side_by_side(plain: dict, mixed: dict) -> None:
    print("| model | format | int8 plain | int8 --mixed auto | rounds | layers kept out of int8 |")
    print("|---|---|---|---|---|---|")
    total = verified_plain = verified_mixed = 0
    for key in sorted(plain):
        name = key.split("|")[0]
        rows = int8_rows(plain[key]) if "error" not in plain[key] else {}
        for fmt in ("tflite", "onnx", "openvino"):
            p = rows.get(fmt, {"status": "FAILED"})
            m = p if p["status"] == "verified" else mixed.get(name, {}).get("int8", {}).get(fmt)
            total += 1
            verified_plain += p["status"] == "verified"
            verified_mixed += bool(m) and m["status"] == "verified"
            if p["status"] != "verified":
                shown = "not re-run" if m is None else m["status"]
                rounds = "-" if not m or m.get("rounds") is None else m["rounds"]
                print(f"| {name} | {fmt} | {p['status']} | {shown} | {rounds} | {kept_text(m or {})} |")
    print(f"\n- int8 built and verified, plain: {verified_plain}/{total} ({verified_plain / max(total, 1):.0%}); "
          f"with --mixed auto: {verified_mixed}/{total} ({verified_mixed / max(total, 1):.0%})")


def print_table(results: dict) -> None:
    print("| model | format | int8 plain | int8 --mixed auto | SNR dB plain / mixed | rounds | MACs still int8 | "
          "layers kept out of int8 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        formats = sorted(set(r["plain"]["int8"]) | set(r["mixed"]["int8"]))
        for fmt in formats:
            p, m = r["plain"]["int8"].get(fmt, {}), r["mixed"]["int8"].get(fmt, {})
            snr = " / ".join("-" if x.get("snr_db") is None else f"{x['snr_db']:.1f}" for x in (p, m))
            share = "-" if m.get("int8_share") is None else f"{m['int8_share']:.0%}"
            print(f"| {name} | {fmt} | {p.get('status', 'FAILED')} | {m.get('status', 'FAILED')} | {snr} | "
                  f"{'-' if m.get('rounds') is None else m['rounds']} | {share} | {kept_text(m)} |")
    print("\n| model | plain convert s | --mixed auto s | ratio | load avg at start (plain / mixed) |")
    print("|---|---|---|---|---|")
    ratios = []
    for name, r in results.items():
        plain, mixed = r["plain"]["seconds"], r["mixed"]["seconds"]
        ratio = mixed / plain if plain else float("nan")
        ratios.append(ratio)
        print(f"| {name} | {plain:.0f} | {mixed:.0f} | {ratio:.2f}x | {r['plain']['load']} / {r['mixed']['load']} |")
    if ratios:
        print(f"\nmedian wall-time ratio --mixed auto / plain: {statistics.median(ratios):.2f}x over {len(ratios)} "
              f"models (target <= 2x); measured, noisy on a shared machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cpu-int8")
    parser.add_argument("--models", default="")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=CORPUS)
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-mixed"))
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per conversion")
    parser.add_argument("--table-only", action="store_true", help="print the table from --out/mixed.json")
    parser.add_argument("--failed-from", type=Path, help="a plain corpus run's --out: re-run its failing int8 formats")
    parser.add_argument("--formats", default="", help="comma list: convert only these formats (both runs)")
    args = parser.parse_args()
    args.formats = [f for f in args.formats.split(",") if f]
    manifest = json.loads((args.dir / "manifest.json").read_text())
    if args.failed_from:
        rerun_failed(args.failed_from, manifest, args)
        return
    path = args.out / "mixed.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    names = [n for n in args.models.split(",") if n] or sorted(manifest)
    for name in names if not args.table_only else []:
        print(f"{name}: plain int8, then --mixed auto", file=sys.stderr, flush=True)
        results[name] = run_model(name, manifest[name], args)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, sort_keys=True))
    print_table({n: results[n] for n in names if n in results})


if __name__ == "__main__":
    main()
