"""ONNX backend, quantize hook: onnxruntime.quantization (QDQ static, dynamic, float16), with its
retries from the configured settings to the safest, a load-and-run check of every quantized file,
int8 graph I/O (int8-io), and 16-bit activations per layer (`keep_int16`: onnxruntime's own
TensorQuantOverrides, QInt16/QUInt16 on the layer's input and output tensors; quantize_static then lifts
the model to opset 21, whose QuantizeLinear/DequantizeLinear take 16-bit types)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConversionError
from . import _norm_stats, require
from ._onnx_export import _first_line, canonical_names
from ._onnx_rewrite import float_inputs, guard_float_nodes

EXTRA = "onnx"  # the pip extra that installs onnxruntime (= backends/onnx.py EXTRA)
LAYOUT_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}  # move data, compute nothing: not counted as ops


def quantize(source, float_artifact: Path, out_path: Path, config, calib, method: str) -> list[str]:
    """onnxruntime.quantization: QDQ static (per-channel, pre-processed), dynamic, or float16."""
    from ..layers import select
    onnx = require("onnx", "full")
    q = require("onnxruntime.quantization", EXTRA)
    model = onnx.load(str(float_artifact))
    excluded = select([n.name for n in model.graph.node], config.keep_float, "ONNX") if config.keep_float else []
    stats = _norm_stats.float_ops(*_norm_stats.onnx_nodes(model)) if config.precision in ("int8", "int8-io") else []
    notes = [f"onnxruntime.quantization {config.precision}"]
    if config.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        half = convert_float_to_float16(model, keep_io_types=True, node_block_list=excluded or None)
        onnx.save(canonical_names(half), str(out_path))
        return notes + ["float16 weights and compute, float32 I/O"]
    failures = []
    weights = out_path.with_name(out_path.stem + ".weights.onnx")  # what every attempt quantizes
    onnx.save(quantizable(model), str(weights))
    try:
        for attempt in _attempts(config):
            try:
                float_nodes, reads = _quantize_once(q, weights, out_path, config, calib, method, model,
                                                    excluded + stats, attempt)
                problem = _load_check(out_path, calib)
            except Exception as exc:
                problem = f"onnxruntime quantization failed: {_first_line(str(exc))}"
            if problem is None:
                break
            failures.append(f"{attempt['name']}: {problem}")
        else:
            raise ConversionError("no int8 ONNX model that onnxruntime loads: " + " | ".join(failures))
    finally:
        weights.unlink(missing_ok=True)
    if failures:
        notes.append(f"retried: {'; '.join(failures)}; then {attempt['name']} worked")
    quantized = onnx.load(str(out_path))
    if config.precision == "int8-io":
        integer_io(quantized)
        notes.append("int8 input and output tensors (scales in the model's metadata)")
    notes += float_inputs(quantized, reads) + guard_float_nodes(quantized, float_nodes) + _norm_stats.note(stats)
    onnx.save(canonical_names(quantized), str(out_path))
    if excluded:
        notes.append(f"kept in float: {', '.join(excluded)}")
    if config.keep_int16:
        notes.append(f"16-bit activations (int16 Q/DQ, int8 weights) on the tensors of: {', '.join(config.keep_int16)}")
    own = sorted({n.op_type for n in model.graph.node if n.op_type in _QUANTIZE_OPS | _INTEGER_OPS})
    if not _added_quantization(model, quantized):
        return notes + ["onnxruntime's quantizer found no float op to quantize: this is the source graph"
                        + (f" with its own integer ops ({', '.join(own)})" if own else ", still float")]
    if own:
        notes.append(f"the source's own integer ops are kept as they are: {', '.join(own)}")
    return notes + [f"QDQ, {config.activations} activations, {'per-channel' if attempt['per_channel'] else 'per-tensor'} "
                    f"int8 weights" if config.precision != "dynamic" else "int8 weights, activations quantized at run time"]


def _added_quantization(source, quantized) -> bool:
    """Whether the quantizer added any quantize op (QDQ pairs, or dynamic/integer ops) to the source graph."""
    count = lambda m: sum(n.op_type in _QUANTIZE_OPS for n in m.graph.node)  # noqa: E731
    return count(quantized) > count(source)


_QUANTIZE_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
                 "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"}
_INTEGER_OPS = {"DequantizeLinear", "MatMulIntegerToFloat"}


def _attempts(config) -> list[dict]:
    """Quantization settings from the configured one to the safest: onnxruntime's pre-processing
    (graph optimisation, e.g. Conv+BatchNorm fusion) and per-channel QDQ break some real graphs."""
    first = {"name": "pre-processed" + (", per-channel" if config.per_channel else ""), "optimize": True,
             "per_channel": config.per_channel, "op_types": None}
    return [first,
            {**first, "name": "without pre-process optimisation", "optimize": False},
            {**first, "name": "without pre-process optimisation, per-tensor", "optimize": False, "per_channel": False},
            {"name": "without pre-process optimisation, per-tensor, only Conv/MatMul/Gemm quantized",
             "optimize": False, "per_channel": False, "op_types": ["Conv", "ConvTranspose", "MatMul", "Gemm"]}]


def _quantize_once(q, weights: Path, out_path: Path, config, calib, method: str, model, excluded, attempt):
    """One quantization attempt; returns the names the nodes kept in float have in the quantized graph, and
    the float tensors each of them read before quantization, with their producers."""
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        q.shape_inference.quant_pre_process(str(weights), str(pre), skip_optimization=not attempt["optimize"],
                                            skip_symbolic_shape=True)
        pre_model = require("onnx", "full").load(str(pre), load_external_data=False)
        excluded = same_nodes(pre_model, model, excluded)
        if config.precision == "dynamic":
            q.quantize_dynamic(str(pre), str(out_path), weight_type=q.QuantType.QInt8,
                               per_channel=attempt["per_channel"], nodes_to_exclude=excluded,
                               op_types_to_quantize=attempt["op_types"])
        else:
            q.quantize_static(str(pre), str(out_path), CalibrationReader(model, calib.samples), quant_format=q.QuantFormat.QDQ,
                              per_channel=attempt["per_channel"],
                              activation_type=q.QuantType.QUInt8 if config.activations == "uint8" else q.QuantType.QInt8,
                              weight_type=q.QuantType.QInt8, nodes_to_exclude=excluded,
                              op_types_to_quantize=attempt["op_types"],
                              calibrate_method=_CALIBRATORS[method](q.CalibrationMethod),
                              extra_options={"CalibMovingAverage": False,
                                             **_int16_overrides(q, pre_model, model, config)})
        producers = {o: n.name for n in pre_model.graph.node for o in n.output}
        return excluded, {n.name: [(t, producers.get(t)) for t in n.input] for n in pre_model.graph.node
                          if n.name in excluded}
    finally:
        pre.unlink(missing_ok=True)


def same_nodes(pre_model, model, names: list[str]) -> list[str]:
    """`names` (nodes of `model`) as the nodes of `pre_model`, its pre-processed copy: onnxruntime's optimizer
    fuses nodes under new names (MatMul + Add -> Gemm 'MatMul_0/MatMulAddFusion', Conv + BatchNorm), so a node
    to keep in float is found by its name, a name it is the prefix of, or an output tensor it shares."""
    wanted = set(names)
    outputs = {t for n in model.graph.node if n.name in wanted for t in n.output}
    found = [n.name for n in pre_model.graph.node if n.name in wanted or set(n.output) & outputs
             or n.name.rsplit("/", 1)[0] in wanted]
    return list(dict.fromkeys([*names, *found]))


def _int16_overrides(q, model, source, config) -> dict:
    """extra_options giving every float input and output tensor of the `keep_int16` layers' nodes 16-bit
    activations (the signedness of the other activations); int8-io's graph edges stay int8. A tensor has one
    type for every consumer: a kept layer's input is 16-bit where its producer writes it too."""
    if not config.keep_int16:
        return {}
    from ..layers import select
    graph = model.graph
    chosen = set(same_nodes(model, source, select([n.name for n in source.graph.node], config.keep_int16, "ONNX")))
    skip = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    if config.precision == "int8-io":
        skip |= {v.name for v in [*graph.input, *graph.output]}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    qtype = q.QuantType.QUInt16 if config.activations == "uint8" else q.QuantType.QInt16
    tensors = [t for n in graph.node if n.name in chosen for t in [*n.input, *n.output]
               if t not in skip and types.get(t) == FLOAT]  # typed by shape inference, float
    return {"TensorQuantOverrides": {t: [{"quant_type": qtype}] for t in dict.fromkeys(tensors)}}


