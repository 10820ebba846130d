"""Automatic mixed precision's report text (passes/mixed.py): the notes of an artifact, its MIXED line, and
the per-round table of report.md."""
from __future__ import annotations


def notes(entry: dict) -> list[str]:
    kept = ", ".join(f"{r['layer']} ({r['fix']}; its output at {r['snr_db']:.1f} dB, {r['fall_db']:.1f} dB below "
                     f"the ops before it)" for r in entry["kept"])
    verdict = "gate met" if entry["gate_met"] else "gate NOT met"
    if _whole(entry):
        return [f"--mixed auto: {verdict} after {entry['rounds']} rounds by the whole model in "
                f"{entry['fallback']['precision']} ({entry['fallback']['why']})"]
    if not entry["kept"]:
        return [f"--mixed auto: {verdict} with plain int8 ({entry['rounds']} round(s))"]
    return [f"--mixed auto: {verdict} after {entry['rounds']} rounds, kept out of int8: {kept}"]


def summary_line(artifact: dict) -> str:
    """One line for the report's notes: what was kept out of int8 and what it cost."""
    m = artifact["mixed"]
    head = f"MIXED {artifact['format']} {artifact['precision']}: gate {'met' if m['gate_met'] else 'NOT met'}"
    stopped = f"; stopped: {m['stopped']}" if m.get("stopped") else ""
    tried = _fallback_tried(m)
    if not m["kept"] and not _whole(m):
        return (f"{head} by the plain int8 build ({m['rounds']} round(s), {m['seconds']:.1f} s); nothing kept out of "
                f"int8{stopped}{tried}")
    lat = m.get("latency_vs_plain") or {}
    latency = "not timed" if not lat else "too unsteady to compare" if lat.get("latency") is None else \
        f"{lat['latency']:.2f}x" + (" (unstable)" if lat.get("latency_unstable") else "")
    size = f"{m['size_vs_plain']:.2f}x" if m.get("size_vs_plain") else "-"
    if _whole(m):
        what = (f"the whole model built in {m['fallback']['precision']} instead, judged at the gate asked for "
                f"(why: {m['fallback']['why']})")
    else:
        what = "kept out of int8: " + ", ".join(f"{r['layer']} ({r['fix']}, output at {r['snr_db']:.1f} dB)"
                                                for r in m["kept"])
    return (f"{head} after {m['rounds']} of at most {m['max_rounds']} rounds ({m['seconds']:.1f} s); {what}; "
            f"size {size} and latency {latency} the plain {m['plain'].get('precision', 'int8')} build (measured on "
            f"host){stopped}{tried}")


def markdown(artifacts: list[dict]) -> list[str]:
    """The report's mixed-precision section: per artifact, each round and what it kept."""
    lines = ["## Mixed precision (--mixed auto)", "",
             "Each round rebuilt the artifact with the layers listed kept out of int8 (float, or int16x8: 16-bit "
             "activations, int8 weights) and judged it on calibration samples against the source model (the gate of "
             "the table above). A layer is chosen by layer-wise divergence against the fp32 artifact: the one whose "
             "output SNR falls furthest below the ops before it. A '(whole model int16x8)' round is TFLite's fallback "
             "when keeping layers did not meet the gate.",
             "", "| format | round | kept out of int8 | SNR dB (calibration) | cosine | gate |", "|---|---|---|---|---|---|"]
    for a in artifacts:
        for h in a["mixed"]["history"]:
            snr = "-" if h["snr_db"] is None else f"{h['snr_db']:.1f}"
            cos = "-" if h["cosine"] is None else f"{h['cosine']:.4f}"
            lines.append(f"| {a['format']} | {h['round']} | {', '.join(h['kept']) or '(plain int8)'} | {snr} | {cos} | "
                         f"{'met' if h['verified'] else 'missed'} |")
    return lines


def _whole(entry: dict) -> bool:
    return bool((entry.get("fallback") or {}).get("chosen"))


def _fallback_tried(entry: dict) -> str:
    """What the whole-model fallback did when it was tried and not kept."""
    f = entry.get("fallback")
    if not f or f.get("chosen"):
        return ""
    got = f"failed: {f['error']}" if f.get("error") else \
        f"missed too ({'-' if f.get('snr_db') is None else format(f['snr_db'], '.1f')} dB)"
    return f"; the whole model in {f['precision']} was tried last and {got}"
