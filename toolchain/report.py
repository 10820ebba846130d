"""Render a conversion report: report.json (machine-readable), report.md, and a terminal table."""
from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("format", "prec", "size", "gzip", "median ms", "p90 ms", "max err", "top-1", "acc Δ", "status")


def write(out_dir: Path, result: dict) -> None:
    (out_dir / "report.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out_dir / "report.md").write_text(markdown(result))


def rows(result: dict) -> list[tuple[str, ...]]:
    return [_row(a) for a in result["artifacts"]]


def _row(a: dict) -> tuple[str, ...]:
    if a["status"] != "ok":
        return (a["format"], a["precision"], *["-"] * (len(COLUMNS) - 3), f"failed: {a['reason']}")
    lat, fid = a["latency_ms"], a["fidelity"]
    acc = a.get("accuracy")
    return (a["format"], a["precision"], kib(a["size"]["bytes"]), kib(a["size"]["gzip_bytes"]),
            f"{lat['median']:.4g}", f"{lat['p90']:.4g}", f"{fid['max_abs_error']:.1e}",
            f"{fid['top1_agreement']:.1%}", f"{acc['delta'] * 100:+.2f}pt" if acc else "n/a",
            "verified" if fid["verified"] else "MISMATCH")


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def title(result: dict) -> str:
    return f"{result['model']['name']} → {result['target']['name']}"


def measurement_notes(result: dict) -> list[str]:
    first = next((a for a in result["artifacts"] if a["status"] == "ok"), None)
    notes = [f"Data: {result['data']['origin']} ({result['data']['samples']} samples)."]
    if result.get("source_accuracy") is not None:
        notes.append(f"Source model accuracy: {result['source_accuracy']:.2%}; acc Δ is artifact minus source, in points.")
    if first:
        lat = first["latency_ms"]
        notes.append(f"Latency: {lat['how']}; batch 1, {lat['threads']} thread(s), {lat['warmup']} warm-up runs, "
                     f"{lat['runs']} timed runs; each runtime in its own process.")
    notes.append("Sizes: bytes on disk and gzip -9 of the same bytes (measured). Fidelity: artifact outputs "
                 "against the source model on the same inputs (measured); 'verified' means within the "
                 "precision's tolerance (cosine and top-1 agreement).")
    return notes


def markdown(result: dict) -> str:
    lines = [f"# edgekit report: {title(result)}", "",
             f"Input: `{result['model']['path']}` ({result['model']['kind']}), "
             f"target profile `{result['target']['profile']}`, edgekit {result['edgekit_version']}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(result)]
    lines += ["", *[f"- {n}" for n in measurement_notes(result)], ""]
    for a in result["artifacts"]:
        if a["status"] == "ok":
            lat, mem = a["latency_ms"], a["memory"]
            lines.append(f"- **{a['format']}** ({a['runtime']['name']} {a['runtime']['version']}): latency mean "
                         f"{lat['mean']:.4g} ms, stdev {lat['stdev']:.3g}, p99 {lat['p99']:.4g}; peak RSS "
                         f"{mem['peak_rss_mib']:.0f} MiB; cosine {a['fidelity']['cosine']:.6f}; {'; '.join(a['notes'])}.")
    return "\n".join(lines) + "\n"


def print_table(result: dict, console) -> None:
    from rich.table import Table

    table = Table(title=title(result))
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows(result):
        table.add_row(*row)
    console.print(table)
    for note in measurement_notes(result):
        console.print(f"[dim]{note}[/dim]")
