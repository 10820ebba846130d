"""Bit-exactness against LiteRT's reference kernels (OpResolverType.BUILTIN_REF), op by op.

Each op the emulator runs with its own kernels is cut out as a single-op model and run in the
reference kernels on the very inputs the emulator gave it, so a mismatch names the op and one
op's error never hides behind another's. Only a few single-op interpreters' tensors are live at
once, and the whole graph never has to allocate in the reference resolver (some reference
kernels refuse shapes or scales the optimized ones take, and abort the process: int8 SOFTMAX
aborts in Prepare when its input scale is below about 2**-26).

`check()` (parent side) runs the comparison in an isolated child; an op whose reference kernel
kills the child is left out with the reason, and the comparison runs again without it.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import isolate
from ..errors import ConversionError
from .emulator import Emulator, quantize_input
from .graph import single_op_models
from .spec import AcceleratorSpec

HOW = "LiteRT reference kernels (OpResolverType.BUILTIN_REF), op by op on the emulator's own inputs"
NOT_COMPARED = ("SOFTMAX", "DEQUANTIZE")  # float on the accelerator / float output
STEP = "LiteRT reference kernels"
RETRIES = 8


def compared_ops(emu: Emulator, skip) -> list:
    return [op for op, where in emu.placement()
            if not emu.via_litert(op, where) and op.kind not in NOT_COMPARED and op.index not in skip]


def compare(emu: Emulator, samples: list[np.ndarray], skip: dict[int, str] | None = None) -> dict:
    """Emulator vs reference kernels on batch-1 `samples` (each an array, or a list with one per graph input)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    skip = skip or {}
    ops = compared_ops(emu, skip)
    contents = single_op_models(emu.path, [op.index for op in ops])
    emu.litert_ops()
    refs = {}
    for op in ops:
        isolate.where(f"allocate_tensors for {describe(emu, op)}")
        interpreter = Interpreter(model_content=contents.pop(op.index),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        interpreter.allocate_tensors()
        refs[op.index] = (interpreter, interpreter.get_input_details(), interpreter.get_output_details()[0]["index"])
    isolate.where(None)
    mismatched: dict[str, int] = {}

    def check(op, args, result):
        if op.index not in refs:
            return
        interpreter, inputs, output = refs[op.index]
        live = [a for a, i in zip(args, op.inputs) if i >= 0 and emu.t(i).data is None]
        for detail, array in zip(inputs, live):
            interpreter.set_tensor(detail["index"], np.ascontiguousarray(array, detail["dtype"]))
        isolate.where(f"invoke for {describe(emu, op)}")
        interpreter.invoke()
        ref = interpreter.get_tensor(output)
        if not np.array_equal(ref, result.reshape(ref.shape)):
            key = f"{op.kind} {emu.t(op.outputs[0]).name}"
            mismatched[key] = mismatched.get(key, 0) + 1

    for sample in samples:
        arrays = [sample] if isinstance(sample, np.ndarray) else sample
        emu.run([quantize_input(emu, i, a) for i, a in zip(emu.inputs, arrays)], on_op=check)
    isolate.where(None)
    return {"ops_compared": len(ops), "samples": len(samples), "mismatched_ops": mismatched,
            "bit_exact": not mismatched and bool(ops),
            "exact_by_design": emu.spec.requant == "fixed-point" and emu.spec.accumulator_bits >= 32,
            "not_compared": {describe(emu, emu.ops[i]): why for i, why in skip.items()},
            "how": HOW}


def describe(emu: Emulator, op) -> str:
    return f"{op.kind} {emu.t(op.outputs[0]).name} (op {op.index})"


def compare_file(path: Path, spec: AcceleratorSpec, samples_npz: Path, count: int, skip: dict[int, str]) -> dict:
    """Child side of check(): the first `count` samples of a stacked .npz (runner.save_stacked)."""
    with np.load(samples_npz) as data:
        stacked = [data[f"in{k}"][:count] for k in range(len(data.files))]
    return compare(Emulator(path, spec), [list(arrays) for arrays in zip(*stacked)], skip)


def check(path: Path, spec: AcceleratorSpec, samples_npz: Path, count: int = 20, progress=None) -> dict:
    """compare() in an isolated child; ops whose reference kernel crashes the child are left out, named."""
    skip: dict[int, str] = {}
    for _ in range(RETRIES):
        try:
            return isolate.run("edgekit.accel.reference:compare_file", path, spec, samples_npz, count, skip,
                               step=STEP, progress=progress)
        except isolate.StepCrashed as exc:
            found = re.search(r"\(op (\d+)\)$", exc.where or "")
            if not found or int(found.group(1)) in skip:
                return {"error": str(exc), "how": HOW}
            action = (exc.where or "").split(" for ")[0]
            skip[int(found.group(1))] = f"the reference kernel {isolate.VERBS.get(exc.signal_name, 'died')} in " \
                                        f"{action} ({exc.signal_name})"
        except ConversionError as exc:
            return {"error": str(exc), "how": HOW}
    return {"error": f"{STEP} crashed on {len(skip)} ops; gave up", "how": HOW}
