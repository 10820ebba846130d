"""TFLite backend, integer-input preprocessing kept exact in int8: ONE_HOT's on/off values in its output's
scale.

Models whose input is integer (byte values, token ids, category ids) often build a one-hot inside the graph
(`cast(equal(x[..., None], range(N)))`, which the TFLite converter fuses into ONE_HOT, or `tf.one_hot`). Its
output holds only the on and off values (1 and 0), and an int8 scale that covers [0, 1] holds both exactly
(scale 1/255, zero point -128). But LiteRT's integer ONE_HOT kernel copies the raw bytes of its on/off
constants into the output, while the converter (TF 2.21) quantizes those constants with their own parameters
(off_value 0.0 -> raw 0 at zero point 0, read back through the output's zero point -128 as 0.502): every
off position becomes ~0.5, and everything after it is wrong (SNR -18.1 dB at the ONE_HOT, top-1 0% on the
corpus's magika). Rewriting the two constants in the output's scale and zero point makes the op exact and
keeps it, and every op after it, in int8 (nothing is kept in float)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ON_OFF = (2, 3)  # ONE_HOT inputs: indices, depth, on_value, off_value


def requantize_one_hot(path: Path) -> list[str]:
    """Rewrite, in place, the on/off constants of every integer ONE_HOT whose parameters differ from its
    output's; returns a report note (none when there was nothing to do)."""
    from ..tflite_file import read_model, schema, type_names, write_model
    model = read_model(path)
    graph, names, types = model.subgraphs[0], _op_names(model), type_names()
    fixed = []
    for op in graph.operators:
        if names[op.opcodeIndex] != "ONE_HOT" or len(op.inputs) < 4:
            continue
        out = graph.tensors[op.outputs[0]]
        if types[out.type] not in ("int8", "int16", "uint8") or not _params(out):
            continue
        for k in ON_OFF:
            tensor = graph.tensors[op.inputs[k]]
            if _params(tensor) != _params(out) and _rewrite(model, tensor, out, types, schema()):
                fixed.append(k)
    if not fixed:
        return []
    write_model(model, path)
    return [f"ONE_HOT on/off values requantized to the output's scale and zero point ({len(fixed)} constant{'s' * (len(fixed) > 1)}): "
            "LiteRT's integer ONE_HOT copies them raw, and the converter had quantized them on their own scale; "
            "the one-hot stays int8 and exact"]


def _op_names(model) -> list[str]:
    from ..tflite_file import op_names
    names = op_names()
    return [names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in model.operatorCodes]


def _params(tensor) -> tuple | None:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        return None
    return float(q.scale[0]), int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0


def _rewrite(model, tensor, out, types: dict, fb) -> bool:
    """The constant's real value, quantized in `out`'s parameters, in a buffer of its own."""
    from ..tflite_file import DTYPES
    buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
    mine = _params(tensor)
    if buffer is None or buffer.data is None or not len(buffer.data) or mine is None:
        return False
    dtype = np.dtype(DTYPES[types[tensor.type]])
    real = (np.frombuffer(bytes(buffer.data), dtype).astype(np.float64) - mine[1]) * mine[0]
    scale, zero = _params(out)
    info = np.iinfo(dtype)
    values = np.clip(np.round(real / scale) + zero, info.min, info.max).astype(dtype)
    fresh = fb.BufferT()
    fresh.data = np.frombuffer(values.tobytes(), np.uint8)
    model.buffers.append(fresh)
    tensor.buffer = len(model.buffers) - 1
    tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [zero]
    return True
