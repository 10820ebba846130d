"""OpenVINO tap: every compute op's output added as a model output (`Model.add_outputs`) on an in-memory
copy, compiled for the CPU in the inference precision the runner uses (f32, or a native bf16/fp16 IR's
own). NNCF's FakeQuantize ops are not nodes of their own: their step is the scale of the ops on either side."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .base import Node, feed

SKIP = ("Parameter", "Constant", "Result", "FakeQuantize", "Convert")


def nodes_of(model) -> tuple[list[Node], list]:
    """Parameters, then every op fed by them (not FakeQuantize/Convert), in topological order; and the
    ports behind the nodes."""
    nodes, ports, live = [], [], set()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Parameter":
            live.add(op.get_friendly_name())
            nodes.append(Node(op.get_friendly_name(), op.get_friendly_name(), "input", op.get_friendly_name(),
                              {op.get_friendly_name(), *op.output(0).get_names()}))
            ports.append(op.output(0))
            continue
        parents = [_parent(op, k) for k in range(op.get_input_size())]
        if not live & {p.get_friendly_name() for p in parents}:
            continue
        live.add(op.get_friendly_name())
        if kind in SKIP or op.get_output_size() == 0:
            continue
        out, name = op.output(0), op.get_friendly_name()
        names = {n for n in out.get_names() if not _POSITIONAL.fullmatch(n)}
        auto = _AUTO_NAME.fullmatch(name)
        nodes.append(Node(name, name, kind, sorted(out.get_names())[0] if out.get_names() else "",
                          names | (set() if auto else {name}),
                          [_fq_step(p) for p in parents if p.get_friendly_name() in live],
                          next((_fq_step(t.get_node()) for t in out.get_target_inputs()
                                if t.get_node().get_type_name() == "FakeQuantize"), None),
                          family=kind if auto else None))
        ports.append(out)
    return nodes, ports


# Names edgekit gives by position (backends.openvino.canonical_names: `Add_215`; tensors from edgekit's ONNX:
# `t12`): the same name in two models is not the same op; the k-th Add is (family + order).
_AUTO_NAME = re.compile(r"[A-Z][A-Za-z0-9]*_\d+")
_POSITIONAL = re.compile(r"t\d+")


def _parent(op, k: int):
    return op.input_value(k).get_node()


def _fq_step(node) -> float | None:
    """(output_high - output_low) / (levels - 1) of a per-tensor FakeQuantize; None otherwise."""
    if node.get_type_name() != "FakeQuantize":
        return None
    low, high = (_constant(_parent(node, k)) for k in (3, 4))
    if low is None or high is None or low.size != 1 or high.size != 1:
        return None
    return float((high.ravel()[0] - low.ravel()[0]) / (node.get_levels() - 1))


def _constant(node) -> np.ndarray | None:
    return np.asarray(node.get_data()) if node.get_type_name() == "Constant" else None


class Graph:
    def __init__(self, path: Path):
        import openvino as ov
        core = ov.Core()
        model = core.read_model(str(path))
        self.nodes, ports = nodes_of(model)
        outputs = model.add_outputs([p for n, p in zip(self.nodes, ports) if n.op_type != "input"])
        from ..backends.openvino import precision_hint
        config = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": precision_hint(model)}  # as the runner
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        results = [o.get_node().get_friendly_name() for o in model.outputs]  # an output already there is reused
        keys = [n.key for n in self.nodes if n.op_type != "input"]
        self._where = {key: results.index(o.get_node().get_friendly_name()) for key, o in zip(keys, outputs)}
        self._inputs = [n.key for n in self.nodes if n.op_type == "input"]

    def run(self, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [np.ascontiguousarray(feed(a, port.get_element_type().to_dtype()))
                  for a, port in zip(sample, self._compiled.inputs)]
        results = self._request.infer(arrays)
        values = {key: np.array(results[self._compiled.outputs[k]]) for key, k in self._where.items()}
        values.update(zip(self._inputs, arrays))
        return values
