"""Normalization statistics kept in float when an int8 model is built (ONNX, TFLite int8, OpenVINO).

A normalization written out in elementwise ops (a LayerNorm as jax2tf, tf2onnx or a hand-written model leaves
it: mean = sum(x)/n, var = max(sum(x*x)/n - mean*mean, 0), y = (x - mean) * (gamma / sqrt(var + eps)) + beta)
has no int8 form that holds. The variance is a difference of two nearly equal terms (cancellation: the corpus's
magika falls to 10.8 dB at that Sub in ONNX and OpenVINO int8), and 1/sqrt(var + eps) spans 1 to 1/sqrt(eps)
across rows (a padded row has variance ~0), so one int8 scale for it loses every ordinary row (SNR -20 dB after
it). The fused LayerNormalization op, which onnxruntime and TFLite keep in float, does not have the problem.

So the ops that compute the per-row statistics are kept in float, together with the ops that apply them to the
activation (x - mean, and the multiply by the inverse std): found from each square root (Sqrt/SQRT/RSQRT)
whose inputs reduce to a Reduce/SUM/MEAN through elementwise ops only, then every op fed by those statistics
through elementwise/shape ops. The activation they are computed on stays float back to the matmul or
convolution that produced it (elementwise ops, activations, max pools): dividing by a row's std multiplies
that input's int8 step by up to 1/sqrt(eps) on a near-constant row (magika's padded positions: ONNX 4.4 dB
with only the statistics float). The matmuls and convolutions themselves stay int8; what is kept is
elementwise work.

    float_ops(nodes, constants) -> list[str]    nodes: (name, kind, inputs, outputs) in topological order;
                                                 constants: names of constant tensors
    onnx_nodes(model), tflite_nodes(path), openvino_nodes(model)   the same, for each format
"""
from __future__ import annotations

from pathlib import Path

ROOTS = {"sqrt", "rsqrt"}
REDUCES = {"reducesum", "reducemean", "reducesumsquare", "sum", "mean"}
ELEMENTWISE = {"mul", "multiply", "add", "sub", "subtract", "div", "divide", "max", "maximum", "reciprocal",
               "pow", "power", "neg", "negative", "square", "squareddifference", *ROOTS}
SHAPING = {"reshape", "expand", "broadcastto", "broadcast", "squeeze", "unsqueeze"}  # only input 0 carries values
FEEDING = ELEMENTWISE | SHAPING | {"tanh", "sigmoid", "logistic", "relu", "erf", "gelu", "transpose",
                                   "globalmaxpool", "reducemax", "maxpool", "maxpool2d"}
MAX_OPS = 40  # a normalization's statistics are a few ops; a walk that grows past this is not one


def float_ops(nodes: list[tuple], constants: set[str]) -> list[str]:
    """Names of the ops to keep in float (module docstring), in graph order."""
    producer = {out: node for node in nodes for out in node[3]}
    stats: set[str] = set()
    for node in nodes:
        if _kind(node) in ROOTS:
            stats |= _statistics(node, producer, constants)
    if not stats:
        return []
    applied: set[str] = set()
    for node in nodes:  # topological: what the statistics feed, up to the op that meets the activation
        if node[0] in stats or _kind(node) not in ELEMENTWISE | SHAPING:
            continue
        sources = [producer.get(i) for i in _values(node) if i not in constants]
        fed = [s for s in sources if s is not None and s[0] in stats]
        if fed:
            (stats if len(fed) == len(sources) else applied).add(node[0])
    for node in [n for n in nodes if n[0] in stats and _kind(n) in REDUCES]:
        applied |= _fed_by(node, producer, constants, stats | applied)
    return [node[0] for node in nodes if node[0] in stats | applied]


def _statistics(root: tuple, producer: dict, constants: set[str]) -> set[str]:
    """The root and the ops it is computed from back to the reductions; empty when the walk meets anything
    else (a matmul, a graph input) or grows past MAX_OPS."""
    found, todo, reduced = {root[0]}, [root], False
    while todo:
        node = todo.pop()
        for name in _values(node):
            source = producer.get(name)
            if name in constants or (source is not None and source[0] in found):
                continue
            kind = _kind(source) if source is not None else None
            if kind in REDUCES:
                found.add(source[0])
                reduced = True
            elif kind in ELEMENTWISE | SHAPING:
                found.add(source[0])
                todo.append(source)
            else:
                return set()
            if len(found) > MAX_OPS:
                return set()
    return found if reduced else set()


def _fed_by(reduce: tuple, producer: dict, constants: set[str], known: set[str]) -> set[str]:
    """The elementwise/activation/shape ops between the last matmul or convolution and a reduction of the
    statistics: the normalization divides its input's error by the row's std, so an int8 step there becomes
    step/sqrt(eps) on a near-constant row (a padded position): that input stays float from the matmul's or
    convolution's exact accumulator on (those stay int8). Empty past MAX_OPS (a long residual chain)."""
    found: set[str] = set()
    todo = [reduce]
    while todo:
        for name in _values(todo.pop()):
            source = producer.get(name)
            if name in constants or source is None or source[0] in found | known or _kind(source) not in FEEDING:
                continue
            found.add(source[0])
            todo.append(source)
            if len(found) > MAX_OPS:
                return set()
    return found


def _kind(node: tuple) -> str:
    return node[1].replace("_", "").lower()


def _values(node: tuple) -> list[str]:
    return list(node[2][:1]) if _kind(node) in SHAPING else [i for i in node[2] if i]


def onnx_nodes(model) -> tuple[list[tuple], set[str]]:
    constants = {i.name for i in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    return [(n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node], constants


def tflite_nodes(path: Path) -> tuple[list[tuple], set[str]]:
    """TFLite ops named by their output tensor (what the converter's denylisted_nodes matches)."""
    from ..tflite_file import load
    tensors, ops, _, _ = load(path)
    nodes = [(tensors[op.outputs[0]].name, op.kind, [str(i) for i in op.inputs if i >= 0],
              [str(i) for i in op.outputs]) for op in ops]
    return nodes, {str(k) for k, t in enumerate(tensors) if t.data is not None}


def openvino_nodes(model) -> tuple[list[tuple], set[str]]:
    nodes, constants = [], set()
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "Constant":
            constants.add(name)
        inputs = [op.input_value(k).get_node().get_friendly_name() for k in range(op.get_input_size())]
        nodes.append((name, op.get_type_name(), inputs, [name]))
    return nodes, constants


def note(kept: list[str]) -> list[str]:
    return [f"normalization statistics kept in float ({len(kept)} ops: mean/variance/1/sqrt and the ops "
            "applying them; int8 cannot hold a variance's cancellation or the inverse std's range): "
            + ", ".join(kept[:3]) + (" ..." if len(kept) > 3 else "")] if kept else []
