"""An int8 accelerator emulator: runs a full-integer .tflite graph with integer-only numpy
arithmetic, per an accelerator profile's rules, and a cycle model for the same graph.

Arithmetic (what the profile's `[accelerator]` table declares):
* products of int8 values accumulate in `accumulator_bits`-wide registers, saturating;
* requantization is either TFLite's fixed-point multiplier + rounding shift
  (`requant = "fixed-point"`, gemmlowp's SaturatingRoundingDoublingHighMul then
  RoundingDivideByPOT: bit-exact with TFLite's reference kernels) or a plain arithmetic shift
  with round-half-up (`requant = "shift"`, for power-of-two scales);
* the fused activation clamps to the quantized range.
Ops outside the profile's `ops` list run as a CPU fallback partition (with TFLite's reference
integer arithmetic too), and are listed in the report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError
from .schema import option

EMULATED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MAX_POOL_2D", "AVERAGE_POOL_2D",
                "MEAN", "RESHAPE", "PAD", "CONCATENATION", "SOFTMAX", "QUANTIZE", "DEQUANTIZE")
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class AcceleratorSpec:
    mac_rows: int = option(16, "MAC array rows (output channels computed in parallel).")
    mac_cols: int = option(16, "MAC array columns (input channels / reduction lanes in parallel).")
    clock_mhz: float = option(200.0, "Accelerator clock.")
    accumulator_bits: int = option(32, "Accumulator width; sums saturate at its limits.")
    requant: str = option("fixed-point", "fixed-point (int32 multiplier + shift, as TFLite) or shift (power-of-two "
                                         "scales, shift only).", choices=("fixed-point", "shift"))
    scales: str = option("per-channel", "Weight scales per output channel or one per tensor.",
                         choices=("per-channel", "per-tensor"))
    onchip_kib: int = option(256, "On-chip buffer for weights and activations.")
    dram_gbps: float = option(1.0, "DRAM bandwidth for what does not fit on chip.")
    ops: list[str] = option(["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MAX_POOL_2D",
                             "AVERAGE_POOL_2D", "RESHAPE", "PAD", "CONCATENATION"],
                            "Ops the accelerator runs; any other op falls back to the CPU.", choices=EMULATED_OPS)


# --- TFLite's integer arithmetic (tensorflow/lite/kernels/internal/common.h) ----------------------

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


def _high_mul(a: np.ndarray, b) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul on int64 arrays holding int32 values."""
    b = np.asarray(b, np.int64)
    ab = a.astype(np.int64) * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    result = np.where(total >= 0, total >> 31, -((-total) >> 31))  # C division truncates toward zero
    overflow = (a == -(1 << 31)) & (b == -(1 << 31))
    return np.where(overflow, (1 << 31) - 1, result)


def _rounding_shift(x: np.ndarray, exponent) -> np.ndarray:
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
    return _rounding_shift(_high_mul(acc.astype(np.int64) << left, multiplier), right)


