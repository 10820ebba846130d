"""ONNX rewrites ahead of onnx2tf. Each changes the model proto in place (always a copy, never the
user's file) and returns notes saying what it did; a model they do not apply to comes back unchanged.

- `explicit_recurrent_state`: LSTM/GRU/RNN nodes get their optional bias and initial states as
  explicit zeros. onnxsim drops all-zero initial states, and onnx2tf 1.29's bidirectional LSTM then
  indexes the missing `initial_h` ('NoneType' object is not subscriptable).
- `dequantize_dynamic`: the ops onnxruntime's `quantize_dynamic` writes (DynamicQuantizeLSTM,
  DynamicQuantizeMatMul, MatMulIntegerToFloat, and DynamicQuantizeLinear feeding
  ConvInteger/MatMulInteger) become float ops on dequantized weights. TFLite has no equivalent of
  onnxruntime's per-run activation quantization; its own quantizer re-quantizes the float graph.
- `constants_as_initializers`: top-level Constant nodes become initializers. paddle2onnx puts every
  weight and scalar in a Constant node; onnx2tf then turns `x + Constant(3.0)` into a bare Python
  float ("Output tensors of a Functional model must be the output of a TensorFlow Layer... Found:
  3.0"), and onnxruntime's quantizer only quantizes initializers.
"""
from __future__ import annotations

import numpy as np

_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # weight blocks per direction; the bias has twice as many
_MS = "com.microsoft"


def explicit_recurrent_state(model) -> list[str]:
    import onnx
    from onnx import numpy_helper
    graph = model.graph
    rnns = [n for n in graph.node if n.op_type in _RNN_GATES and n.domain in ("", "ai.onnx")]
    if not rnns:
        return []
    shapes = _shapes(onnx, model)
    filled, taken = [], {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for node in rnns:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        hidden, layout = attrs.get("hidden_size"), attrs.get("layout", 0)
        directions = 2 if attrs.get("direction", b"forward") == b"bidirectional" else 1
        x_shape = shapes.get(node.input[0])
        if not hidden or not x_shape or not isinstance(x_shape[1 - layout], int):
            continue
        batch = x_shape[1 - layout]
        state = [batch, directions, hidden] if layout else [directions, batch, hidden]
        wanted = {3: [directions, 2 * _RNN_GATES[node.op_type] * hidden], 5: state}
        if node.op_type == "LSTM":
            wanted[6] = state
        while len(node.input) < max(wanted) + 1:
            node.input.append("")
        for index, shape in wanted.items():
            if node.input[index]:
                continue
            name = f"{node.name or node.op_type}_zero_input{index}"
            while name in taken:
                name += "_"
            taken.add(name)
            graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), name))
            node.input[index] = name
            filled.append(node.name)
    return [f"{len(set(filled))} recurrent node(s) given explicit zero bias/initial state"] if filled else []


def _shapes(onnx, model) -> dict[str, list]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    g = inferred.graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*g.input, *g.value_info, *g.output]}


