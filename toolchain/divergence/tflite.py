"""TFLite tap: every op's output tensor, read back from LiteRT with `experimental_preserve_all_tensors`
(and no default delegate: XNNPACK keeps a partition's intermediate tensors to itself)."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..tflite_file import load
from .base import Node, dequantize, feed, scalar


def nodes_of(path: Path) -> tuple[list[Node], dict[str, int], list]:
    """Nodes of a .tflite's main subgraph in execution order (graph inputs first), keyed by tensor index,
    the tensor index behind each key, and the tensors (name, shape, dtype, scale, zero point)."""
    tensors, ops, inputs, _ = load(path)
    produced = set(inputs)
    for op in ops:  # tensors computed from the inputs, in execution order
        if produced & set(op.inputs):
            produced |= set(op.outputs)
    nodes = [Node(str(i), tensors[i].name, "input", tensors[i].name, {tensors[i].name},
                  output_scale=_scale(tensors[i])) for i in inputs]
    for op in ops:
        live = [i for i in op.inputs if i in produced]
        if not live:  # works on constants only (DEQUANTIZE of fp16 weights)
            continue
        out = tensors[op.outputs[0]]
        nodes.append(Node(str(op.outputs[0]), out.name, op.kind, out.name, {out.name, out.name.split(";")[0]},
                          [_scale(tensors[i]) for i in live], _scale(out),
                          same_as=str(live[0]) if op.kind in REQUANTIZING and live else None,
                          scope=next((tensors[i].name for i in op.inputs if i >= 0 and i not in produced
                                      and "/" in tensors[i].name), None)))
    return nodes, {n.key: int(n.key) for n in nodes}, tensors


REQUANTIZING = ("QUANTIZE", "DEQUANTIZE")  # the same values as their input, in another type


def _scale(tensor) -> float | None:
    return scalar(tensor.scale) if tensor.dtype != "float32" else None


def float_value(tensor, values: np.ndarray) -> np.ndarray:
    axis = 0 if tensor.scale.size == 1 else _channel_axis(tensor)
    return dequantize(values, tensor.scale, tensor.zero_point, axis) if tensor.dtype != "float32" else values


def _channel_axis(tensor) -> int:
    return next((k for k, d in enumerate(tensor.shape) if d == tensor.scale.size), 0)


def quantized_input(tensor, array: np.ndarray) -> np.ndarray:
    """A sample array in the input tensor's dtype (int8-io models take float samples quantized; integer
    inputs such as token ids or bytes take them as they are)."""
    quant = (float(tensor.scale[0]), int(tensor.zero_point[0])) if scalar(tensor.scale) is not None else None
    return feed(array, np.float32 if tensor.dtype == "float32" else tensor.dtype, quant)


class Graph:
    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from ..backends._tflite_rewrite import rewrite
        with tempfile.TemporaryDirectory(prefix="edgekit-tap-") as tmp:
            # MediaPipe's custom ops run only inside XNNPACK, which hides every tensor: their builtin form here
            path, _ = rewrite(Path(path), Path(tmp) / "builtin.tflite")
            self.nodes, self._where, self._tensors = nodes_of(path)
            content = Path(path).read_bytes()
        with warnings.catch_warnings():  # "intended for debugging purposes only": that is what it is for here
            warnings.simplefilter("ignore")
            self._interpreter = Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                                            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self._interpreter.allocate_tensors()

    def run(self, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
        for detail, array in zip(self._interpreter.get_input_details(), sample):
            tensor = self._tensors[detail["index"]]
            self._interpreter.set_tensor(detail["index"], quantized_input(tensor, array).reshape(detail["shape"]))
        self._interpreter.invoke()
        values = {}
        for key, index in self._where.items():
            try:
                values[key] = float_value(self._tensors[index], self._interpreter.get_tensor(index))
            except ValueError:  # LiteRT left it null (an unrolled RNN's unread SPLIT output)
                continue
        return values
