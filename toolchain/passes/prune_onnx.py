"""Pruning hooks for ONNX graphs (see prune.py for the algorithm).

Structured pruning understands Conv (dense and depthwise), Gemm/MatMul with constant weights,
BatchNormalization, per-channel Add/Mul constants, activations, pooling, residual Add, and
Flatten/Reshape into a Gemm (NCHW, or NHWC after a Transpose). Channels that reach any other
op stay as they are, and the report names that op.
"""
from __future__ import annotations

import numpy as np

from ..backends import require
from ..errors import EdgekitError
from .prune_plan import ChannelNode, PruneConfig, flatten_rows, magnitude_masks, plan_channels, skipped, sparsity_row

PASS_OPS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "MaxPool", "AveragePool",
            "Dropout", "Identity", "BatchNormalization", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
            "Transpose", "Add", "Mul", "Sub", "Div"}
ELEMENTWISE = {"Add", "Mul", "Sub", "Div"}
WEIGHTED = {"Conv", "Gemm", "MatMul"}


class Graph:
    """The ONNX model with the lookups the pruning hooks need."""

    def __init__(self, model):
        self.onnx = require("onnx", "full")
        self.model = self.onnx.shape_inference.infer_shapes(model)
        graph = self.model.graph
        self.inits = {t.name: t for t in graph.initializer}
        self.nodes = list(graph.node)
        self.keys = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(self.nodes)]
        self.producer = {o: k for n, k in zip(self.nodes, self.keys) for o in n.output}
        self.shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                       for v in [*graph.input, *graph.output, *graph.value_info]}

    def array(self, name: str) -> np.ndarray:
        return self.onnx.numpy_helper.to_array(self.inits[name])

    def set_array(self, node, index: int, array: np.ndarray) -> None:
        """Give `node` its own copy of an initializer input, so shared weights are not sliced twice."""
        name = f"{node.input[index]}__pruned_{node.name or node.op_type}_{index}"
        self.model.graph.initializer.append(self.onnx.numpy_helper.from_array(array.astype(self.array(
            node.input[index]).dtype), name))
        self.inits[name] = self.model.graph.initializer[-1]
        node.input[index] = name

    def drop_unused(self) -> None:
        used = {i for n in self.model.graph.node for i in n.input}
        kept = [t for t in self.model.graph.initializer if t.name in used]
        self.model.graph.ClearField("initializer")
        self.model.graph.initializer.extend(kept)

    def data_inputs(self, node) -> list[str]:
        return [i for i in node.input if i and i not in self.inits]

    def attr(self, node, name: str, default=None):
        return next((self.onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def weight_axes(graph: Graph, node) -> tuple[int, int] | None:
    """(output-channel axis, input-channel axis) of a layer's constant weight; None if not a dense layer."""
    if len(node.input) < 2 or node.input[1] not in graph.inits:
        return None
    if node.op_type == "Conv":
        return (0, 1) if graph.attr(node, "group", 1) == 1 else None
    if node.op_type == "Gemm":
        return (0, 1) if graph.attr(node, "transB", 0) else (1, 0)
    return (1, 0) if node.op_type == "MatMul" and graph.array(node.input[1]).ndim == 2 else None


def _is_depthwise(graph: Graph, node) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in graph.inits:
        return False
    w = graph.array(node.input[1])
    return graph.attr(node, "group", 1) == w.shape[0] and w.shape[1] == 1


def magnitude(model, config: PruneConfig):
    graph = Graph(model)
    weighted = [(k, n) for k, n in zip(graph.keys, graph.nodes) if n.op_type in WEIGHTED and len(n.input) > 1
                and n.input[1] in graph.inits]
    skip = skipped([(k, n.op_type) for k, n in weighted], config)
    arrays = {k: graph.array(n.input[1]) for k, n in weighted if k not in skip}
    if not arrays:
        raise EdgekitError("no layer left to prune after skipping", "skip fewer layers (--prune-skip)")
    masks = magnitude_masks(arrays, config)
    for key, node in weighted:
        if key in masks:
            graph.set_array(node, 1, arrays[key] * masks[key])
    rows = [sparsity_row(k, graph.array(n.input[1])) for k, n in weighted]
    graph.drop_unused()
    return graph.model, masks, rows


def channel_graph(graph: Graph, config: PruneConfig) -> list[ChannelNode]:
    result = [ChannelNode(i.name, "producer", [], "input", prunable=False) for i in graph.model.graph.input
              if i.name not in graph.inits]
    for key, node in zip(graph.keys, graph.nodes):
        inputs = [graph.producer.get(i, i) for i in graph.data_inputs(node)]
        axes = weight_axes(graph, node)
        if axes is not None:
            w = graph.array(node.input[1])
            importance = np.abs(np.moveaxis(w, axes[0], 0)).reshape(w.shape[axes[0]], -1).sum(axis=1)
            prunable = key not in config.skip and node.op_type not in config.skip
            result.append(ChannelNode(key, "producer", inputs[:1], node.op_type, importance, prunable))
        elif _is_depthwise(graph, node):
            result.append(ChannelNode(key, "pass", inputs[:1], "depthwise Conv"))
        elif node.op_type in ELEMENTWISE and len(inputs) == 2:
            result.append(ChannelNode(key, "merge", inputs, node.op_type))
        elif node.op_type in PASS_OPS and _passes_channels(graph, node):
            result.append(ChannelNode(key, "pass", inputs[:1], node.op_type))
        else:
            result.append(ChannelNode(key, "block", inputs, node.op_type))
    return result


def _passes_channels(graph: Graph, node) -> bool:
    """Ops whose output keeps the input's channels (constant operands must be scalars or per-channel)."""
    if node.op_type == "Transpose":
        return list(graph.attr(node, "perm", [])) == [0, 2, 3, 1]
    if node.op_type == "Reshape":
        return len(graph.shapes.get(node.output[0], [])) == 2
    if node.op_type in ELEMENTWISE:
        consts = [graph.array(i) for i in node.input if i in graph.inits]
        return all(c.size == 1 or c.ndim >= 1 and c.size == max(c.shape) for c in consts)
    return True


def channels(model, config: PruneConfig):
    graph = Graph(model)
    nodes = channel_graph(graph, config)
    outputs = [graph.producer.get(o.name, o.name) for o in graph.model.graph.output]
    plan = plan_channels(nodes, outputs, config.amount)
    if not plan.keep:
        reasons = sorted(set(plan.blocked.values()))
        raise EdgekitError(f"no channel can be removed: every channel group reaches {', '.join(reasons[:3])}"
                           if reasons else "no channel can be removed: no Conv/Gemm with constant weights",
                           "this graph pattern is not supported for structured pruning; use --prune magnitude")
    layout = _layouts(graph)
    for key, node in zip(graph.keys, graph.nodes):
        _apply(graph, key, node, plan, layout)
    graph.drop_unused()
    graph.model.graph.ClearField("value_info")
    return graph.onnx.shape_inference.infer_shapes(graph.model), plan


def _layouts(graph: Graph) -> dict[str, bool]:
    """Per node: is its output channels-last (after an NCHW->NHWC Transpose)?"""
    last: dict[str, bool] = {}
    for key, node in zip(graph.keys, graph.nodes):
        before = any(last.get(graph.producer.get(i, ""), False) for i in graph.data_inputs(node))
        last[key] = node.op_type == "Transpose" or (before and node.op_type not in WEIGHTED)
    return last


def _apply(graph: Graph, key: str, node, plan, layout: dict[str, bool]) -> None:
    out_keep = plan.kept_out(key)
    axes = weight_axes(graph, node)
    inputs = graph.data_inputs(node)
    if axes is not None:
        w = graph.array(node.input[1])
        in_keep = plan.kept_out(graph.producer.get(inputs[0], inputs[0])) if inputs else None
        if in_keep is not None:
            in_keep = _flattened(graph, node, in_keep, w.shape[axes[1]], layout)
            w = np.take(w, in_keep, axis=axes[1])
        if out_keep is not None:
            w = np.take(w, out_keep, axis=axes[0])
            if len(node.input) > 2 and node.input[2] in graph.inits:
                graph.set_array(node, 2, _per_channel(graph.array(node.input[2]), out_keep))
        graph.set_array(node, 1, w)
        return
    if out_keep is None:
        return
    if node.op_type == "Reshape":  # a flatten with a constant target shape: let it follow the new size
        batch = graph.shapes.get(inputs[0], [1])[0] or 1
        graph.set_array(node, 1, np.array([batch, -1], np.int64))
        return
    depthwise = _is_depthwise(graph, node)
    for index, name in enumerate(node.input):  # per-channel parameters (not shapes or axes)
        if name in graph.inits and graph.array(name).size > 1 and np.issubdtype(graph.array(name).dtype, np.floating):
            graph.set_array(node, index, _per_channel(graph.array(name), out_keep))
    if depthwise:
        for a in node.attribute:
            if a.name == "group":
                a.i = len(out_keep)


def _per_channel(array: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Slice the axis that holds the channels (the one longer than 1; the first for weights)."""
    axis = next(i for i, d in enumerate(array.shape) if d > 1)
    return np.take(array, keep, axis=axis)


def _flattened(graph: Graph, node, keep: np.ndarray, rows: int, layout: dict[str, bool]) -> np.ndarray:
    """Input rows of a Gemm/MatMul for the kept channels, when a Flatten/Reshape of a feature map feeds it."""
    source = graph.producer.get(graph.data_inputs(node)[0], "")
    shape = _flatten_input_shape(graph, source)
    if shape is None or len(shape) <= 2:
        return keep
    channels_last = layout.get(source, False)
    spatial, channels = (int(np.prod(shape[1:-1])), shape[-1]) if channels_last else (int(np.prod(shape[2:])), shape[1])
    assert spatial * channels == rows, (spatial, channels, rows)
    return flatten_rows(keep, channels, spatial, channels_last)


def _flatten_input_shape(graph: Graph, key: str) -> list[int] | None:
    """The shape entering the Flatten/Reshape node `key`, if it is one."""
    index = graph.keys.index(key) if key in graph.keys else -1
    if index < 0 or graph.nodes[index].op_type not in ("Flatten", "Reshape"):
        return None
    return graph.shapes.get(graph.data_inputs(graph.nodes[index])[0])