def dequantize_dynamic(model) -> list[str]:
    from onnx import helper, numpy_helper
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def add(array, name):
        while name in inits:  # a weight two ops share, dequantized once for each
            name += "_"
        tensor = numpy_helper.from_array(np.asarray(array, np.float32), name)
        graph.initializer.append(tensor)
        inits[name] = tensor
        return name

    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    replaced: dict[str, int] = {}
    new_nodes, unit_scales, changed = [], set(), set()
    for node in graph.node:
        op = node.op_type
        inputs = list(node.input) + [""] * 12
        rewritten = None
        if op == "DynamicQuantizeLSTM" and node.domain == _MS:
            weights = [_dequantize_rnn(const(inputs[k]), const(inputs[s]), const(inputs[z]))
                       for k, s, z in ((1, 8, 9), (2, 10, 11))]
            if all(w is not None for w in weights):
                names = [add(w, f"{inputs[k]}_float") for w, k in zip(weights, (1, 2))]
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                rewritten = [helper.make_node("LSTM", [inputs[0], *names, *inputs[3:8]], node.output,
                                              node.name, **attrs)]
                _trim(rewritten[0])
        elif (op == "DynamicQuantizeMatMul" and node.domain == _MS) or \
                (op == "MatMulIntegerToFloat" and node.domain == _MS):
            if op == "DynamicQuantizeMatMul":
                a, (b, b_scale, b_zero, bias) = inputs[0], inputs[1:5]
            else:
                a = _dynamic_source(producers.get(inputs[0]), inputs[2])
                b, b_scale, b_zero, bias = inputs[1], inputs[3], inputs[5], inputs[6]
            weight = _dequantize(const(b), const(b_scale), const(b_zero) if b_zero else 0, axis=-1)
            if a is not None and weight is not None:
                rewritten = _matmul_bias(helper, a, add(weight, f"{b}_float"), bias, node)
        elif op in ("ConvInteger", "MatMulInteger") and node.domain in ("", "ai.onnx"):
            quantizer = producers.get(inputs[0])
            weight, zero = const(inputs[1]), const(inputs[3]) if inputs[3] else 0
            if _dynamic_source(quantizer, None) and _only_scaled(quantizer, consumers, const):
                axis = 0 if op == "ConvInteger" else -1
                # (x_q - x_zero)(w_q - w_zero) * x_scale == x (w_q - w_zero): the float op gives the integer
                # op's output times the activation scale, so the graph's multiplications by that scale go
                shifted = weight.astype(np.float32) - _along(np.asarray(zero, np.float32), weight.ndim, axis)
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                rewritten = [helper.make_node(op.replace("Integer", ""),
                                              [quantizer.input[0], add(shifted, f"{inputs[1]}_float")],
                                              node.output, node.name, **attrs)]
                unit_scales.add(quantizer.output[1])
                changed.update(node.output)
        if rewritten:
            replaced[op] = replaced.get(op, 0) + 1
            new_nodes.extend(rewritten)
        else:
            new_nodes.append(node)
    if not replaced:
        return []
    if unit_scales:
        one = add(np.array(1.0), "edgekit_unit_scale")
        for node in new_nodes:
            node.input[:] = [one if i in unit_scales else i for i in node.input]
    graph.ClearField("node")
    graph.node.extend(_live(new_nodes, {o.name for o in graph.output}))
    _float_bias(graph.node, changed)
    graph.ClearField("value_info")  # integer tensors became float: shape inference fills it in again
    _drop_unused_initializers(graph)
    return ["dynamic-quantization ops replaced by float ops on dequantized weights (" +
            ", ".join(f"{v} {k}" for k, v in sorted(replaced.items())) +
            "): TFLite has no per-run activation quantization, so this graph computes in float"]


def _dynamic_source(quantizer, scale_name):
    """The float tensor a DynamicQuantizeLinear quantized, or None."""
    if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear":
        return None
    if scale_name is not None and scale_name != quantizer.output[1]:
        return None
    return quantizer.input[0]


def _dequantize(q, scale, zero, axis):
    if q is None or scale is None or zero is None:
        return None
    scale, zero = np.asarray(scale, np.float32), np.asarray(zero, np.float32)
    return (q.astype(np.float32) - _along(zero, q.ndim, axis)) * _along(scale, q.ndim, axis)


