"""What every format's tap provides: the graph's compute nodes in topological order, and a run that
returns each node's output as float values (dequantized where the tensor is integer)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Node:
    """One compute op of a graph and the tensor it writes (the first output for ops with several)."""
    key: str                      # what run() returns it under
    op: str                       # op/node name (TFLite ops have none: their output tensor's name)
    op_type: str                  # FULLY_CONNECTED, Gemm, MatMul, ...
    tensor: str                   # output tensor name
    names: set[str] = field(default_factory=set)  # names that mean the same node in the other graph
    input_scales: list[float | None] = field(default_factory=list)  # of the non-constant inputs; None: float
    output_scale: float | None = None
    same_as: str | None = None    # key of a node with the same values in another type (QUANTIZE's input)
    scope: str | None = None      # a name that says the source layer when `op` does not (its weights')
    family: str | None = None     # a positional name without its counter (`Add_215` -> Add): matched by order


class Tapped(Protocol):
    nodes: list[Node]

    def run(self, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
        """One batch-1 sample (arrays, one per input, fed as `feed` casts them) -> {node key: float output}."""


def feed(array, dtype, quant=None) -> np.ndarray:
    """One input array as the artifact declares that input (`dtype`: float32, int32, int64, bool, uint8, ...),
    from the samples convert runs on: a float sample for an integer input with `quant` (scale, zero point:
    an int8-io model) is quantized as the runner does; any other sample is cast (integer ids, byte values
    and masks stay exact: a float sample of whole numbers is rounded first)."""
    array, dtype = np.asarray(array), np.dtype(dtype)
    floating = np.issubdtype(array.dtype, np.floating)
    if quant is not None and floating and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(array / quant[0]) + quant[1], info.min, info.max).astype(dtype)
    if floating and (np.issubdtype(dtype, np.integer) or dtype == bool):
        array = np.round(array)
    return array.astype(dtype, copy=False)


def dequantize(values: np.ndarray, scale, zero_point, axis: int = 0) -> np.ndarray:
    """Float values of an integer tensor; per-channel parameters along `axis`."""
    scale, zero_point = np.asarray(scale, np.float64).ravel(), np.asarray(zero_point, np.float64).ravel()
    if scale.size == 0 or not np.issubdtype(values.dtype, np.integer):
        return values
    if scale.size > 1:
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (values.astype(np.float64) - zero_point) * scale


def scalar(scale) -> float | None:
    """A per-tensor scale as a float; None when absent (float tensor) or per-channel."""
    values = np.asarray(scale, np.float64).ravel()
    return float(values[0]) if values.size == 1 and values[0] != 0 else None
