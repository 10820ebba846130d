"""The emulator: runs a full-integer .tflite graph op by op, accelerator ops with the profile's
arithmetic, CPU fallback ops with TFLite's (numpy fixed-point kernels, or LiteRT's own kernel
for ops the numpy kernels don't cover). Tensors are freed after their last reader."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .. import isolate
from .graph import Op, Tensor, load, single_op_models
from .kernels import CPU_VIA_LITERT, KERNELS
from .spec import AcceleratorSpec


class LiteRTOp:
    """One op run alone in LiteRT (default CPU kernels), sample by sample; returns all its outputs."""

    def __init__(self, content: bytes, op: Op):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        isolate.where(f"LiteRT allocate_tensors for {op.kind} (op {op.index})")
        self.interpreter = Interpreter(model_content=content,
                                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.interpreter.allocate_tensors()
        isolate.where(None)
        self.op = op
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()

    def __call__(self, emu, op: Op, args, style: str, bits: int) -> np.ndarray:
        live = [a for a, i in zip(args, op.inputs) if i >= 0 and emu.t(i).data is None]
        results = []
        for n in range(len(live[0])):
            for detail, array in zip(self.inputs, live):
                self.interpreter.set_tensor(detail["index"], np.ascontiguousarray(array[n:n + 1], detail["dtype"]))
            isolate.where(f"LiteRT invoke for {op.kind} (op {op.index})")
            self.interpreter.invoke()
            results.append([self.interpreter.get_tensor(d["index"]) for d in self.outputs])
        isolate.where(None)
        return [np.concatenate([r[k] for r in results]) for k in range(len(self.outputs))]


class Emulator:
    """Executes the int8 graph op by op; `spec` says which ops the accelerator runs and how."""

    def __init__(self, path: Path, spec: AcceleratorSpec):
        self.path = Path(path)
        self.tensors, self.ops, self.inputs, self.outputs = load(path)
        self.spec = spec
        self._litert: dict[int, LiteRTOp] | None = None
        readers: dict[int, int] = {}
        for op in self.ops:
            for i in op.inputs:
                readers[i] = op.index
        self.last_reader = readers  # tensor -> index of the last op reading it

    def placement(self) -> list[tuple[Op, str]]:
        return [(op, "accelerator" if op.kind in self.spec.ops else "cpu") for op in self.ops]

    def via_litert(self, op: Op, where: str) -> bool:
        return op.kind not in KERNELS or (where == "cpu" and op.kind in CPU_VIA_LITERT)

    def litert_ops(self) -> dict[int, LiteRTOp]:
        if self._litert is None:
            wanted = [op for op, where in self.placement() if self.via_litert(op, where)]
            contents = single_op_models(self.path, [op.index for op in wanted])
            self._litert = {op.index: LiteRTOp(contents[op.index], op) for op in wanted}
        return self._litert

    def run(self, arrays: list[np.ndarray], on_op: Callable | None = None) -> list[np.ndarray]:
        """The graph's outputs for a batch; `on_op(op, args, result)` sees every op as it runs."""
        litert = self.litert_ops()
        values: dict[int, np.ndarray] = {}
        for index, array in zip(self.inputs, arrays):
            values[index] = np.asarray(array)
        keep = set(self.outputs)
        for op, where in self.placement():
            args = [self.value(values, i) for i in op.inputs]
            if op.index in litert:  # every output (SPLIT, UNPACK, ... have several)
                results = litert[op.index](self, op, args, "fixed-point", 32)
                values.update(zip(op.outputs, results))
                result = results[0]
            else:
                style = self.spec.requant if where == "accelerator" else "fixed-point"
                bits = self.spec.accumulator_bits if where == "accelerator" else 32
                result = KERNELS[op.kind](self, op, args, style, bits)
                values[op.outputs[0]] = result
            if on_op is not None:
                on_op(op, args, result)
            for i in op.inputs:
                if self.last_reader.get(i) == op.index and i not in keep:
                    values.pop(i, None)
        return [values[i] for i in self.outputs]

    def value(self, values: dict, index: int):
        if index < 0:
            return None
        return values[index] if index in values else self.tensors[index].data

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


def emulate_samples(emu: Emulator, samples: list[list[np.ndarray]], chunk: int = 4) -> list[list[np.ndarray]]:
    """Dequantized outputs for batch-1 samples, run `chunk` at a time (memory: a few chunk-sized tensors)."""
    results = []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        arrays = [quantize_input(emu, i, np.concatenate([s[k] for s in part])) for k, i in enumerate(emu.inputs)]
        outs = [dequantize_output(emu, i, o) for i, o in zip(emu.outputs, emu.run(arrays))]
        results += [[o[n:n + 1] for o in outs] for n in range(len(part))]
    return results
