"""One recommendation per target: the artifact to ship, and one line saying why.

The rule, used by convert's report and by tune:
- a candidate is built, verified (fidelity within its precision's tolerance), within the accuracy budget
  (when labelled data measured accuracy) and timed on the host;
- within a format, the most precise candidate is the starting pick (fp32, then bf16/fp16, then
  dynamic, int16x8, int8); a less precise one replaces it only when it is *stably faster* than the pick
  and than the format's fp32: a ratio from the same interleaved timing phase (timing.ratio), neither
  figure unstable, and every per-process ratio below 1. Unsteady figures never promote an artifact, so
  an int8 that is slower than its fp32, or not clearly faster, is never recommended;
- across formats (each timed in its own phase), a format's pick wins over the first format's only when
  their process medians do not overlap and neither is unstable; otherwise the profile's first format
  is kept.
"""
from __future__ import annotations

from . import timing

ORDER = ("fp32", "bf16", "fp16", "int16x8", "dynamic", "int8", "int8-io")  # most precise first
FORMAT_NAMES = {"tflite": "TFLite", "onnx": "ONNX", "openvino": "OpenVINO"}


def _budget_ok(a: dict, budget_points: float | None) -> bool:
    acc = a.get("accuracy")
    return budget_points is None or not acc or acc.get("delta") is None or -acc["delta"] * 100 <= budget_points


def candidates(artifacts: list[dict], budget_points: float | None) -> list[dict]:
    return [a for a in artifacts if a.get("status") == "ok" and a.get("fidelity", {}).get("verified")
            and "median" in (a.get("latency_ms") or {}) and _budget_ok(a, budget_points)]


def stably_faster(a: dict, b: dict) -> bool:
    """a runs faster than b on figures that hold: same timing phase, neither unstable, every process pair."""
    ratio = timing.ratio(a["latency_ms"], b["latency_ms"])
    return bool(ratio and not ratio["unstable"] and ratio["range"] and ratio["range"][1] < 1.0)


def _rank(a: dict) -> int:
    return ORDER.index(a["precision"]) if a["precision"] in ORDER else len(ORDER)


def format_pick(rows: list[dict]) -> tuple[dict, list[dict]]:
    """The pick among one format's candidates, and the candidates it was preferred to."""
    rows = sorted(rows, key=_rank)
    fp32 = next((r for r in rows if r["precision"] == "fp32"), None)
    pick = rows[0]
    for row in rows[1:]:
        if stably_faster(row, pick) and (fp32 is None or row is fp32 or stably_faster(row, fp32)):
            pick = row
    return pick, [r for r in rows if r is not pick]


def _apart(a: dict, b: dict) -> bool:
    """a's process medians all below b's, neither figure unstable (separate timing phases: no ratio)."""
    la, lb = a["latency_ms"], b["latency_ms"]
    if la.get("unstable") or lb.get("unstable"):
        return False
    return max(la.get("process_medians") or [la["median"]]) < min(lb.get("process_medians") or [lb["median"]])


def choose(artifacts: list[dict], budget_points: float | None, formats: list[str] | None = None) -> dict:
    """`recommended` for a report: the artifact, its figures and the one-line reason; or why there is none."""
    pool = candidates(artifacts, budget_points)
    if not pool:
        why = "no artifact is built, verified and timed here" + (
            f" within the {budget_points:g}-point accuracy budget" if budget_points is not None else "")
        return {"artifact": None, "reason": why}
    order = list(dict.fromkeys([*(formats or []), *(a["format"] for a in pool)]))
    picks = {fmt: format_pick([a for a in pool if a["format"] == fmt]) for fmt in order
             if any(a["format"] == fmt for a in pool)}
    first = next(iter(picks))
    best = picks[first][0]
    for fmt, (pick, _) in picks.items():
        if fmt != first and _apart(pick, best):
            best = pick
    others = picks[best["format"]][1]
    return {"artifact": {k: best[k] for k in ("format", "precision", "role", "file")},
            "latency_ms": best["latency_ms"]["median"], "how": best["latency_ms"].get("how"),
            "reason": reason(best, others, artifacts, [p for f, (p, _) in picks.items() if p is not best])}


def name(a: dict) -> str:
    return f"{a['precision']} {FORMAT_NAMES.get(a['format'], a['format'])}"


def reason(best: dict, passed_over: list[dict], artifacts: list[dict], other_formats: list[dict]) -> str:
    """One line: the ratio against fp32 and the accuracy cost, or why the faster-looking ones lost."""
    parts = []
    ratio = (best.get("vs_fp32") or {}).get("latency")
    acc = best.get("accuracy") or {}
    if best["precision"] != "fp32" and ratio:
        parts.append(f"{ratio:.2f}x fp32 latency" + (f", {acc['delta'] * 100:+.1f} pt" if acc.get("delta") is not None
                                                     else ""))
    lost = [a for a in passed_over if _rank(a) > _rank(best)]
    for a in lost:
        parts.append(f"faster than {a['precision']} here" if stably_faster(best, a) else
                     f"{a['precision']} is not stably faster here" + _ratio_text(a))
    failed = [a for a in artifacts if a["format"] == best["format"] and _rank(a) > _rank(best) and a not in passed_over
              and a.get("status") == "ok"]
    for a in failed:
        parts.append(f"{a['precision']} misses its fidelity gate or the accuracy budget")
    if other_formats:
        parts.append("fastest of the formats measured" if all(_apart(best, o) for o in other_formats)
                     else f"first format of the profile (the others are not clearly faster: {_medians(other_formats)})")
    return f"{name(best)}: " + ("; ".join(parts) or "the only candidate")


def _medians(rows: list[dict]) -> str:
    return ", ".join(f"{name(o)} {o['latency_ms']['median']:.3g} ms" for o in rows)


def _ratio_text(a: dict) -> str:
    ratio = a.get("vs_fp32") or {}
    if ratio.get("latency_unstable"):
        return " (latency too unsteady to compare)"
    return f" ({ratio['latency']:.2f}x fp32 latency)" if ratio.get("latency") else ""


def line(rec: dict) -> str:
    """The report's one line."""
    if not rec.get("artifact"):
        return f"Recommended: none: {rec['reason']}."
    return f"Recommended: {rec['artifact']['file']} ({rec['reason']}; {rec['latency_ms']:.4g} ms {rec.get('how') or ''})."
