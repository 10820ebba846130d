"""Render a conversion report: report.json (machine-readable), report.md, and a terminal table."""
from __future__ import annotations

import json
from pathlib import Path

from . import opreport, probes, recommend
from .measure import TOLERANCE, kib

COLUMNS = ("format", "precision", "size", "gzip", "median ms", "p90 ms", "CV", "× fp32 size/lat", "int ops",
           "max err", "fidelity", "acc Δ", "status")


def write(out_dir: Path, result: dict) -> None:
    (out_dir / "report.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out_dir / "report.md").write_text(markdown(result))


def rows(result: dict) -> list[tuple[str, ...]]:
    return [_row(a) for a in result["artifacts"]]


def _row(a: dict) -> tuple[str, ...]:
    precision = a["precision"] + {"baseline": " base", "native": " native"}.get(a.get("role"), "")
    if a.get("mixed"):  # --mixed auto kept layers out of int8: say so, with the share of MACs still int8
        from .passes.mixed import precision_label
        precision += precision_label(a)
    if a["status"] != "ok":
        return (a["format"], precision, *["-"] * (len(COLUMNS) - 3), "FAILED (see below)")
    lat, fid, acc = a["latency_ms"], a["fidelity"], a.get("accuracy")
    return (a["format"], precision, kib(a["size"]["bytes"]), kib(a["size"]["gzip_bytes"]),
            _ms(lat, "median"), _ms(lat, "p90"), _dispersion(lat), _vs_fp32(a.get("vs_fp32")), _int_ops(a.get("ops")),
            f"{fid['max_abs_error']:.1e}", fidelity_figure(fid),
            f"{acc['delta'] * 100:+.2f}pt" if acc else "n/a", "verified" if fid["verified"] else "MISMATCH")


def fidelity_figure(fid: dict) -> str:
    """The figure the verdict rests on: worst top-1 agreement of class outputs, worst SNR of the others."""
    outputs = fid.get("outputs") or [{"kind": "classes", "top1_agreement": fid["top1_agreement"]}]
    parts = []
    classes = [o["top1_agreement"] for o in outputs if o["kind"] == "classes"]
    zeros = [o["max_abs_error"] for o in outputs if o.get("judged_by", "").startswith("max abs error")]
    values = [o["snr_db"] for o in outputs if o["kind"] != "classes" and not o.get("judged_by", "").startswith("max abs")]
    if classes:
        parts.append(f"top-1 {min(classes):.1%}")
        cosine = min(o.get("cosine", 1.0) for o in outputs if o["kind"] == "classes")
        if cosine < fid.get("tolerance", {}).get("min_cosine", 0.0):  # the half of the verdict that failed
            parts.append(f"cosine {cosine:.3f}")
    if values:
        parts.append(f"SNR {min(values):.1f} dB" if min(values) < 300 else "SNR exact")
    if zeros:  # SNR means nothing against an all-zero reference
        parts.append(f"max abs {max(zeros):.2g} (reference all zeros)")
    return ", ".join(parts)


def _ms(latency: dict, key: str) -> str:
    return f"{latency[key]:.4g}" if key in latency else "not measured"


def _dispersion(latency: dict) -> str:
    if "cv" not in latency:
        return "-"
    return f"{latency['cv']:.0%}" + (" UNSTABLE" if latency.get("unstable") else "")


def _vs_fp32(ratios: dict | None) -> str:
    if not ratios:
        return ""
    latency = "unstable" if ratios.get("latency_unstable") else \
        f"{ratios['latency']:.2f}×" if ratios.get("latency") else "-"
    return f"{ratios['size']:.2f}× / {latency}"


def _int_ops(ops: dict | None) -> str:
    return f"{ops['ops'] - ops['float_ops']}/{ops['ops']}" if ops else "-"


def title(result: dict) -> str:
    return f"{result['model']['name']} → {result['target']['name']} ({result['target']['precision']})"


def measurement_notes(result: dict) -> list[str]:
    first = next((a for a in result["artifacts"] if a["status"] == "ok" and "runs" in a["latency_ms"]), None)
    notes = [recommend.line(result["recommended"])] if result.get("recommended") else []
    notes += [f"WARNING: {w}" for w in result.get("warnings", [])]
    notes += [f"FAILED {a['format']} {a['precision']}: {a['reason']}" for a in result["artifacts"] if a["status"] != "ok"]
    notes += [f"MISMATCH {a['format']} {a['precision']}: {a['reason']} (edgekit explain for more)"
              for a in result["artifacts"] if a["status"] == "ok" and a.get("reason")]
    if any(a.get("mixed") for a in result["artifacts"]):
        from .passes.mixed import summary_line
        notes += [summary_line(a) for a in result["artifacts"] if a.get("mixed") and a["status"] == "ok"]
    notes.append(f"Data: {result['data']['origin']} ({result['data']['samples']} samples scored)"
                 + (f"; {result['data']['note']}." if result["data"].get("note") else "."))
    if result.get("calibration"):
        cal = result["calibration"]
        methods = sorted({a["calibration"]["method"] for a in result["artifacts"] if a.get("calibration")})
        notes.append(f"Calibration: {cal['origin']}; {cal['samples']} samples; method {', '.join(methods) or '-'}.")
    if result.get("source_accuracy") is not None:
        notes.append(f"Source model accuracy: {result['source_accuracy']:.2%}; acc Δ is artifact minus source, in points.")
    if first:
        lat = first["latency_ms"]
        notes.append(latency_note(lat))
    est = result.get("estimate")
    mcu = [a for a in result["artifacts"] if a.get("mcu")]
    if est and "latency_ms" in est:
        budgets = "; the MCU verdict below uses the measured arena and compiled size" if mcu else \
            f"{_budget(est['fits_ram'], est['ram_budget_bytes'], 'RAM')}; model {kib(est['model_bytes'])}" \
            f"{_budget(est['fits_flash'], est['flash_budget_bytes'], 'flash')}"
        notes.append(f"ESTIMATED on {est['device']}: {est['latency_ms']:.3g} ms per inference ({est['precision']}, "
                     f"{est['threads']} thread(s)); peak activations {kib(est['peak_activation_bytes'])} (tensor "
                     f"lifetimes){budgets} ({est['how']})")
    elif est:
        notes.append(est["error"])
    notes += probes.notes(result)
    tolerance = TOLERANCE[result["target"]["precision"]]
    notes.append("Sizes: bytes on disk and gzip -6 (gzip's default level) of the same bytes (measured). × fp32: "
                 "against the fp32 artifact of the same format. int ops: ops running in integer / all compute ops. "
                 "Fidelity: outputs against the "
                 f"source model on the same inputs; 'verified' means, for {result['target']['precision']}, top-1 "
                 f"agreement ≥ {tolerance['min_top1_agreement']:.0%} and cosine ≥ {tolerance['min_cosine']} on "
                 f"class-score outputs, SNR ≥ {tolerance.get('min_snr_db', 0):g} dB on every other output "
                 "(boxes, masks, landmarks, embeddings: --outputs overrides the choice).")
    for a in (a for a in result["artifacts"] if a.get("vs_native")):
        for precision, ratio in a["vs_native"].items():
            notes.append(f"{a['format']} {a['precision']} against {precision} native (the runtime's default here): "
                         + ("latency too unsteady to compare" if ratio.get("latency_unstable") or not ratio["latency"]
                            else f"{ratio['latency']:.2f}x latency") + ".")
    for precision in dict.fromkeys(a["precision"] for a in result["artifacts"] if a.get("role") == "native"):
        tol = TOLERANCE[precision]
        notes.append(f"{precision} native: the fp32 graph run in {precision} by the runtime's own precision hint, on this "
                     f"host's native instructions; verified at {precision}'s tolerance (top-1 ≥ "
                     f"{tol['min_top1_agreement']:.0%}, cosine ≥ {tol['min_cosine']}, SNR ≥ {tol['min_snr_db']:g} dB).")
    return notes


def latency_note(lat: dict) -> str:
    from .timing import UNSTABLE_CV, UNSTABLE_SPREAD
    processes = lat.get("processes", 1)
    return (f"Latency: {lat['how']}; batch 1, {lat['threads']} thread(s); {processes} runner process(es) per artifact, "
            f"each {lat['warmup']} warm-up + {lat['runs']} timed runs, interleaved with the artifacts compared in one "
            f"timing phase (one per host at a time); median = median of the process medians. CV = IQR / 1.349 / median "
            f"of all timed runs; UNSTABLE when CV > {UNSTABLE_CV:.0%} or the process medians spread more than "
            f"{UNSTABLE_SPREAD:.0%}: no ratio is given then.")


SUMMARY_COLUMNS = ("target", "device", "format", "precision", "size", "median ms (host)", "estimated ms (device)",
                   "acc Δ", "aarch64", "fits board", "status")


def summary_rows(summary: dict) -> list[tuple[str, ...]]:
    rows = []
    for result in summary["targets"]:
        name = result["target"]["name"]
        if "error" in result:
            rows.append((name, "-", "-", "-", "-", "-", "-", "-", "-", "-", f"FAILED: {result['error']}"))
            continue
        device = f"{result['target']['device']['kind']} ({result['target']['device']['arch']})"
        est = result.get("estimate") or {}
        for a in (a for a in result["artifacts"] if a["role"] == "target"):
            if a["status"] != "ok":
                rows.append((name, device, a["format"], a["precision"], "-", "-", "-", "-", "-", "-", "FAILED"))
                continue
            arm = a.get("aarch64")
            rows.append((name, device, a["format"], a["precision"], kib(a["size"]["bytes"]), _ms(a["latency_ms"], "median"),
                         f"{est['latency_ms']:.3g}" if "latency_ms" in est else "-",
                         f"{a['accuracy']['delta'] * 100:+.2f}pt" if a.get("accuracy") else "n/a",
                         {True: "yes", False: "no", None: "-"}[arm["runs"]] if arm else "-",
                         _fits_board(a.get("mcu") or a.get("npu")),
                         "verified" if a["fidelity"]["verified"] else "MISMATCH"))
    return rows


def _fits_board(mcu: dict | None) -> str:
    if not mcu or "error" in mcu or mcu["verdict"]["fits"] is None:
        return "-"
    v = mcu["verdict"]
    if not v.get("runs", True):
        return "NO (ops)"
    short = [what for what in ("ram", "flash") if v[what]["fits"] is False]
    return "yes" if v["fits"] else f"NO ({' + '.join(w if w == 'flash' else 'RAM' for w in short)})"


def write_summary(out_dir: Path, summary: dict) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    lines = [f"# edgekit: {summary['model']} on {len(summary['targets'])} targets", "",
             "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(summary)]
    lines += ["", "- median ms (host): measured on this host, whatever the target device. estimated ms (device): "
              "the profile's device model (docs/COSTMODEL.md). aarch64: the artifact ran on emulated aarch64 with "
              "the same answers as the host. fits board (MCU targets): TFLite Micro's measured arena + the profile's "
              "stated runtime RAM, and the compiled model array + stated runtime flash, against the board's budgets. Each target's full report is in its own directory.", ""]
    lines += [f"- {line}" for line in recommended_lines(summary)] + [""]
    (out_dir / "summary.md").write_text("\n".join(lines))


def recommended_lines(summary: dict) -> list[str]:
    """One recommendation per target."""
    return [f"{r['target']['name']}: {recommend.line(r['recommended'])}" for r in summary["targets"]
            if r.get("recommended")]


def print_summary(summary: dict, console) -> None:
    show_table(console, f"{Path(summary['model']).name} on {len(summary['targets'])} targets", SUMMARY_COLUMNS,
               summary_rows(summary))
    for line in recommended_lines(summary):
        show_note(console, line, "")


def show_table(console, title: str, columns, rows) -> None:
    """A rich table on a terminal; plain aligned text, never truncated, when the output is piped."""
    if console.is_terminal:  # every text as Text: '[' in a profile's description or a path is never markup
        from rich.table import Table
        from rich.text import Text
        table = Table(title=Text(str(title)))
        for column in columns:
            table.add_column(Text(str(column)), overflow="fold")
        for row in rows:
            table.add_row(*(Text(str(c)) for c in row))
        console.print(table)
        return
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(str(c)), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = [title, "  ".join(str(c).ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    console.out("\n".join(lines), highlight=False)


def show_note(console, text: str, style: str = "dim") -> None:
    from rich.text import Text
    console.print(Text(text, style=style), soft_wrap=True)


def _budget(fits: bool | None, budget: int | None, what: str) -> str:
    if fits is None:
        return ""
    return f" of a {kib(budget)} {what} budget ({'fits' if fits else 'DOES NOT FIT'})"


def markdown(result: dict) -> str:
    lines = [f"# edgekit report: {title(result)}", "",
             f"Input: `{result['model']['path']}` ({result['model']['kind']}), "
             f"target profile `{result['target']['profile']}`, edgekit {result['edgekit_version']}.", "",
             *pass_lines(result),
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(result)]
    lines += ["", *[f"- {n}" for n in measurement_notes(result)], ""]
    if stages_title(result):
        lines += [f"## {stages_title(result)}", "", *stage_lines(result), ""]
    lines += opreport.markdown(result)
    if result.get("sensitivity"):
        from .passes.sensitivity import markdown as sensitivity_table
        lines += ["## Per-layer int8 sensitivity", "",
                  "Each layer quantized alone (the rest float), most sensitive first: candidates for --keep-float.",
                  "", *sensitivity_table(result["sensitivity"]), ""]
    if any(a.get("mixed") for a in result["artifacts"]):
        from .passes.mixed import markdown as mixed_section
        lines += [*mixed_section([a for a in result["artifacts"] if a.get("mixed")]), ""]
    for a in result["artifacts"]:
        if a["status"] == "ok":
            lines.append(f"- **{a['format']} {a['precision']}** ({a['runtime']['name']} {a['runtime']['version']}): "
                         f"{_latency_detail(a['latency_ms'])}; {memory_text(a['memory'])}; "
                         f"cosine {a['fidelity']['cosine']:.6f}; {'; '.join(a['notes'])}.")
    return "\n".join(lines) + "\n"


def pass_lines(result: dict) -> list[str]:
    """The passes that ran (passes/base.py DESCRIPTION), and where the recipe to replay the run is."""
    ran = [f"{p['name']} ({p['description']})" for p in result.get("passes", []) if p["applies"]]
    if not result.get("recipe"):
        return []
    return [f"Passes: {'; '.join(ran) or 'none'}. Recipe as run: recipe.json (`edgekit convert --recipe recipe.json` "
            "replays it with the same model, data and target).", ""]


STAGE_COLUMNS = ("stage", "measured as", "params", "MACs", "size", "gzip", "median ms", "accuracy")


def stages_title(result: dict) -> str | None:
    """Distillation and pruning share one table of model stages."""
    passes = [name for name in ("distillation", "pruning") if result.get(name)]
    return (" and ".join(passes) + " stages").capitalize() if passes else None


def stage_rows(result: dict) -> list[tuple[str, ...]]:
    record = result.get("distillation") or result.get("pruning") or {"stages": []}
    return [(s["stage"], s["format"], f"{s['params']:,}", f"{s['macs']:,}", kib(s["size"]["bytes"]),
             kib(s["size"]["gzip_bytes"]), f"{s['latency_ms']:.4g}" if s["latency_ms"] else "-",
             f"{s['accuracy']:.2%}" if s["accuracy"] is not None else "n/a") for s in record["stages"]]


def distillation_notes(d: dict) -> list[str]:
    stop = f"stopped after epoch {d['epochs_run']} (no gain on the held-apart slice for the last epochs)" \
        if d["stopped_early"] else f"ran all {d['epochs_run']} epochs"
    loss = f"KL on soft targets (T={d['temperature']:g}) × T²" + (
        f", weight {d['alpha']:g}, plus cross-entropy on labels, weight {1 - d['alpha']:g}" if d["labels_used"]
        else ", no labels used")
    return [f"Distillation: student {d['student']}; teacher run in its own runtime ({d['teacher_runtime']}), outputs "
            f"{', '.join(d['teacher_outputs'])}; loss {loss}"
            + (f"; features matched: {', '.join(d['features'])}" if d["features"] else "") + ".",
            f"Distillation data: {d['data']}: {d['samples']} samples trained on, {d['held_apart']} held apart for "
            f"early stopping; {stop}; best weights from epoch {d['best_epoch']} kept. Never the scored samples."]


def stage_lines(result: dict) -> list[str]:
    lines = ["| " + " | ".join(STAGE_COLUMNS) + " |", "|" + "---|" * len(STAGE_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in stage_rows(result)]
    if result.get("distillation"):
        lines += [f"- {n}" for n in distillation_notes(result["distillation"])]
    pruning = result.get("pruning") or {}
    if pruning.get("layers"):
        lines += ["", "| layer | params | sparsity |", "|---|---|---|"]
        lines += [f"| {r['layer']} | {r['params']:,} | {r['sparsity']:.1%} |" for r in pruning["layers"]]
    for layer, why in pruning.get("not_pruned", {}).items():
        lines.append(f"- {layer}: channels kept, they reach {why}")
    lines.append("- Params and MACs are counted from the graph; size, latency (1 run set, this host) and accuracy "
                 "are measured. Unstructured sparsity shrinks the gzip size, not the dense size or latency.")
    return lines


def memory_text(memory: dict) -> str:
    """Peak resident memory of the runner process and where the figure comes from."""
    text = f"peak RSS {memory['peak_rss_mib']:.0f} MiB (baseline {memory['baseline_rss_mib']:.0f} MiB before the runtime"
    if memory.get("loaded_rss_mib"):
        text += f", {memory['loaded_rss_mib']:.0f} MiB once the model is loaded"
    return text + (f"; {memory['source']})" if memory.get("source") else ")")


def _latency_detail(lat: dict) -> str:
    if "mean" not in lat:
        return f"latency {lat['status']}"
    text = f"latency mean {lat['mean']:.4g} ms, stdev {lat['stdev']:.3g}, p99 {lat['p99']:.4g}, IQR {lat.get('iqr', 0):.3g}"
    if lat.get("process_medians"):
        text += f", process medians {', '.join(f'{m:.4g}' for m in lat['process_medians'])}"
    return text


def print_table(result: dict, console) -> None:
    show_table(console, title(result), COLUMNS, rows(result))
    if stages_title(result):
        show_table(console, stages_title(result).lower(), STAGE_COLUMNS, stage_rows(result))
        for note in distillation_notes(result["distillation"]) if result.get("distillation") else []:
            show_note(console, note)
    for note in measurement_notes(result):
        show_note(console, note, "yellow" if note.startswith(("WARNING", "FAILED")) else "dim")
    opreport.show_result(console, result, show_table, show_note)