def _along(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Per-tensor (scalar) or per-channel values broadcast along `axis` of an ndim-array."""
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _dequantize_rnn(q, scale, zero):
    """DynamicQuantizeLSTM weights [D, in, 4H] with per-direction [D] or per-column [D, 4H] scale and
    zero point, as ONNX LSTM's float [D, 4H, in]."""
    if q is None or scale is None or zero is None:
        return None
    shape = (q.shape[0], 1, 1) if np.ndim(scale) == 1 else (q.shape[0], 1, q.shape[2])
    scale = np.asarray(scale, np.float32).reshape(shape)
    zero = np.asarray(zero, np.float32).reshape(shape)
    return np.transpose((q.astype(np.float32) - zero) * scale, (0, 2, 1))


def _matmul_bias(helper, a, weight, bias, node):
    if not bias:
        return [helper.make_node("MatMul", [a, weight], node.output, node.name)]
    product = f"{node.output[0]}_matmul"
    return [helper.make_node("MatMul", [a, weight], [product], f"{node.name}_matmul"),
            helper.make_node("Add", [product, bias], node.output, node.name)]


def _trim(node) -> None:
    while node.input and not node.input[-1]:
        node.input.pop()


def _only_scaled(quantizer, consumers, const) -> bool:
    """Every reader of this DynamicQuantizeLinear is an integer op with constant weights or (its scale)
    a Mul: then all of them are rewritten and the scale can become 1."""
    def rewritable(node):
        weight_zero = node.input[3] if len(node.input) > 3 else ""
        return node.op_type in ("ConvInteger", "MatMulInteger") and const(node.input[1]) is not None and \
            (not weight_zero or const(weight_zero) is not None)
    quantized, scale, zero = quantizer.output
    return all(rewritable(c) for name in (quantized, zero) for c in consumers.get(name, [])) and \
        all(c.op_type == "Mul" for c in consumers.get(scale, []))


def _float_bias(nodes, changed: set[str]) -> None:
    """An integer bias the graph adds to a rewritten op's output (older onnxruntime: Floor(bias / scale)
    cast to int32) is added in float and unrounded."""
    producers = {o: n for n in nodes for o in n.output}
    for add in [n for n in nodes if n.op_type == "Add" and changed & set(n.input)]:
        for name in add.input:
            node = producers.get(name)
            while node is not None and node.op_type in ("Reshape", "Unsqueeze", "Identity", "Squeeze"):
                node = producers.get(node.input[0])
            if node is None or node.op_type != "Cast":
                continue
            for attr in node.attribute:
                if attr.name == "to" and attr.i == 6:  # INT32
                    attr.i = 1  # FLOAT
                    rounding = producers.get(node.input[0])
                    if rounding is not None and rounding.op_type in ("Floor", "Round"):
                        rounding.op_type = "Identity"


def _live(nodes, graph_outputs):
    """Nodes whose outputs something reads: a DynamicQuantizeLinear nothing reads any more goes."""
    while True:
        read = {i for n in nodes for i in n.input} | graph_outputs
        keep = [n for n in nodes if any(o in read for o in n.output)]
        if len(keep) == len(nodes):
            return nodes
        nodes = keep


def _drop_unused_initializers(graph) -> None:
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in read]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)


def constants_as_initializers(model) -> list[str]:
    graph = model.graph
    constants = [n for n in graph.node if n.op_type == "Constant" and len(n.attribute) == 1
                 and n.attribute[0].name == "value"]
    for node in constants:
        tensor = graph.initializer.add()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        graph.node.remove(node)
    return [f"{len(constants)} Constant nodes made initializers"] if constants else []


