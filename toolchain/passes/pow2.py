"""Power-of-two scales: rewrite a full-integer .tflite so every quantization scale is a power of two,
for accelerators that requantize by shifts only (`requant = "shift"`).

Scales are rounded up (no range is lost); int8 weights and int32 biases are requantized to the new
scales (bias scale = input scale x weight scale). Reads and writes the flatbuffer with LiteRT's
schema, no TensorFlow.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schema import option

INT_TYPES = {9: np.int8, 2: np.int32}  # TensorType INT8, INT32

NAME, STAGE, ORDER, FORMATS = "pow2", "artifact", 20, ("tflite",)
DESCRIPTION = "power-of-two quantization scales for accelerators that requantize by shifts only"
Flags = None
search_space = None
needs_training = None


@dataclass(frozen=True)
class Pow2Config:
    enabled: bool = option(False, "Round every scale of the quantized TFLite artifact to a power of two. On by "
                                  "itself for fpga profiles whose accelerator requantizes by shifts "
                                  "(accelerator.requant = \"shift\").")
    rounding: str = option("up", "How a scale becomes a power of two: up keeps every value's range.", choices=("up",))


Config = Pow2Config


def configure(profile, flags: None) -> Pow2Config:
    config = profile.pow2
    shift_only = profile.device.kind == "fpga" and profile.accelerator.requant == "shift"
    return dataclasses.replace(config, enabled=True) if shift_only else config


def applies(recipe, source) -> bool:
    return recipe[NAME].enabled and recipe["quantize"].precision != "fp32"


def run(ctx, config: Pow2Config, backend, baseline, path) -> dict:
    rewrite(path, path, config)
    return {"notes": ["scales rounded up to powers of two, weights and biases requantized "
                      "(the accelerator requantizes by shifts only)"]}


def rewrite(source: Path, out_path: Path, config: Pow2Config = Pow2Config()) -> int:
    """Write the rewritten model to `out_path` (may be `source`); returns how many tensors changed."""
    from ..accel.graph import read_model, write_model
    model = read_model(source)
    graph = model.subgraphs[0]
    old = {i: np.asarray(t.quantization.scale, np.float64) for i, t in enumerate(graph.tensors)
           if t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale)}
    new = {i: 2.0 ** np.ceil(np.log2(s)) for i, s in old.items()}
    for op in graph.operators:
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and op.inputs[1] in new and op.inputs[0] in new:
            new[op.inputs[2]] = new[op.inputs[0]] * new[op.inputs[1]]
    for i, scale in new.items():
        tensor = graph.tensors[i]
        _requantize_constant(model.buffers[tensor.buffer], tensor, old.get(i, scale), scale)
        tensor.quantization.scale = [float(s) for s in np.atleast_1d(scale)]
    write_model(model, out_path)
    return len(new)


def _requantize_constant(buffer, tensor, old: np.ndarray, scale: np.ndarray) -> None:
    dtype = INT_TYPES.get(tensor.type)
    if dtype is None or buffer.data is None or not len(buffer.data):
        return
    values = np.frombuffer(bytes(buffer.data), dtype=dtype).reshape(tensor.shape).astype(np.float64)
    shape = [1] * values.ndim
    if old.size > 1:
        shape[tensor.quantization.quantizedDimension] = -1
    real = values * old.reshape(shape)
    info = np.iinfo(dtype)
    requant = np.clip(np.round(real / np.asarray(scale).reshape(shape)), info.min, info.max).astype(dtype)
    buffer.data = np.frombuffer(requant.tobytes(), np.uint8)
