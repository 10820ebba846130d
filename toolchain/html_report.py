"""`edgekit report DIR...`: one self-contained HTML page (inline CSS and SVG, no scripts, no
network) from convert, multi-target and tune result directories."""
from __future__ import annotations

import html
import json
from pathlib import Path

from . import report
from .errors import EdgekitError
from .tune import recipe_text

LABELS = [("measured on host", "run on the machine that ran edgekit; for a device target it is not the device's figure"),
          ("measured on remote device", "run by the light runner on a device over SSH"),
          ("emulated", "run under QEMU (aarch64) or the accelerator emulator: answers, never speed"),
          ("estimated", "computed by a cost or cycle model, never measured"),
          ("not measured", "no figure rather than a substituted one (e.g. no GPU found)")]
CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}th{background:#f2f2f2}
.note{color:#555;font-size:13px}.warn{color:#a60}svg{border:1px solid #ddd;margin:0.5em 1em 0.5em 0}
h2{margin-top:2em;border-bottom:1px solid #ddd}"""


def write(dirs: list[Path], out: Path, force: bool = False) -> None:
    read, sections = [], []
    for d in dirs:
        for path in sorted(Path(d).rglob("tune.json")):
            read.append(path)
            sections.append(_section(path, lambda result, _: _tune(result)))
        for path in sorted(Path(d).rglob("report.json")):
            if "trials" not in path.parts:
                read.append(path)
                sections.append(_section(path, _convert))
    if not sections:
        raise EdgekitError(f"no report.json or tune.json under {', '.join(map(str, dirs))}",
                           "point edgekit report at directories written by convert or tune")
    legend = _table(("label", "meaning"), LABELS)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgekit report</title><style>{CSS}</style>"
            f"</head><body><h1>edgekit report</h1><h3>How each figure was obtained</h3>{legend}"
            + "".join(sections) + "</body></html>")
    from .output import write_file
    write_file(out, page, inputs=[*dirs, *read], force=force)  # beside itself, then renamed; never over an input


MAX_RESULT_BYTES = 64 * 2 ** 20


def _section(path: Path, render) -> str:
    """One result file rendered, or a one-line error naming it (broken, truncated or foreign JSON)."""
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            raise ValueError(f"over {MAX_RESULT_BYTES // 2 ** 20} MiB")
        result = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(result, dict):
            raise TypeError(f"a JSON {type(result).__name__}, not an object")
        return render(result, path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        why = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise EdgekitError(f"{path} is not a result edgekit can read ({type(exc).__name__}: {why})",
                           "re-run the command that wrote it, or leave that directory out") from None


def _table(columns, rows) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _convert(result: dict, path: Path) -> str:
    notes = "".join(f"<p class='{'warn' if n.startswith(('WARNING', 'FAILED', 'MISMATCH')) else 'note'}'>{html.escape(n)}</p>"
                    for n in report.measurement_notes(result))
    parts = [f"<h2>{html.escape(report.title(result))}</h2><p class='note'>{html.escape(str(path))}</p>",
             _table(report.COLUMNS, report.rows(result)), notes]
    if report.stages_title(result):
        parts.append(f"<h3>{report.stages_title(result)}</h3>" + _table(report.STAGE_COLUMNS, report.stage_rows(result)))
    if result.get("sensitivity"):
        parts.append("<h3>Per-layer int8 sensitivity</h3>" + _sensitivity(result["sensitivity"]))
    return "".join(parts)


def _sensitivity(rows: list[dict]) -> str:
    return _table(("rank", "layer", "cosine", "max err", "top-1 agree"),
                  [(i, r["layer"], f"{r['cosine']:.6f}", f"{r['max_abs_error']:.2e}", f"{r['top1_agreement']:.1%}")
                   for i, r in enumerate(rows, 1)])


def _tune(result: dict) -> str:
    best_key = (result.get("best") or {}).get("key")
    front = {t["key"] for t in result["pareto"]}
    ok = [t for t in result["trials"] if t.get("ok")]
    fp32 = result.get("fp32") or {}
    if fp32.get("ok") and fp32["key"] not in {t["key"] for t in ok}:
        ok.append(fp32)  # the baseline is a candidate too: the recommendation rule can choose it
    plots = "".join(_scatter(ok, front, best_key, result["budget_points"], x, label)
                    for x, label in (("latency_ms", "median latency (ms, measured on host)"),
                                     ("bytes", "artifact size (bytes)")))
    rows = [(recipe_text(t["recipe"]), f"{t['drop_points']:+.2f}", f"{t['bytes'] / 1024:.1f}", f"{t['latency_ms']:.4g}",
             "Pareto" if t["key"] in front else "", "CHOSEN" if t["key"] == best_key else t.get("why", "fp32 baseline"))
            for t in sorted(ok, key=lambda t: t["latency_ms"])]
    chosen = ""
    if result.get("best"):
        b, f = result["best"], result["fp32"]
        ratio = b.get("vs_fp32_latency")
        if b["key"] == f["key"]:
            speed = "the fp32 baseline itself: no quantized trial was stably faster in the quiet phase"
        elif not ratio or ratio["unstable"]:
            speed = "latency too unsteady on this host to compare with fp32"
        else:
            speed = f"{1 / ratio['value']:.2f}x faster than fp32 (interleaved, quiet phase)"
        chosen = (f"<p><b>Chosen:</b> {html.escape(recipe_text(b['recipe']))}: {f['bytes'] / b['bytes']:.2f}x smaller, "
                  f"{speed}; accuracy drop {b['drop_points']:+.2f} points "
                  f"(tuning split), {b['holdout_drop_points']:+.2f} (held-out split).</p>")
    else:
        chosen = ("<p class='warn'>No candidate met the budget; blocking layers: "
                  f"{html.escape(', '.join(result.get('blocking_layers', [])))}</p>")
    return (f"<h2>tune: {html.escape(Path(result['model']).name)} → {html.escape(result['target'])} "
            f"({html.escape(result['format'])})</h2><p class='note'>{html.escape(result['how'])}. Budget "
            f"{result['budget_points']:.2f} accuracy points; objective {html.escape(result['objective'])}.</p>{chosen}"
            f"<div class='plots'>{plots}</div><h3>Trials</h3>"
            + _table(("recipe", "acc drop (points)", "size KiB", "median ms", "front", "why not chosen"), rows)
            + "<h3>Per-layer int8 sensitivity</h3>" + _sensitivity(result["sensitivity"]))


def _scatter(trials: list[dict], front: set, best: str | None, budget: float, key: str, label: str) -> str:
    """An SVG scatter: cost on x, accuracy drop on y; the front joined, the chosen point ringed."""
    width, height, pad = 460, 300, 50
    xs = [t[key] for t in trials] or [0, 1]
    ys = [t["drop_points"] for t in trials] + [budget, 0]
    x0, x1 = min(xs) * 0.9, max(xs) * 1.1 or 1
    y0, y1 = min(ys) - 0.2, max(ys) + 0.2
    sx = lambda v: pad + (v - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
    sy = lambda v: height - pad - (v - y0) / ((y1 - y0) or 1) * (height - 2 * pad)
    points = []
    for t in trials:
        colour = "#d22" if t["key"] == best else "#27c" if t["key"] in front else "#aaa"
        points.append(f"<circle class='trial' cx='{sx(t[key]):.1f}' cy='{sy(t['drop_points']):.1f}' r='"
                      f"{7 if t['key'] == best else 4}' fill='{colour}'><title>{html.escape(str(t['recipe']))}</title>"
                      "</circle>")
    line = " ".join(f"{sx(t[key]):.1f},{sy(t['drop_points']):.1f}"
                    for t in sorted((t for t in trials if t["key"] in front), key=lambda t: t[key]))
    return (f"<svg class='pareto' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"
            f"<line x1='{pad}' x2='{width - pad}' y1='{sy(budget):.1f}' y2='{sy(budget):.1f}' stroke='#d22' "
            f"stroke-dasharray='4'/><text x='{width - pad}' y='{sy(budget) - 4:.1f}' font-size='11' text-anchor='end' "
            f"fill='#d22'>budget</text><polyline points='{line}' fill='none' stroke='#27c'/>{''.join(points)}"
            f"<text x='{width / 2}' y='{height - 12}' font-size='12' text-anchor='middle'>{html.escape(label)}</text>"
            f"<text x='14' y='{height / 2}' font-size='12' transform='rotate(-90 14 {height / 2})' "
            f"text-anchor='middle'>accuracy drop (points)</text>"
            f"<text x='{pad - 4}' y='{sy(y1) + 4:.1f}' font-size='10' text-anchor='end'>{y1:.2g}</text>"
            f"<text x='{pad - 4}' y='{sy(y0) + 4:.1f}' font-size='10' text-anchor='end'>{y0:.2g}</text>"
            f"<text x='{pad}' y='{height - pad + 14}' font-size='10'>{x0:.3g}</text>"
            f"<text x='{width - pad}' y='{height - pad + 14}' font-size='10' text-anchor='end'>{x1:.3g}</text></svg>")
