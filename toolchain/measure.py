"""Figures for one artifact: size, fidelity and accuracy. Latency and memory come from the runner.

Every figure is labelled with how it was obtained (one of HOW).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

# Fidelity an artifact must reach against the source model to be marked "verified". Class-score
# outputs are judged by top-1 agreement and cosine; every other output (boxes, masks, landmarks,
# embeddings) by its signal-to-noise ratio, 10 log10(sum ref^2 / sum (ref - out)^2).
TOLERANCE = {
    "fp32": {"min_cosine": 0.9999, "min_top1_agreement": 0.99, "min_snr_db": 40.0},
    "fp16": {"min_cosine": 0.999, "min_top1_agreement": 0.98, "min_snr_db": 30.0},
    "bf16": {"min_cosine": 0.998, "min_top1_agreement": 0.97, "min_snr_db": 25.0},  # 8-bit mantissa, fp32 sums
    "dynamic": {"min_cosine": 0.99, "min_top1_agreement": 0.95, "min_snr_db": 20.0},
    "int16x8": {"min_cosine": 0.995, "min_top1_agreement": 0.95, "min_snr_db": 25.0},
    "int8": {"min_cosine": 0.98, "min_top1_agreement": 0.90, "min_snr_db": 15.0},
    "int8-io": {"min_cosine": 0.98, "min_top1_agreement": 0.90, "min_snr_db": 15.0},
}
OUTPUT_KINDS = ("auto", "classes", "values")
# How a figure was obtained: every "how" label starts with one of these (detail in parentheses).
MEASURED, EMULATED, ESTIMATED, REMOTE = "measured on host", "emulated", "estimated", "measured on remote device"
NOT_MEASURED = "not measured"
HOW = (MEASURED, EMULATED, ESTIMATED, REMOTE, NOT_MEASURED)


def how(kind: str, detail: str = "") -> str:
    assert kind in HOW, kind
    return f"{kind} ({detail})" if detail else kind


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


# gzip's own default level. -9 spends its time in long match chains: on weights that hold few distinct
# values (float weights dequantized from int8, e.g. ddddocr's quantize_dynamic CRNN) it took 80-97 s per
# 41-54 MB file against 5-7 s at -6 (10% larger), and two thirds of that model's conversion.
GZIP_LEVEL = 6


def size(paths: list[Path]) -> dict:
    """Bytes on disk of an artifact's files and the size of their concatenation after gzip -GZIP_LEVEL,
    streamed file by file in chunks (the same stream as compressing the joined bytes at once)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip header and trailer
    total = packed = 0
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
                packed += len(compressor.compress(chunk))
    packed += len(compressor.flush())
    return {"bytes": total, "gzip_bytes": packed, "how": MEASURED}


def file_bytes(paths: list[Path]) -> int:
    """Bytes on disk of an artifact's files (no compression: for rounds that only compare sizes)."""
    return sum(Path(p).stat().st_size for p in paths)


def judged_as(precision: str, source_precision: str = "fp32") -> str:
    """The precision whose tolerance applies: the artifact's, or the source's own when that is looser. A
    source that quantizes activations at run time (onnxruntime's quantize_dynamic) cannot be reproduced
    closer than that by any other runtime, even one running the very same graph."""
    return min((precision, source_precision), key=lambda p: TOLERANCE[p]["min_snr_db"])


