"""Per-op tables (edgekit.opprofile's figures) on the terminal and in report.md: `bench --ops`, `convert --ops`.
Below report in the layers (report.md includes the section): the terminal functions take report's printers."""
from __future__ import annotations

from pathlib import Path

from . import opprofile, runner, timing


def bench_ops(artifact: Path, threads: int, warmup: int, runs: int, inputs: Path | None, progress) -> dict:
    """One runner process on the artifact with the runtime's per-op profiler, under the host timing lock."""
    from . import output
    with output.tempdir("ops-") as tmp, timing.host_lock(progress):
        progress("profiling every op")
        return runner.invoke(artifact, Path(tmp) / "ops.json", threads=threads, warmup=warmup, runs=runs,
                             inputs=inputs, ops=True, what=f"the {artifact.suffix.lstrip('.')} runner")


def profile_entries(ctx, entries: list[dict]) -> None:
    """convert --ops: every working artifact's per-op time (opprofile), the others set against fp32's."""
    from .errors import EdgekitError
    for entry in (e for e in entries if e["status"] == "ok"):
        ctx.progress(f"{entry['format']} {entry['precision']}: per-op time")
        try:
            entry["op_profile"] = bench_ops(ctx.stage / entry["file"], ctx.host_threads(), 2, 20,
                                            timing.one_sample(ctx.evalset.samples, ctx.workdir), ctx.progress)["op_profile"]
        except EdgekitError as exc:
            entry["notes"].append(f"no per-op time: {exc}")
    fp32 = entries[0]
    for other in (e for e in entries[1:] if e.get("op_profile") and fp32.get("op_profile")):
        other["op_compare"] = opprofile.compare(fp32["op_profile"], other["op_profile"])


def show(console, title: str, prof: dict, show_table, show_note) -> None:
    show_table(console, f"{title}: time per op type", opprofile.TYPE_COLUMNS, opprofile.type_rows(prof))
    show_table(console, f"{title}: the {len(prof['slowest'])} slowest ops", opprofile.SLOWEST_COLUMNS,
               opprofile.slowest_rows(prof))
    show_note(console, note(prof))


def show_pair(console, title: str, cmp: dict, show_table, show_note) -> None:
    show_table(console, title, opprofile.COMPARE_COLUMNS, opprofile.compare_rows(cmp))
    for line in pair_notes(cmp):
        show_note(console, line)


def note(prof: dict) -> str:
    return (f"Per-op time: {prof['how']}; median of {prof['runs']} runs per op, {prof['total_ms']:.4g} ms in all "
            f"(measured on host; noisy on a loaded machine).")


def pair_notes(cmp: dict) -> list[str]:
    lines = [f"Sum of op times: {cmp['total_ms'][0]:.4g} ms (fp32) against {cmp['total_ms'][1]:.4g} ms."]
    if cmp["added"]:
        lines.append(f"Op types only in the second artifact: {', '.join(cmp['added'])}.")
    if cmp["layout_or_quantize_ms"]:
        lines.append(f"Quantize/dequantize/layout ops in the second artifact: {cmp['layout_or_quantize_ms']:.4g} ms.")
    if cmp["stayed_float"]:
        lines.append("Compute ops still in float: " + ", ".join(f"{r['type']} x{r['count']} ({r['ms']:.4g} ms)"
                                                                 for r in cmp["stayed_float"]) + ".")
    return lines


def show_result(console, result: dict, show_table, show_note) -> None:
    """convert --ops on the terminal: each format's fp32 profile, then each other artifact against it."""
    for a in (a for a in result["artifacts"] if a.get("op_profile")):
        if a.get("op_compare"):
            show_pair(console, f"{a['format']}: fp32 against {a['precision']}, per op type", a["op_compare"],
                      show_table, show_note)
        else:
            show(console, f"{a['format']} {a['precision']}", a["op_profile"], show_table, show_note)


def markdown(result: dict) -> list[str]:
    """report.md's per-op section for every artifact profiled by `convert --ops`."""
    lines = []
    for a in (a for a in result["artifacts"] if a.get("op_profile")):
        prof = a["op_profile"]
        lines += [f"### {a['format']} {a['precision']}", "", _md_table(opprofile.TYPE_COLUMNS, opprofile.type_rows(prof)),
                  "", _md_table(opprofile.SLOWEST_COLUMNS, opprofile.slowest_rows(prof)), "", f"- {note(prof)}", ""]
        if a.get("op_compare"):
            lines += [f"#### fp32 against {a['precision']}", "",
                      _md_table(opprofile.COMPARE_COLUMNS, opprofile.compare_rows(a["op_compare"])), "",
                      *[f"- {n}" for n in pair_notes(a["op_compare"])], ""]
    return ["## Per-op time", "", *lines] if lines else []


def _md_table(columns, rows) -> str:
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                      *["| " + " | ".join(r) + " |" for r in rows]])