FLOAT = 1  # onnx.TensorProto.FLOAT
PER_AXIS_OPSET = 13  # DequantizeLinear's `axis` (per-channel weights) is opset 13


def quantizable(model):
    """A copy onnxruntime's quantizer can work on. Exporters such as paddle2onnx put every weight in a
    Constant node, and the quantizer only quantizes initializers: without this the "int8" model keeps
    float weights and grows by its Q/DQ pairs. Below opset 13 the quantizer writes per-channel
    DequantizeLinear nodes with an `axis` the model's opset does not have (an invalid graph)."""
    from ._onnx_rewrite import constants_as_initializers, unshare_initializers
    copy = type(model)()
    copy.CopyFrom(model)
    constants_as_initializers(copy)
    unshare_initializers(copy)
    default = next((o for o in copy.opset_import if o.domain in ("", "ai.onnx")), None)
    if default is not None and default.version < PER_AXIS_OPSET:
        try:
            copy = require("onnx", "full").version_converter.convert_version(copy, PER_AXIS_OPSET)
        except Exception:  # an op the converter cannot lift: the retries without per-channel still apply
            pass
    return copy


def _load_check(path: Path, calib) -> str | None:
    """None when onnxruntime loads the quantized model and gives finite outputs on a calibration sample."""
    ort = require("onnxruntime", EXTRA)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if calib is not None:
            names = [i.name for i in session.get_inputs()]
            outputs = session.run(None, dict(zip(names, calib.samples[0])))
            if any(np.issubdtype(o.dtype, np.floating) and not np.all(np.isfinite(o)) for o in outputs):
                return "the quantized model gives NaN or infinite outputs"
    except Exception as exc:
        return f"onnxruntime cannot load the quantized model: {_first_line(str(exc))}"
    return None