def fidelity(reference: list[list[np.ndarray]], actual: list[list[np.ndarray]], precision: str = "fp32",
             output_kind: str = "auto") -> dict:
    """Per-output SNR (dB), cosine and max abs error, plus top-1 agreement for class-score outputs,
    of `actual` against `reference`; `verified` uses the metric that fits each output.

    output_kind: "classes" or "values" for every output, or "auto" (judged from shape and values).
    """
    if {len(s) for s in reference} != {len(s) for s in actual}:
        raise ValueError(f"output counts differ: source {len(reference[0])}, artifact {len(actual[0])}")
    tolerance = TOLERANCE[precision]
    outputs = []
    for k in range(len(reference[0])):
        ref = [np.asarray(s[k]) for s in reference]
        got = [np.asarray(s[k]) for s in actual]
        if {r.size for r in ref} != {g.size for g in got}:
            raise ValueError(f"output {k} sizes differ: source {ref[0].size} values, artifact {got[0].size}")
        kind = output_kind if output_kind != "auto" else detect_kind(ref)
        outputs.append(_output_figures(ref, got, kind, tolerance))
    ref_all = np.concatenate([np.ravel(o) for s in reference for o in s]).astype(np.float64)
    got_all = np.concatenate([np.ravel(o) for s in actual for o in s]).astype(np.float64)
    return {
        "max_abs_error": float(np.max(np.abs(ref_all - got_all))) if ref_all.size else 0.0,
        "cosine": _cosine(ref_all, got_all),
        "snr_db": min((o["snr_db"] for o in outputs), default=SNR_CAP_DB),
        "top1_agreement": float(np.mean([top1(r) == top1(g) for r, g in zip(reference, actual)])),
        "outputs": outputs,
        "judged_by": sorted({o["judged_by"] for o in outputs}),
        "samples": len(reference),
        "how": MEASURED,
        "tolerance": tolerance,
        "verified": all(o["verified"] for o in outputs),
    }


SNR_CAP_DB = 300.0  # identical outputs


def detect_kind(samples: list[np.ndarray]) -> str:
    """'classes' for a per-sample vector of >= 2 probabilities (non-negative, summing to 1), else 'values'.

    Logits cannot be told apart from a regression vector by their values: they are judged as
    values (SNR) unless the profile or --outputs says classes."""
    first = samples[0]
    if not np.issubdtype(first.dtype, np.floating) or sum(d > 1 for d in first.shape) != 1 or first.size < 2:
        return "values"
    stacked = np.stack([np.ravel(s) for s in samples]).astype(np.float64)
    return "classes" if np.all(stacked >= -1e-6) and np.allclose(stacked.sum(axis=1), 1.0, atol=1e-3) else "values"


def _output_figures(ref: list[np.ndarray], got: list[np.ndarray], kind: str, tolerance: dict) -> dict:
    r = np.concatenate([np.ravel(a) for a in ref]).astype(np.float64)
    g = np.concatenate([np.ravel(a) for a in got]).astype(np.float64)
    noise = float(np.sum((r - g) ** 2))
    signal = float(np.sum(r ** 2))
    snr = snr_db(signal, noise)
    figures = {"shape": list(ref[0].shape), "kind": kind, "snr_db": snr, "cosine": _cosine(r, g),
               "max_abs_error": float(np.max(np.abs(r - g))) if r.size else 0.0}
    if kind == "classes":
        figures["top1_agreement"] = float(np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(ref, got)]))
        figures["judged_by"] = "top-1 agreement and cosine"
        figures["verified"] = (figures["top1_agreement"] >= tolerance["min_top1_agreement"]
                               and figures["cosine"] >= tolerance["min_cosine"])
    elif signal <= 1e-12 * max(r.size, 1):  # an all-zero reference has no SNR
        figures["judged_by"] = "max abs error (reference output is all zeros)"
        figures["verified"] = figures["max_abs_error"] <= 1e-4
    else:
        figures["judged_by"] = "SNR"
        figures["verified"] = snr >= tolerance["min_snr_db"]
    return figures


def snr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise) from the sums of ref^2 and (ref - out)^2, capped at +-SNR_CAP_DB."""
    if noise == 0:
        return SNR_CAP_DB
    return float(np.clip(10 * np.log10(max(signal, 1e-30) / noise), -SNR_CAP_DB, SNR_CAP_DB))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def top1(sample_outputs: list[np.ndarray]) -> int:
    return int(np.argmax(np.ravel(sample_outputs[0])))


def accuracy(outputs: list[list[np.ndarray]], labels: np.ndarray) -> float:
    return float(np.mean([top1(o) == int(y) for o, y in zip(outputs, labels)]))
