"""TFLite backend, int8 for XNNPACK: the int8 ops LiteRT's CPU delegate refuses are kept in float.

LiteRT runs a .tflite on the CPU through XNNPACK, its default delegate, and every op XNNPACK refuses
through LiteRT's built-in kernels. In int8 XNNPACK (ai-edge-litert 2.3) refuses HARD_SWISH, PRELU, ABS,
RELU with requantisation (different input and output scales) and SOFTMAX; their built-in int8 kernels
are elementwise reference-style loops. On real models those few ops took most of the int8 model's time
and made it several times slower than fp32 (ppocr_cls: HARD_SWISH 1.5 of 2.4 ms; mp_face_landmark,
whose PReLU onnx2tf writes as RELU/ABS/SUB/MUL/ADD: RELU + ABS 7.7 of 10.5 ms). In float XNNPACK
takes them, and it takes the QUANTIZE/DEQUANTIZE pairs around them too: the whole graph stays in
the delegate.

Which ops XNNPACK takes is asked of LiteRT itself: each op is cut into a single-op model
(tflite_file.single_op_models) and loaded with the default delegate; it is XNNPACK's when a DELEGATE
node replaced it. An op type is kept in float only when XNNPACK takes its float form (checked on the
rebuilt model) and one of its ops feeds another int8 op (an int8 SOFTMAX right before the output
DEQUANTIZE splits no partition and stays); none is kept for int8-io, which targets integer-only runtimes (TFLite Micro, NPUs)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import ConversionError
from . import require

EXTRA = "tflite"  # = backends/tflite.py EXTRA
_BOUNDARY = ("QUANTIZE", "DEQUANTIZE")


def refused(path: Path, dtype: str | None = None, inner: bool = False) -> dict[str, int]:
    """Op type -> how many ops of that type XNNPACK refuses in `path` (only ops whose first
    non-constant input has `dtype`, when given; QUANTIZE/DEQUANTIZE are not counted). `inner`: only ops
    that feed another op than a DEQUANTIZE (a SOFTMAX at the model's end splits no partition: it stays int8)."""
    from .. import tflite_file as graph
    tensors, ops, _, _ = graph.load(path)
    consumers: dict[int, list[str]] = {}
    for op in ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op.kind)
    tail = lambda op: all(k == "DEQUANTIZE" for o in op.outputs for k in consumers.get(o, []))  # noqa: E731
    wanted = [op for op in ops if op.kind not in _BOUNDARY and (dtype is None or _dtype(op, tensors) == dtype)
              and not (inner and tail(op))]
    cuts = graph.single_op_models(path, [op.index for op in wanted])
    counts: dict[str, int] = {}
    for op in wanted:
        if not _delegated(cuts[op.index]):
            counts[op.kind] = counts.get(op.kind, 0) + 1
    return counts


def _dtype(op, tensors) -> str | None:
    live = [i for i in op.inputs if i >= 0 and tensors[i].data is None]
    return tensors[live[0]].dtype if live else None


def _delegated(model: bytes) -> bool:
    lite = require("ai_edge_litert.interpreter", EXTRA)
    try:
        interpreter = lite.Interpreter(model_content=model, num_threads=1)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError):
        return False
    return any(d["op_name"] == "DELEGATE" for d in interpreter._get_ops_details())


def keep_refused_in_float(out_path: Path, rebuild: Callable[[list[str], Path], list[str]]) -> list[str]:
    """Rebuild the int8 model at `out_path` with the op types XNNPACK refuses in int8 kept in float,
    where XNNPACK takes their float form; `rebuild(op_types, path)` quantizes again with those op
    types denylisted and returns its notes. Returns the report notes."""
    slow = refused(out_path, "int8", inner=True)
    if not slow:
        return []
    staged = out_path.with_name(out_path.stem + ".xnnpack" + out_path.suffix)
    try:
        keep = sorted(slow)
        rebuild(keep, staged)
        still = refused(staged, "float32")
        if still.keys() & set(keep):
            keep = [k for k in keep if k not in still]
            if keep:
                rebuild(keep, staged)
        if not keep:
            return [f"int8 ops XNNPACK refuses, left in LiteRT's built-in int8 kernels: {_counts(slow)} "
                    "(XNNPACK refuses their float form too)"]
        os.replace(staged, out_path)
    except ConversionError as exc:
        return [f"int8 ops XNNPACK refuses, left in LiteRT's built-in int8 kernels: {_counts(slow)} "
                f"(keeping them in float failed: {exc})"]
    finally:
        staged.unlink(missing_ok=True)
    return [f"kept in float for XNNPACK (LiteRT's CPU delegate has no int8 kernel for them; LiteRT's built-in "
            f"int8 ones are slow): {_counts({k: slow[k] for k in keep})}"]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items()))

