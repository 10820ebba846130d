"""Integer-only numpy kernels with TFLite's arithmetic, one function per op kind.

Each kernel is `(emu, op, args, style, bits) -> array`: `args` are the op's input values,
`style` the requantization ("fixed-point", "shift", or "single"), `bits` the accumulator width.
Windowed ops (convolutions, pooling) accumulate one kernel tap at a time over strided views of
the padded input, so memory stays at a few output-sized buffers whatever the kernel size.
Products of int8 values are summed in float64 BLAS: every partial sum is an integer far below
2**53, so the result is exact.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConversionError
from .fixedpoint import multipliers, quantize_multiplier, requantize, saturate


def _padding(size: int, filt: int, stride: int, dilation: int, same: bool) -> tuple[int, int]:
    effective = (filt - 1) * dilation + 1
    out = (size + stride - 1) // stride if same else (size - effective + stride) // stride
    total = max((out - 1) * stride + effective - size, 0) if same else 0
    return out, total // 2


def _taps(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, same: bool, pad_value, dtype):
    """Yield ((N, OH, OW, C) view, (OH, OW) validity) for each kernel tap of an NHWC tensor."""
    n, h, w, c = x.shape
    oh, ph = _padding(h, kh, sh, dh, same)
    ow, pw = _padding(w, kw, sw, dw, same)
    rows = max((oh - 1) * sh + (kh - 1) * dh + 1, ph + h)
    cols = max((ow - 1) * sw + (kw - 1) * dw + 1, pw + w)
    padded = np.full((n, rows, cols, c), pad_value, dtype)
    padded[:, ph:ph + h, pw:pw + w] = x
    valid = np.zeros((rows, cols), bool)
    valid[ph:ph + h, pw:pw + w] = True
    for i in range(kh):
        for j in range(kw):
            r = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
            q = slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)
            yield padded[:, r, q], valid[r, q]


def _finish(emu, op, acc: np.ndarray, multiplier, shift, style: str) -> np.ndarray:
    out = emu.t(op.outputs[0])
    if style == "shift" and np.any(np.asarray(multiplier) != 1 << 30):
        raise ConversionError(f"{op.kind} {out.name}: shift-only requantization needs power-of-two scales")
    low, high = emu.activation_range(op, out)
    return np.clip(requantize(acc, multiplier, shift, style) + int(out.zero_point[0]), low, high).astype(np.int8)


def _bias(args) -> np.ndarray | int:
    return args[2].astype(np.int64) if len(args) > 2 and args[2] is not None else 0


def conv(emu, op, args, style: str, bits: int) -> np.ndarray:
    x, w = args[0], args[1]
    xin, win = emu.t(op.inputs[0]), emu.t(op.inputs[1])
    o = op.options
    zp = int(xin.zero_point[0])
    centred = x.astype(np.float64) - zp
    acc = None
    pointwise = w.shape[1] == w.shape[2] == 1 and o.strideH == o.strideW == 1
    taps = [(centred, None)] if pointwise else _taps(centred, w.shape[1], w.shape[2], o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor,
                 o.padding == 0, 0.0, np.float64)
    for k, (view, _) in enumerate(taps):
        i, j = divmod(k, w.shape[2])
        part = view @ w[:, i, j, :].astype(np.float64).T
        if acc is None:
            acc = part
        else:
            acc += part
    acc = saturate(acc.astype(np.int64) + _bias(args), bits)
    m, s = multipliers(float(xin.scale[0]), win.scale, float(emu.t(op.outputs[0]).scale[0]), w.shape[0])
    return _finish(emu, op, acc, m, s, style)


def depthwise(emu, op, args, style: str, bits: int) -> np.ndarray:
    x, w = args[0], args[1]
    xin, win = emu.t(op.inputs[0]), emu.t(op.inputs[1])
    o = op.options
    zp = int(xin.zero_point[0])
    multiplier = o.depthMultiplier or 1
    centred = x.astype(np.int32) - zp  # |sum| <= taps * 255 * 127: int32 is exact for any window below 66,000
    if multiplier > 1:  # output channel c*m + k reads input channel c
        centred = np.repeat(centred, multiplier, axis=-1)
    acc = None
    w = w.astype(np.int32)
    taps = _taps(centred, w.shape[1], w.shape[2], o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor,
                 o.padding == 0, 0, np.int32)
    for k, (view, _) in enumerate(taps):
        i, j = divmod(k, w.shape[2])
        part = view * w[0, i, j]
        if acc is None:
            acc = part
        else:
            acc += part
    acc = saturate(acc.astype(np.int64) + _bias(args), bits)
    m, s = multipliers(float(xin.scale[0]), win.scale, float(emu.t(op.outputs[0]).scale[0]), w.shape[-1])
    return _finish(emu, op, acc, m, s, style)


def fully_connected(emu, op, args, style: str, bits: int) -> np.ndarray:
    x, w = args[0], args[1]
    xin, win, out = emu.t(op.inputs[0]), emu.t(op.inputs[1]), emu.t(op.outputs[0])
    x = x.reshape(-1, w.shape[1]).astype(np.float64) - int(xin.zero_point[0])
    acc = saturate((x @ w.astype(np.float64).T).astype(np.int64) + _bias(args), bits)
    m, s = multipliers(float(xin.scale[0]), win.scale, float(out.scale[0]), w.shape[0])
    if style == "fixed-point" and win.scale.size > 1:
        style = "single"  # TFLite's per-channel FULLY_CONNECTED rounds once, unlike its convolutions
    return _finish(emu, op, acc, m, s, style).reshape(batched(out.shape, len(args[0])))


def add(emu, op, args, style: str, bits: int) -> np.ndarray:
    a, b = (emu.t(i) for i in op.inputs[:2])
    out = emu.t(op.outputs[0])
    left_shift = 20
    twice_max = np.float64(2 * max(np.float32(a.scale[0]), np.float32(b.scale[0])))
    real = [np.float64(a.scale[0]) / twice_max, np.float64(b.scale[0]) / twice_max,
            twice_max / ((1 << left_shift) * np.float64(out.scale[0]))]
    (m1, s1), (m2, s2), (mo, so) = (quantize_multiplier(float(r)) for r in real)
    scaled = [requantize((v.astype(np.int64) - int(t.zero_point[0])) << left_shift, m, s)
              for v, t, m, s in ((args[0], a, m1, s1), (args[1], b, m2, s2))]
    low, high = emu.activation_range(op, out)
    total = requantize(scaled[0] + scaled[1], mo, so) + int(out.zero_point[0])
    return np.clip(total, low, high).astype(np.int8)


def pool(emu, op, args, style: str, bits: int, average: bool) -> np.ndarray:
    o = op.options
    out = emu.t(op.outputs[0])
    x = args[0].astype(np.int64)
    total = count = None
    for view, valid in _taps(x, o.filterHeight, o.filterWidth, o.strideH, o.strideW, 1, 1, o.padding == 0, 0,
                             np.int64):
        valid = valid[None, :, :, None]
        part = np.where(valid, view, 0) if average else np.where(valid, view, -(1 << 40))
        if total is None:
            total, count = part, valid.astype(np.int64)
        elif average:
            total, count = total + part, count + valid
        else:
            total = np.maximum(total, part)
    if average:
        total = np.where(total > 0, (total + count // 2) // count, -((-total + count // 2) // count))
    low, high = emu.activation_range(op, out)
    return np.clip(total, low, high).astype(np.int8)


def mean(emu, op, args, style: str, bits: int) -> np.ndarray:
    """int8 MEAN (TFLite's QuantizedMeanOrSum): 1/count is folded into the fixed-point multiplier."""
    xin, out = emu.t(op.inputs[0]), emu.t(op.outputs[0])
    x = args[0].astype(np.int64)
    axes = tuple(int(a) % x.ndim for a in np.ravel(args[1]))
    count = int(np.prod([x.shape[a] for a in axes]))
    multiplier, shift = quantize_multiplier(float(np.float64(xin.scale[0]) / np.float64(out.scale[0])))
    fold = min(count.bit_length() - 1, 32, 31 + shift)
    multiplier = (multiplier << fold) // count
    total = (x - int(xin.zero_point[0])).sum(axis=axes)
    value = requantize(total, multiplier, shift - fold) + int(out.zero_point[0])
    return np.clip(value, -128, 127).astype(np.int8).reshape(batched(out.shape, len(args[0])))


def reshape(emu, op, args, style: str, bits: int) -> np.ndarray:
    return args[0].reshape(batched(emu.t(op.outputs[0]).shape, len(args[0])))


def batched(shape: tuple, batch: int) -> tuple:
    """The graph's batch-1 shape for `batch` samples run at once."""
    return (batch, *shape[1:])


def pad(emu, op, args, style: str, bits: int) -> np.ndarray:
    pads = np.asarray(args[1]).reshape(-1, 2)
    return np.pad(args[0], pads, constant_values=int(emu.t(op.outputs[0]).zero_point[0]))


def concatenation(emu, op, args, style: str, bits: int) -> np.ndarray:
    out = emu.t(op.outputs[0])
    parts = []
    for array, index in zip(args, op.inputs):
        t = emu.t(index)
        if t.scale[0] == out.scale[0] and t.zero_point[0] == out.zero_point[0]:
            parts.append(array)
            continue  # otherwise TFLite rescales in float: reference_ops::ConcatenationWithScaling
        scale = np.float32(t.scale[0]) * (np.float32(1.0) / np.float32(out.scale[0]))
        bias = np.float32(-t.zero_point[0]) * scale
        parts.append(np.clip(np.round(array.astype(np.float32) * scale + bias) + out.zero_point[0], -128, 127))
    return np.concatenate(parts, axis=op.options.axis).astype(np.int8)


def softmax(emu, op, args, style: str, bits: int) -> np.ndarray:
    """On the accelerator, in float: it has no exp; not bit-exact with TFLite's LUT kernel."""
    xin, out = emu.t(op.inputs[0]), emu.t(op.outputs[0])
    logits = (args[0].astype(np.float32) - xin.zero_point[0]) * xin.scale[0] * op.options.beta
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    return np.clip(np.round(probs / out.scale[0]) + out.zero_point[0], -128, 127).astype(np.int8)


def quantize(emu, op, args, style: str, bits: int) -> np.ndarray:
    out = emu.t(op.outputs[0])
    if np.issubdtype(args[0].dtype, np.floating):
        q = np.round(args[0].astype(np.float32) / out.scale[0]) + out.zero_point[0]
        return np.clip(q, -128, 127).astype(np.int8)
    xin = emu.t(op.inputs[0])  # int8 -> int8 requantize
    m, s = quantize_multiplier(float(np.float64(xin.scale[0]) / np.float64(out.scale[0])))
    value = requantize(args[0].astype(np.int64) - int(xin.zero_point[0]), m, s) + int(out.zero_point[0])
    return np.clip(value, -128, 127).astype(np.int8)


def dequantize(emu, op, args, style: str, bits: int) -> np.ndarray:
    t = emu.t(op.inputs[0])
    return ((args[0].astype(np.int32) - int(t.zero_point[0])) * np.float32(t.scale[0])).astype(np.float32)


KERNELS = {"CONV_2D": conv, "DEPTHWISE_CONV_2D": depthwise, "FULLY_CONNECTED": fully_connected, "ADD": add,
           "MAX_POOL_2D": lambda *a: pool(*a, average=False), "AVERAGE_POOL_2D": lambda *a: pool(*a, average=True),
           "MEAN": mean, "RESHAPE": reshape, "PAD": pad, "CONCATENATION": concatenation, "SOFTMAX": softmax,
           "QUANTIZE": quantize, "DEQUANTIZE": dequantize}
# On the CPU these run with LiteRT's own kernel (what the host would run), not the numpy one.
CPU_VIA_LITERT = ("SOFTMAX",)