_CALIBRATORS = {"minmax": lambda m: m.MinMax, "percentile": lambda m: m.Percentile, "entropy": lambda m: m.Entropy}


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over our calibration samples."""

    def __init__(self, model, samples):
        names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        self._feeds = iter([dict(zip(names, s)) for s in samples])

    def get_next(self):
        return next(self._feeds, None)


def integer_io(model) -> None:
    """Turn QDQ graph edges into int8 graph inputs/outputs: drop the input Quantize and output Dequantize.

    Layout ops between the input and its QuantizeLinear (tf2onnx's NHWC->NCHW Transpose) then run
    on int8. The scale and zero point go into metadata (edgekit.input_quant.<i>) for the runner.
    """
    onnx = require("onnx", "full")
    graph = model.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    retyped: set[str] = set()
    for i, value in enumerate(graph.input):
        node, chain = _walk(graph, value.name, "QuantizeLinear", downstream=True)
        _set_meta(model, f"edgekit.input_quant.{i}", inits[node.input[1]], inits[node.input[2]])
        _bypass(graph, node, keep=node.input[0], drop=node.output[0])
        retyped |= {value.name, *chain}
    for i, value in enumerate(graph.output):
        node, chain = _walk(graph, value.name, "DequantizeLinear", downstream=False)
        _set_meta(model, f"edgekit.output_quant.{i}", inits[node.input[1]], inits[node.input[2]])
        _bypass(graph, node, keep=node.output[0], drop=node.input[0])
        retyped |= {value.name, *chain}
    for value in [*graph.input, *graph.output]:
        if value.name in retyped:
            value.type.tensor_type.elem_type = onnx.TensorProto.INT8
    kept = [v for v in graph.value_info if v.name not in retyped]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _walk(graph, tensor: str, wanted: str, downstream: bool):
    """Follow single-use layout ops from a graph input (or back from an output) to the QDQ node."""
    chain = []
    while True:
        if downstream:
            nodes = [n for n in graph.node if tensor in n.input]
        else:
            nodes = [n for n in graph.node if tensor in n.output]
        if len(nodes) != 1 or nodes[0].op_type not in {wanted, *LAYOUT_OPS}:
            side = "input" if downstream else "output"
            raise ConversionError(f"int8-io: graph {side} {tensor} is not quantized through one {wanted}")
        node = nodes[0]
        if node.op_type == wanted:
            return node, chain
        tensor = node.output[0] if downstream else node.input[0]
        chain.append(tensor)


def _bypass(graph, node, keep: str, drop: str) -> None:
    """Remove `node`, pointing every use of tensor `drop` at tensor `keep`."""
    graph.node.remove(node)
    for other in graph.node:
        other.input[:] = [keep if n == drop else n for n in other.input]
        other.output[:] = [keep if n == drop else n for n in other.output]


def _set_meta(model, key: str, scale, zero_point) -> None:
    entry = model.metadata_props.add()
    entry.key, entry.value = key, f"{float(scale):.9g},{int(zero_point)}"
