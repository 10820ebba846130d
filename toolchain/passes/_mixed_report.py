"""Automatic mixed precision's report side (passes/mixed.py): the notes of an artifact, its MIXED line, the
per-round table of report.md, the precision column's label, how much of the compute still runs int8, and the
plain int8 build's entry for the pipeline's timing phase."""
from __future__ import annotations

import shutil
from pathlib import Path

PLAIN_DIR = "int8-plain"  # beside the artifact: the plain int8 build, timed against the mixed one
SHOWN = 8               # kept layers named in a line; the rest counted
MOSTLY_FLOAT = 0.5      # under this share of MACs still int8, the artifact is called mostly float


def plain_entries(entries: list[dict]) -> list[dict]:
    """For the pipeline's timing phase: the plain int8 build a --mixed auto artifact started from, when it
    kept layers out of int8 (entries: fp32 baseline, target, ...)."""
    target = entries[1] if len(entries) > 1 and entries[1]["role"] == "target" else {}
    plain = (target.get("mixed") or {}).get("plain") or {}
    if target.get("status") != "ok" or not plain.get("file"):
        return []
    precision = plain.get("precision", target["precision"])  # the target's may be a whole-model fallback's
    return [{"format": target["format"], "precision": f"{precision} (plain)", "role": "plain",
             "status": "ok", "notes": [], "file": str(Path(target["file"]).parent / plain["file"])}]


def keep_plain(backend, out_path: Path) -> str:
    """A copy of round 1's artifact in PLAIN_DIR; its path relative to the artifact's directory."""
    directory = out_path.parent / PLAIN_DIR
    directory.mkdir(exist_ok=True)
    for f in backend.files(out_path):
        shutil.copy2(f, directory / f.name)
    return f"{PLAIN_DIR}/{out_path.name}"


def drop_plain(backend, out_path: Path) -> None:
    directory = out_path.parent / PLAIN_DIR
    for f in backend.files(out_path):
        (directory / f.name).unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def latency_cost(entries: list[dict], plain: list[dict], ratio) -> None:
    """The plain build's latency and the target's ratio to it (`ratio(entry, other)`), in `mixed`."""
    for p in plain:
        target = entries[1]
        if p["status"] == "ok" and target["status"] == "ok" and "latency_ms" in p and "latency_ms" in target:
            target["mixed"]["plain"]["latency_ms"] = p["latency_ms"]
            target["mixed"]["latency_vs_plain"] = ratio(target, p)


def scored_fidelity(entries: list[dict], plain: list[dict], judge) -> None:
    """The plain build judged like every artifact, on the scored samples (`judge(entry)` -> fidelity), in
    `mixed.plain.scored`: the rounds judged it on calibration samples, and a corpus run reports the plain and
    the --mixed auto verdict side by side from one convert."""
    for p in plain:
        try:
            entries[1]["mixed"]["plain"]["scored"] = judge(p)
        except Exception as exc:  # noqa: BLE001 - a plain build that no longer runs is a note, not a failed target
            entries[1]["notes"].append(f"the plain int8 build could not be judged on the scored samples: {exc}")


def share_text(m: dict) -> str:
    """How much of the compute still runs quantized, against the plain int8 build: 'MOSTLY FLOAT' under half."""
    mine, plain = (m.get("int8_share") or {}).get("int8_share"), (m["plain"].get("int8_share") or {}).get("int8_share")
    if mine is None:
        return "share of MACs still int8 not known"
    text = f"{mine:.0%} of MACs still int8" + (f" (plain int8 build: {plain:.0%})" if plain is not None else "")
    return ("MOSTLY FLOAT: only " if mine < MOSTLY_FLOAT else "") + text


def precision_label(artifact: dict) -> str:
    """What the report's precision column adds for a build with layers kept: ' mixed, 62% int8 MACs'."""
    m = artifact.get("mixed") or {}
    if not m.get("kept"):
        return ""
    mine = (m.get("int8_share") or {}).get("int8_share")
    return " mixed" + ("" if mine is None else f", {mine:.0%} int8 MACs" + (" (mostly float)" if mine < MOSTLY_FLOAT
                                                                              else ""))


def _names(rows: list, text=str) -> str:
    shown = ", ".join(text(r) for r in rows[:SHOWN])
    return shown + (f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else "")


def notes(entry: dict) -> list[str]:
    kept = _names(entry["kept"], lambda r: f"{r['layer']} ({r['fix']}; its output at {r['snr_db']:.1f} dB, "
                                           f"{r['fall_db']:.1f} dB below the ops before it)")
    verdict = "gate met" if entry["gate_met"] else "gate NOT met"
    if _whole(entry):
        return [f"--mixed auto: {verdict} after {entry['rounds']} rounds by the whole model in "
                f"{entry['fallback']['precision']} ({entry['fallback']['why']})"]
    if not entry["kept"]:
        return [f"--mixed auto: {verdict} with plain int8 ({entry['rounds']} round(s))"]
    return [f"--mixed auto: {verdict} after {entry['rounds']} rounds, {share_text(entry)}; kept out of int8: {kept}"]


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
        what = f"{share_text(m)}; {len(m['kept'])} layer(s) kept out of int8: " + _names(
            m["kept"], lambda r: f"{r['layer']} ({r['fix']}, output at {r['snr_db']:.1f} dB)")
    return (f"{head} after {m['rounds']} of at most {m['max_rounds']} rounds ({m['seconds']:.1f} s); {what}; "
            f"size {size} and latency {latency} the plain {m['plain'].get('precision', 'int8')} build (measured on "
            f"host){stopped}{tried}")


def markdown(artifacts: list[dict]) -> list[str]:
    """The report's mixed-precision section: per artifact, each round and what it kept."""
    lines = ["## Mixed precision (--mixed auto)", "",
             "Each round rebuilt the artifact with the layers listed kept out of int8 (float, or int16x8: 16-bit "
             "activations, int8 weights) and judged it on calibration samples against the source model (the gate of "
             "the table above). Layers are ranked by layer-wise divergence against the fp32 artifact (how far each one's "
             "output SNR falls below the ops before it); the kept set doubles until the gate is met, then the smallest "
             "passing set is searched for. A '(whole model int16x8)' round is TFLite's fallback when keeping layers "
             "did not meet the gate.",
             "", "| format | round | kept out of int8 | SNR dB (calibration) | cosine | gate |", "|---|---|---|---|---|---|"]
    for a in artifacts:
        for h in a["mixed"]["history"]:
            snr = "-" if h["snr_db"] is None else f"{h['snr_db']:.1f}"
            cos = "-" if h["cosine"] is None else f"{h['cosine']:.4f}"
            kept = (f"{len(h['kept'])}: " if len(h["kept"]) > 1 else "") + _names(h["kept"]) if h["kept"] else \
                "(plain int8)"
            lines.append(f"| {a['format']} | {h['round']} | {kept} | {snr} | {cos} | "
                         f"{'met' if h['verified'] else 'missed'} |")
        m = a["mixed"]
        lines += ["", f"- {a['format']}: {share_text(m)} ({(m.get('int8_share') or {}).get('how', 'not counted')})"
                  if m["kept"] else f"- {a['format']}: nothing kept out of int8", ""]
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