def _saturate(acc: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(acc, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


# --- the graph ----------------------------------------------------------------------------------

@dataclass
class Tensor:
    name: str
    shape: tuple
    dtype: str
    scale: np.ndarray
    zero_point: np.ndarray
    data: np.ndarray | None


@dataclass
class Op:
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: object


def load(path: Path) -> tuple[list[Tensor], list[Op], list[int], list[int]]:
    """Tensors, ops, graph inputs and outputs of a .tflite file."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    tensors = []
    for t in graph.tensors:
        q = t.quantization
        buffer = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
        dtype = {"int8": np.int8, "int32": np.int32, "int64": np.int64, "float32": np.float32, "int16": np.int16,
                 "uint8": np.uint8}.get(types[t.type], np.float32)
        data = np.frombuffer(bytes(buffer), dtype=dtype).reshape(t.shape) if buffer is not None and len(buffer) else None
        scale = np.asarray(q.scale if q is not None and q.scale is not None else [0.0], np.float32)
        zero = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [0], np.int64)
        tensors.append(Tensor(t.name.decode() if isinstance(t.name, bytes) else t.name, tuple(int(d) for d in t.shape),
                              types[t.type], scale, zero, data))
    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        ops.append(Op(names[max(code.builtinCode, code.deprecatedBuiltinCode)], list(op.inputs), list(op.outputs),
                      op.builtinOptions))
    return tensors, ops, list(graph.inputs), list(graph.outputs)


class Emulator:
    """Executes the int8 graph op by op; `spec` says which ops the accelerator runs and how."""

    def __init__(self, path: Path, spec: AcceleratorSpec):
        self.tensors, self.ops, self.inputs, self.outputs = load(path)
        self.spec = spec
        unsupported = sorted({op.kind for op in self.ops} - set(EMULATED_OPS))
        if unsupported:
            raise ConversionError(f"the emulator has no kernel for {', '.join(unsupported)}")

    def placement(self) -> list[tuple[Op, str]]:
        return [(op, "accelerator" if op.kind in self.spec.ops else "cpu") for op in self.ops]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        values = self.run_all(arrays)
        return [values[i] for i in self.outputs]

    def run_all(self, arrays: list[np.ndarray]) -> dict[int, np.ndarray]:
        """Every tensor's value after one inference (for op-by-op comparisons)."""
        values: dict[int, np.ndarray] = {i: t.data for i, t in enumerate(self.tensors) if t.data is not None}
        for index, array in zip(self.inputs, arrays):
            values[index] = np.asarray(array)
        for op, where in self.placement():
            style = self.spec.requant if where == "accelerator" else "fixed-point"
            bits = self.spec.accumulator_bits if where == "accelerator" else 32
            result = KERNELS[op.kind](self, op, [values.get(i) for i in op.inputs], style, bits)
            values[op.outputs[0]] = result
        return values

    def t(self, index: int) -> Tensor:
        return self.tensors[index]

    def activation_range(self, op: Op, out: Tensor) -> tuple[int, int]:
        kind = getattr(op.options, "fusedActivationFunction", 0)
        scale, zero = float(out.scale[0]), int(out.zero_point[0])
        low, high = -128, 127
        if kind in (1, 3):  # RELU, RELU6
            low = max(low, zero)
        if kind == 3:
            high = min(high, zero + int(round(6.0 / scale)))
        if kind == 2:  # RELU_N1_TO_1
            low, high = max(low, zero + int(round(-1.0 / scale))), min(high, zero + int(round(1.0 / scale)))
        return low, high


def _multipliers(in_scale: float, w_scales: np.ndarray, out_scale: float, channels: int) -> tuple[np.ndarray, np.ndarray]:
    scales = np.broadcast_to(w_scales, (channels,)) if w_scales.size == 1 else w_scales
    pairs = [quantize_multiplier(float(np.float64(in_scale) * np.float64(s) / np.float64(out_scale))) for s in scales]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def _padding(size: int, filt: int, stride: int, dilation: int, same: bool) -> tuple[int, int]:
    effective = (filt - 1) * dilation + 1
    out = (size + stride - 1) // stride if same else (size - effective + stride) // stride
    total = max((out - 1) * stride + effective - size, 0) if same else 0
    return out, total // 2


def _patches(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, same: bool, pad_value: int):
    """(N, OH, OW, KH, KW, C) windows of an NHWC tensor, padded with `pad_value`, and a validity mask."""
    n, h, w, c = x.shape
    oh, ph = _padding(h, kh, sh, dh, same)
    ow, pw = _padding(w, kw, sw, dw, same)
    padded = np.full((n, h + 2 * (kh * dh) + ph, w + 2 * (kw * dw) + pw, c), pad_value, np.int64)
    padded[:, ph:ph + h, pw:pw + w] = x
    valid = np.zeros(padded.shape[1:3], bool)
    valid[ph:ph + h, pw:pw + w] = True
    rows = (np.arange(oh) * sh)[:, None] + np.arange(kh) * dh
    cols = (np.arange(ow) * sw)[:, None] + np.arange(kw) * dw
    windows = padded[:, rows[:, None, :, None], cols[None, :, None, :]]
    return windows, valid[rows[:, None, :, None], cols[None, :, None, :]]


def _finish(emu: Emulator, op: Op, acc: np.ndarray, multiplier, shift, style: str) -> np.ndarray:
    out = emu.t(op.outputs[0])
    if style == "shift" and np.any(np.asarray(multiplier) != 1 << 30):
        raise ConversionError(f"{op.kind} {out.name}: shift-only requantization needs power-of-two scales")
    low, high = emu.activation_range(op, out)
    return np.clip(requantize(acc, multiplier, shift, style) + int(out.zero_point[0]), low, high).astype(np.int8)


def _conv(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
    x, w, b = args[0].astype(np.int64), args[1].astype(np.int64), args[2] if len(args) > 2 else None
    xin, win, out = emu.t(op.inputs[0]), emu.t(op.inputs[1]), emu.t(op.outputs[0])
    o = op.options
    same = o.padding == 0
    zp = int(xin.zero_point[0])
    windows, _ = _patches(x, w.shape[1], w.shape[2], o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor, same, zp)
    acc = np.einsum("nhwijc,oijc->nhwo", windows - zp, w, optimize=True)
    acc = _saturate(acc + (b.astype(np.int64) if b is not None else 0), bits)
    m, s = _multipliers(float(xin.scale[0]), win.scale, float(out.scale[0]), w.shape[0])
    return _finish(emu, op, acc, m, s, style)


def _depthwise(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
    x, w, b = args[0].astype(np.int64), args[1].astype(np.int64), args[2] if len(args) > 2 else None
    xin, win, out = emu.t(op.inputs[0]), emu.t(op.inputs[1]), emu.t(op.outputs[0])
    o = op.options
    zp = int(xin.zero_point[0])
    windows, _ = _patches(x, w.shape[1], w.shape[2], o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor,
                          o.padding == 0, zp)
    multiplier = o.depthMultiplier or 1
    windows = np.repeat(windows - zp, multiplier, axis=-1)  # output channel c*m + k reads input channel c
    acc = np.einsum("nhwijc,ijc->nhwc", windows, w[0], optimize=True)
    acc = _saturate(acc + (b.astype(np.int64) if b is not None else 0), bits)
    m, s = _multipliers(float(xin.scale[0]), win.scale, float(out.scale[0]), w.shape[-1])
    return _finish(emu, op, acc, m, s, style)


def _fully_connected(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
    x, w, b = args[0].astype(np.int64), args[1].astype(np.int64), args[2] if len(args) > 2 else None
    xin, win, out = emu.t(op.inputs[0]), emu.t(op.inputs[1]), emu.t(op.outputs[0])
    x = x.reshape(-1, w.shape[1]) - int(xin.zero_point[0])
    acc = _saturate(x @ w.T + (b.astype(np.int64) if b is not None else 0), bits)
    m, s = _multipliers(float(xin.scale[0]), win.scale, float(out.scale[0]), w.shape[0])
    if style == "fixed-point" and win.scale.size > 1:
        style = "single"  # TFLite's per-channel FULLY_CONNECTED rounds once, unlike its convolutions
    return _finish(emu, op, acc, m, s, style).reshape(_batched(out.shape, len(args[0])))


def _add(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
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


def _pool(emu: Emulator, op: Op, args, style: str, bits: int, average: bool) -> np.ndarray:
    o = op.options
    out = emu.t(op.outputs[0])
    x = args[0].astype(np.int64)
    windows, valid = _patches(x, o.filterHeight, o.filterWidth, o.strideH, o.strideW, 1, 1, o.padding == 0, 0)
    valid = np.broadcast_to(valid[None, ..., None], windows.shape)
    low, high = emu.activation_range(op, out)
    if average:
        total = np.where(valid, windows, 0).sum(axis=(3, 4))
        count = valid.sum(axis=(3, 4))
        value = np.where(total > 0, (total + count // 2) // count, -((-total + count // 2) // count))
    else:
        value = np.where(valid, windows, -(1 << 40)).max(axis=(3, 4))
    return np.clip(value, low, high).astype(np.int8)


def _mean(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
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
    return np.clip(value, -128, 127).astype(np.int8).reshape(_batched(out.shape, len(args[0])))


def _reshape(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
    return args[0].reshape(_batched(emu.t(op.outputs[0]).shape, len(args[0])))


def _batched(shape: tuple, batch: int) -> tuple:
    """The graph's batch-1 shape for `batch` samples run at once."""
    return (batch, *shape[1:])


def _pad(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
    pads = np.asarray(args[1]).reshape(-1, 2)
    return np.pad(args[0], pads, constant_values=int(emu.t(op.outputs[0]).zero_point[0]))


def _concatenation(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
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


def _softmax(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
    """CPU fallback in float: the accelerator has no exp; not bit-exact with TFLite's LUT kernel."""
    xin, out = emu.t(op.inputs[0]), emu.t(op.outputs[0])
    logits = (args[0].astype(np.float32) - xin.zero_point[0]) * xin.scale[0] * op.options.beta
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    return np.clip(np.round(probs / out.scale[0]) + out.zero_point[0], -128, 127).astype(np.int8)


def _quantize(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
    out = emu.t(op.outputs[0])
    if np.issubdtype(args[0].dtype, np.floating):
        q = np.round(args[0].astype(np.float32) / out.scale[0]) + out.zero_point[0]
        return np.clip(q, -128, 127).astype(np.int8)
    xin = emu.t(op.inputs[0])  # int8 -> int8 requantize
    m, s = quantize_multiplier(float(np.float64(xin.scale[0]) / np.float64(out.scale[0])))
    value = requantize(args[0].astype(np.int64) - int(xin.zero_point[0]), m, s) + int(out.zero_point[0])
    return np.clip(value, -128, 127).astype(np.int8)


def _dequantize(emu: Emulator, op: Op, args, style: str, bits: int) -> np.ndarray:
    t = emu.t(op.inputs[0])
    return ((args[0].astype(np.int32) - int(t.zero_point[0])) * np.float32(t.scale[0])).astype(np.float32)


KERNELS = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _fully_connected, "ADD": _add,
           "MAX_POOL_2D": lambda *a: _pool(*a, average=False), "AVERAGE_POOL_2D": lambda *a: _pool(*a, average=True),
           "MEAN": _mean, "RESHAPE": _reshape, "PAD": _pad, "CONCATENATION": _concatenation, "SOFTMAX": _softmax,
           "QUANTIZE": _quantize, "DEQUANTIZE": _dequantize}


def quantize_input(emu: Emulator, index: int, array: np.ndarray) -> np.ndarray:
    t = emu.t(index)
    if t.dtype != "int8" or not np.issubdtype(array.dtype, np.floating):
        return array
    return np.clip(np.round(array / t.scale[0]) + t.zero_point[0], -128, 127).astype(np.int8)


def dequantize_output(emu: Emulator, index: int, array: np.ndarray) -> np.ndarray:
    t = emu.t(index)
    if t.dtype != "int8":
        return array
    return ((array.astype(np.float32) - t.zero_point[0]) * t.scale[0]).astype(np.float32)


# --- power-of-two scales --------------------------------------------------------------------------

def power_of_two_scales(path: Path) -> int:
    """Rewrite a full-integer .tflite in place so every scale is a power of two (rounded up, so no
    range is lost); weights and biases are requantized to the new scales. Returns tensors changed."""
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    old = {i: np.asarray(t.quantization.scale, np.float64) for i, t in enumerate(graph.tensors)
           if t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale)}
    new = {i: 2.0 ** np.ceil(np.log2(s)) for i, s in old.items()}
    biases = {}
    for op in graph.operators:
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and op.inputs[1] in new:
            biases[op.inputs[2]] = new[op.inputs[0]] * new[op.inputs[1]]  # bias scale = input x weight scale
    new.update(biases)
    for i, scale in new.items():
        tensor = graph.tensors[i]
        buffer = model.buffers[tensor.buffer]
        if buffer.data is not None and len(buffer.data):
            dtype = np.int8 if tensor.type == 9 else np.int32 if tensor.type == 2 else None
            if dtype is not None:
                axis = tensor.quantization.quantizedDimension
                values = np.frombuffer(bytes(buffer.data), dtype=dtype).reshape(tensor.shape).astype(np.float64)
                shape = [1] * values.ndim
                if old[i].size > 1:
                    shape[axis] = -1
                real = values * old[i].reshape(shape)
                info = np.iinfo(dtype)
                requant = np.clip(np.round(real / scale.reshape(shape)), info.min, info.max).astype(dtype)
                buffer.data = np.frombuffer(requant.tobytes(), np.uint8)
        tensor.quantization.scale = [float(s) for s in np.atleast_1d(scale)]
    flatbuffer_utils.write_model(model, str(path))
    return len(new)


# --- cycle model ------------------------------------------------------------------------------------

def cycles(emu: Emulator, spec: AcceleratorSpec) -> dict:
    """Per-layer cycles on the MAC array (compute- or memory-bound), latency, utilisation, DRAM traffic."""
    bytes_per_cycle = spec.dram_gbps * 1e9 / (spec.clock_mhz * 1e6)
    onchip = spec.onchip_kib * 1024
    layers, total, macs_on, dram = [], 0, 0, 0
    for op, where in emu.placement():
        if where != "accelerator" or op.kind in ("RESHAPE",):
            continue
        out = emu.t(op.outputs[0])
        compute, macs = layer_compute(emu, op, spec)
        weights = int(sum(emu.t(i).data.nbytes for i in op.inputs[1:] if i >= 0 and emu.t(i).data is not None))
        acts = sum(int(np.prod(emu.t(i).shape)) for i in op.inputs[:1] if i >= 0) + int(np.prod(out.shape))
        fits = weights + acts <= onchip
        tiles = 1 if fits else math.ceil(acts / max(onchip - weights, onchip // 2))
        traffic = weights * tiles + (0 if fits else acts)
        memory = math.ceil(traffic / bytes_per_cycle)
        layer_cycles = max(compute, memory)
        layers.append({"op": op.kind, "output": out.name, "macs": macs, "compute_cycles": compute,
                       "memory_cycles": memory, "cycles": layer_cycles,
                       "bound": "compute" if compute >= memory else "memory", "fits_onchip": fits,
                       "dram_bytes": traffic})
        total += layer_cycles
        macs_on += macs
        dram += traffic
    return {"layers": layers, "cycles": total, "latency_ms": total / (spec.clock_mhz * 1e3),
            "mac_utilisation": macs_on / (total * spec.mac_rows * spec.mac_cols) if total else 0.0,
            "dram_bytes": dram, "how": "estimated (MAC-array cycle model, docs/ACCELERATOR.md)"}


def layer_compute(emu: Emulator, op: Op, spec: AcceleratorSpec) -> tuple[int, int]:
    """(cycles, MACs) of one op on the array: R output channels x C reduction lanes per cycle."""
    out = emu.t(op.outputs[0]).shape
    if op.kind in MAC_OPS:
        w = emu.t(op.inputs[1]).shape
        if op.kind == "FULLY_CONNECTED":
            pixels, out_channels, reduction = 1, w[0], w[1]
        elif op.kind == "CONV_2D":
            pixels, out_channels, reduction = out[1] * out[2], w[0], w[1] * w[2] * w[3]
        else:  # depthwise: each output channel reduces over its own kernel window only
            pixels, out_channels, reduction = out[1] * out[2], w[3], w[1] * w[2]
        return (int(pixels * math.ceil(out_channels / spec.mac_rows) * math.ceil(reduction / spec.mac_cols)),
                int(pixels * out_channels * reduction))
    elements = int(np.prod(out))  # elementwise and pooling ops stream through the lanes
    window = 1
    if op.kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        window = op.options.filterHeight * op.options.filterWidth
    return math.ceil(elements * window / spec.mac_cols), 0


def mac_count(emu: Emulator, op: Op, spec: AcceleratorSpec) -> int:
    return layer_compute(emu, op, spec)[1] if op.kind in MAC_OPS else 0


def compare_with_reference(emu: Emulator, path: Path, samples: list[np.ndarray]) -> dict:
    """Op-by-op comparison with LiteRT's reference kernels (BUILTIN_REF), every intermediate tensor.

    The float SOFTMAX fallback is left out: TFLite's int8 softmax is a lookup-table kernel.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                              experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    compared = [op for op in emu.ops if op.kind not in ("SOFTMAX", "DEQUANTIZE")]
    mismatched: dict[str, int] = {}
    for sample in samples:
        x = quantize_input(emu, emu.inputs[0], sample)
        interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
        interpreter.invoke()
        values = emu.run_all([x])
        for op in compared:
            ref = interpreter.get_tensor(op.outputs[0])
            if not np.array_equal(ref, values[op.outputs[0]].reshape(ref.shape)):
                key = f"{op.kind} {emu.t(op.outputs[0]).name}"
                mismatched[key] = mismatched.get(key, 0) + 1
    return {"ops_compared": len(compared), "samples": len(samples), "mismatched_ops": mismatched,
            "bit_exact": not mismatched, "how": "LiteRT reference kernels (OpResolverType.BUILTIN_REF)"}
