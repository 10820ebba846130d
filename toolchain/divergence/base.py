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
        """One batch-1 sample (float arrays, one per input) -> {node key: float output} for every node."""


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
