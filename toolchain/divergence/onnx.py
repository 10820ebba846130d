"""ONNX tap: every compute node's output added as a graph output of an in-memory copy, run in onnxruntime.
QuantizeLinear/DequantizeLinear pairs (QDQ) are not nodes of their own: their scales are the inputs' and
outputs' scales of the nodes between them."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .base import Node, feed, scalar

QDQ = ("QuantizeLinear", "DequantizeLinear")


def nodes_of(model) -> list[Node]:
    """Graph inputs, then every node that computes on them (not Q/DQ, not constant folding), in order."""
    from onnx import numpy_helper
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    live = {i.name for i in model.graph.input if i.name not in constants}
    outputs = {o.name for o in model.graph.output}
    nodes = [Node(name, name, "input", name, {name}) for name in sorted(live, key=_input_order(model))]
    for node in model.graph.node:
        if not live & set(node.input):
            continue
        live |= set(node.output)
        if node.op_type in QDQ or not node.output:
            continue
        out = node.output[0]
        seen = _requantized(out, consumers)  # what its consumers read: the output's rounding is the node's
        inputs = [i for i in node.input if i in live]
        unique = {node.name} if "/" in node.name and not _COUNTER.search(node.name) else set()
        nodes.append(Node(seen, node.name or out, node.op_type, seen, unique | ({*node.output, seen} & outputs),
                          [_dq_scale(producer.get(i), constants) for i in inputs],
                          next((_scale(c, constants) for c in consumers.get(out, []) if c.op_type == "QuantizeLinear"),
                               None), family=f"{_COUNTER.sub('', node.name)}|{node.op_type}"))
    return nodes


# edgekit's ONNX files name tensors by position (t12) and repeated node names by position (`a/Conv#12`,
# or a bare op type): those say nothing across two files; a scoped name without a counter does.
_COUNTER = re.compile(r"#\d+$")


def _requantized(tensor: str, consumers: dict) -> str:
    """The DequantizeLinear output of `tensor`'s QuantizeLinear/DequantizeLinear pair (a quantized graph's
    output goes through one too), else `tensor`."""
    for q in (c for c in consumers.get(tensor, []) if c.op_type == "QuantizeLinear"):
        for dq in (c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"):
            return dq.output[0]
    return tensor


def _input_order(model):
    order = [i.name for i in model.graph.input]
    return order.index


def _dq_scale(node, constants: dict) -> float | None:
    return _scale(node, constants) if node is not None and node.op_type == "DequantizeLinear" else None


def _scale(node, constants: dict) -> float | None:
    return scalar(constants[node.input[1]]) if len(node.input) > 1 and node.input[1] in constants else None


class Graph:
    def __init__(self, path: Path):
        import onnx
        import onnxruntime as ort
        model = onnx.load(str(path))
        self.nodes = nodes_of(model)
        present = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=n.key) for n in self.nodes
                                  if n.op_type != "input" and n.key not in present)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        meta = model.metadata_props
        self._input_quant = {p.key: p.value for p in meta}
        self._inputs = self._session.get_inputs()
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
        given = {}
        for k, (detail, array) in enumerate(zip(self._inputs, sample)):
            given[detail.name] = self._input(k, detail, np.asarray(array))
        values = dict(zip(self._outputs, self._session.run(self._outputs, given)))
        for k, detail in enumerate(self._inputs):
            values[detail.name] = np.asarray(sample[k], np.float32)  # the sample's values, as the reference's
        return values

    def _input(self, k: int, detail, array: np.ndarray) -> np.ndarray:
        """The sample in the input's declared type; int8-io models (edgekit.input_quant.<i> metadata) take it
        quantized."""
        qp = self._input_quant.get(f"edgekit.input_quant.{k}")
        quant = tuple(float(v) for v in qp.split(",")) if qp else None
        shape = [d if isinstance(d, int) else 1 for d in detail.shape]
        values = feed(array, _ONNX_TYPES.get(detail.type, np.float32), quant)
        return values.reshape(shape) if int(np.prod(shape)) == values.size else values


_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
               "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
               "tensor(bool)": np.bool_}