def unshare_initializers(model) -> list[str]:
    """Every node gets its own copy of an initializer that several nodes read. tf2onnx shares equal
    constants (one zero bias for many Convs) and names tensors t0, t1, ...; onnxruntime's quantizer
    copies a shared bias `t2` as `t2<N>` checking only initializer names, so the copy can take an
    activation's name: "shared mode is not supported for weight" or "Duplicate definition of name"."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    seen: dict[str, int] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name not in initializers:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                copy = graph.initializer.add()
                copy.CopyFrom(initializers[name])
                copy.name = node.input[k] = f"{name}__{seen[name]}"
    shared = sum(1 for count in seen.values() if count > 1)
    return [f"{shared} shared initializers copied per node"] if shared else []


def drop_identity_slices(model) -> list[str]:
    """Slices that keep every element (start 0, end past the dim, step 1 on every axis they name) are
    bypassed. tf2onnx writes one for every `x[..., :1]`-style strided slice of a jax2tf/TF export, and
    onnx2tf maps their axes to NHWC wrongly (a Conv output sliced on its channels instead of W)."""
    import onnx
    from onnx import numpy_helper
    graph = model.graph
    shapes = _shapes(onnx, model)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    dropped = {}
    for node in graph.node:
        if node.op_type != "Slice" or node.output[0] in outputs or not _keeps_all(node, shapes, constants):
            continue
        dropped[node.output[0]] = node.input[0]
    if not dropped:
        return []

    def source(name: str) -> str:
        while name in dropped:
            name = dropped[name]
        return name
    kept = [n for n in graph.node if not (n.op_type == "Slice" and n.output[0] in dropped)]
    for node in kept:
        node.input[:] = [source(i) for i in node.input]
    graph.ClearField("node")
    graph.node.extend(kept)
    return [f"{len(dropped)} Slice node(s) that keep every element bypassed"]


def _keeps_all(node, shapes: dict, constants: dict) -> bool:
    shape = shapes.get(node.input[0])
    args = [constants.get(name) if name else None for name in list(node.input[1:5]) + [""] * (4 - len(node.input[1:5]))]
    starts, ends, axes, steps = args
    if shape is None or starts is None or ends is None or not all(isinstance(d, int) for d in shape):
        return False
    axes = axes if axes is not None else np.arange(len(starts))
    steps = steps if steps is not None else np.ones(len(starts), np.int64)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = shape[int(axis)]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step != 1 or start != 0 or end < dim:
            return False
    return True


_WEIGHT_QUANTIZED_AT_LOAD = {"Conv", "ConvTranspose", "Gemm"}


def guard_float_nodes(model, names: list[str]) -> list[str]:
    """Nodes kept in float stay float in onnxruntime: its WeightBiasQuantization optimizer (session level 1)
    rewrites a Conv/ConvTranspose/Gemm with float initializer weights whose input comes from a per-tensor
    DequantizeLinear to int8 per-tensor weights (a kept-float layer with one large weight then gives zeros).
    A single-input Max (identity, not removed by the optimizer) between that DequantizeLinear and the node
    keeps the pattern from matching."""
    from onnx import helper
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    initializers = {t.name for t in graph.initializer}
    guarded = []
    for node in list(graph.node):
        if node.name not in names or node.op_type not in _WEIGHT_QUANTIZED_AT_LOAD or len(node.input) < 2:
            continue
        feeder = producers.get(node.input[0])
        if feeder is None or feeder.op_type != "DequantizeLinear" or node.input[1] not in initializers:
            continue
        kept = f"{node.input[0]}_float_{len(guarded)}"
        position = list(graph.node).index(node)
        graph.node.insert(position, helper.make_node("Max", [node.input[0]], [kept], name=f"{node.name}_float_guard"))
        node.input[0] = kept
        guarded.append(node.name)
    return [f"a single-input Max before {', '.join(guarded)} keeps onnxruntime from quantizing their float "
            f"weights when the session loads (WeightBiasQuantization)"] if guarded else []


def float_inputs(model, reads: dict[str, list[tuple]]) -> list[str]:
    """Nodes kept in float read their activations as computed, not through the QuantizeLinear/DequantizeLinear
    pair the quantizer puts on a tensor whose producer (or another consumer) is quantized: keeping a layer out
    of int8 then removes its input's rounding too (ppocr_rec: a float Conv at 13 dB behind its int8 input).
    `reads`: node name -> (tensor, its producer) it read before quantization; an input is rewired only to that
    tensor from that producer (the quantizer folds a Relu/Clip into the QuantizeLinear after it, the Conv
    before it taking the Relu's output name: that tensor is not the one the node read). Pairs left with no
    consumer are removed."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    initializers = {t.name for t in graph.initializer}
    rewired = []
    for node in graph.node:
        for k, tensor in enumerate(node.input if node.name in reads else []):
            dq = producers.get(tensor)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            original, producer = reads[node.name][k] if k < len(reads[node.name]) else (None, None)
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] == original not in initializers \
                    and getattr(producers.get(original), "name", None) == producer:
                node.input[k] = original
                rewired.append(node.name)
    for _ in range(2):  # a DequantizeLinear, then its QuantizeLinear
        used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        for n in dead:
            graph.node.remove(n)
    rewired = list(dict.fromkeys(rewired))
    return [f"{len(rewired)} node(s) kept in float read their inputs unquantized (no Q/DQ before them)"] if rewired else []
