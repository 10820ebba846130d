"""TFLite's integer arithmetic (tensorflow/lite/kernels/internal/common.h), on int64 numpy arrays."""
from __future__ import annotations

import math

import numpy as np


def quantize_multiplier(real: float) -> tuple[int, int]:
    """A real multiplier as (int32 significand, power-of-two exponent), as TFLite's QuantizeMultiplier."""
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    significand = int(math.floor(fraction * (1 << 31) + 0.5))  # std::round: half away from zero (positive here)
    if significand == 1 << 31:
        significand //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return significand, shift


def high_mul(a: np.ndarray, b) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul on int64 arrays holding int32 values."""
    b = np.asarray(b, np.int64)
    ab = a.astype(np.int64) * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    result = np.where(total >= 0, total >> 31, -((-total) >> 31))  # C division truncates toward zero
    overflow = (a == -(1 << 31)) & (b == -(1 << 31))
    return np.where(overflow, (1 << 31) - 1, result)


def rounding_shift(x: np.ndarray, exponent) -> np.ndarray:
    """RoundingDivideByPOT: round to nearest, ties away from zero."""
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def requantize(acc: np.ndarray, multiplier, shift, style: str = "fixed-point") -> np.ndarray:
    """MultiplyByQuantizedMultiplier (fixed-point), or a plain rounding shift for power-of-two scales."""
    shift = np.asarray(shift, np.int64)
    if style == "shift":  # multiplier is 2**30 (0.5 in Q31): scale is 2**(shift - 1)
        total = 1 - shift
        up = np.where(total < 0, -total, 0)
        down = np.where(total > 0, total, 0)
        shifted = acc.astype(np.int64) << up
        return np.where(down > 0, (shifted + (np.int64(1) << np.maximum(down - 1, 0))) >> down, shifted)
    if style == "single":  # one rounding of the full 64-bit product (TFLite's per-channel FULLY_CONNECTED)
        total = 31 - shift
        return (acc.astype(np.int64) * np.asarray(multiplier, np.int64) + (np.int64(1) << (total - 1))) >> total
    left = np.where(shift > 0, shift, 0)
    right = np.where(shift > 0, 0, -shift)
    return rounding_shift(high_mul(acc.astype(np.int64) << left, multiplier), right)


def saturate(acc: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(acc, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def multipliers(in_scale: float, w_scales: np.ndarray, out_scale: float, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (significand, shift) of in_scale * w_scale / out_scale."""
    scales = np.broadcast_to(w_scales, (channels,)) if w_scales.size == 1 else w_scales
    pairs = [quantize_multiplier(float(np.float64(in_scale) * np.float64(s) / np.float64(out_scale))) for s in scales]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)
