"""Figures for one artifact: size, fidelity and accuracy. Latency and memory come from the runner.

Every figure is labelled with how it was obtained (one of HOW).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# Fidelity an artifact must reach against the source model to be marked "verified".
TOLERANCE = {
    "fp32": {"min_cosine": 0.9999, "min_top1_agreement": 0.99},
    "fp16": {"min_cosine": 0.999, "min_top1_agreement": 0.98},
    "dynamic": {"min_cosine": 0.99, "min_top1_agreement": 0.95},
    "int16x8": {"min_cosine": 0.995, "min_top1_agreement": 0.95},
    "int8": {"min_cosine": 0.98, "min_top1_agreement": 0.90},
    "int8-io": {"min_cosine": 0.98, "min_top1_agreement": 0.90},
}
# How a figure was obtained: every "how" label starts with one of these (detail in parentheses).
MEASURED, EMULATED, ESTIMATED, REMOTE = "measured on host", "emulated", "estimated", "measured on remote device"
NOT_MEASURED = "not measured"
HOW = (MEASURED, EMULATED, ESTIMATED, REMOTE, NOT_MEASURED)


def how(kind: str, detail: str = "") -> str:
    assert kind in HOW, kind
    return f"{kind} ({detail})" if detail else kind


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def size(paths: list[Path]) -> dict:
    raw = b"".join(Path(p).read_bytes() for p in paths)
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0)), "how": MEASURED}


def fidelity(reference: list[list[np.ndarray]], actual: list[list[np.ndarray]], precision: str = "fp32") -> dict:
    """Max abs error, cosine similarity and top-1 agreement of `actual` against `reference` outputs."""
    ref = [np.concatenate([np.ravel(o) for o in s]).astype(np.float64) for s in reference]
    got = [np.concatenate([np.ravel(o) for o in s]).astype(np.float64) for s in actual]
    if {r.size for r in ref} != {g.size for g in got}:
        raise ValueError(f"output sizes differ: source {ref[0].size} values, artifact {got[0].size}")
    ref_all, got_all = np.concatenate(ref), np.concatenate(got)
    denom = np.linalg.norm(ref_all) * np.linalg.norm(got_all)
    figures = {
        "max_abs_error": float(np.max(np.abs(ref_all - got_all))),
        "cosine": float(ref_all @ got_all / denom) if denom else float(np.array_equal(ref_all, got_all)),
        "top1_agreement": float(np.mean([top1(r) == top1(g) for r, g in zip(reference, actual)])),
        "samples": len(reference),
        "how": MEASURED,
    }
    tolerance = TOLERANCE[precision]
    figures["tolerance"] = tolerance
    figures["verified"] = (figures["cosine"] >= tolerance["min_cosine"]
                           and figures["top1_agreement"] >= tolerance["min_top1_agreement"])
    return figures


def top1(sample_outputs: list[np.ndarray]) -> int:
    return int(np.argmax(np.ravel(sample_outputs[0])))


def accuracy(outputs: list[list[np.ndarray]], labels: np.ndarray) -> float:
    return float(np.mean([top1(o) == int(y) for o, y in zip(outputs, labels)]))
