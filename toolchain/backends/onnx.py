"""ONNX: export (tf2onnx for TF and TFLite inputs), run (onnxruntime)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from ..errors import ConversionError, EdgekitError
from . import require

FORMAT = "onnx"
SUFFIX = ".onnx"
RUNTIME = "onnxruntime"
SOURCES = ("keras", "h5", "savedmodel", "onnx", "tflite")  # input kinds export() can convert from
PRECISIONS = ("fp16", "dynamic", "int8", "int8-io")
CALIB_METHODS = ("minmax", "percentile", "entropy")
EXTRA = "onnx"
detect = None  # input kind detected by sources.detect_kind
OPSET = 17
_UNSUPPORTED = re.compile(r"Could not find an implementation for (?P<a>[\w.:]+)|(?P<b>[\w.:]+)(\(\S*\))? is not a "
                          r"registered function/op|No opset import for domain (?P<c>\S+)")


def files(path: Path) -> list[Path]:
    return [path]


def runtime_version() -> str:
    return require("onnxruntime", EXTRA).__version__


def gpu_name() -> str | None:
    """The GPU this runtime would use, or None (onnxruntime-gpu with the CUDA provider)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return "CUDA GPU (onnxruntime CUDAExecutionProvider)" if "CUDAExecutionProvider" in ort.get_available_providers() else None


class Session:
    def __init__(self, path: Path, threads: int = 1, display_name: str | None = None, device: str = "cpu"):
        ort = require("onnxruntime", EXTRA)
        providers = ["CPUExecutionProvider"]
        if device == "gpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EdgekitError("no GPU: onnxruntime has no CUDA provider here", "pip install onnxruntime-gpu")
            providers = ["CUDAExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise _load_error(display_name or Path(path).name, str(exc)) from None
        self.inputs = [(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape), _ort_dtype(i.type))
                       for i in self.session.get_inputs()]
        self._names = [i.name for i in self.session.get_inputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.input_quant = [_parse_qp(meta.get(f"edgekit.input_quant.{i}")) for i in range(len(self.inputs))]
        self.output_quant = [_parse_qp(meta.get(f"edgekit.output_quant.{i}"))
                             for i in range(len(self.session.get_outputs()))]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self._names, arrays)))

    def bind(self, arrays: list[np.ndarray]) -> None:
        """Pre-bind inputs and outputs, so invoke() times the model, not the copies."""
        self._binding = self.session.io_binding()
        for name, array in zip(self._names, arrays):
            self._binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for out in self.session.get_outputs():
            self._binding.bind_output(out.name)

    def invoke(self) -> None:
        self.session.run_with_iobinding(self._binding)


def _parse_qp(text: str | None):
    if not text:
        return None
    scale, zero_point = text.split(",")
    return float(scale), int(zero_point)


def _ort_dtype(type_str: str) -> str:
    name = type_str.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(name, name)


def _load_error(name: str, text: str) -> EdgekitError:
    match = _UNSUPPORTED.search(text)
    if match:
        op = next(g for g in match.group("a", "b", "c") if g)
        return EdgekitError(f"{name}: unsupported op {op} (onnxruntime has no kernel for it)",
                            "replace it with standard ONNX ops, or register the custom-op library")
    return EdgekitError(f"{name}: onnxruntime cannot load it ({_first_line(text)})", "check the file is a complete ONNX model")


def load_source(path: Path, opts):
    from ..sources import Source, TensorSpec, fix_shape
    onnx = require("onnx", "full")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise _corrupt(path, exc) from None
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    _check_interface(path, model, graph_inputs, opts)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise _corrupt(path, exc) from None
    specs = []
    for value in graph_inputs:
        dims = value.type.tensor_type.shape.dim
        shape = fix_shape(value.name, [d.dim_value if d.HasField("dim_value") else None for d in dims],
                          opts, len(graph_inputs) == 1)
        for d, size in zip(dims, shape):
            d.Clear()
            d.dim_value = size
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        specs.append(TensorSpec(value.name, shape, dtype))
    dynamic = _note_dynamic_quantization(model, opts)
    fixed = path.parent / "fixed.onnx"
    onnx.save(_fix_outputs(onnx, model), str(fixed))
    session = Session(fixed, display_name=path.name)
    source = Source("onnx", path, path.stem, specs, session.run)
    source.onnx_fixed_path = fixed
    if dynamic:
        source.reference_precision = "dynamic"  # measure.judged_as: its own run-time quantization noise
    return source


def _note_dynamic_quantization(model, opts) -> bool:
    """A source that quantizes activations per run is a noisy reference: in another runtime, float rounding
    a few ulp apart flips int8 codes at rounding ties, and the flips compound layer by layer (OpenVINO
    running the very same integer graph of a real CRNN recogniser was 36.8 dB from onnxruntime)."""
    count = sum(n.op_type.startswith("DynamicQuantize") for n in model.graph.node)
    if count:
        opts.notes.append(f"the model quantizes activations at run time ({count} DynamicQuantize* nodes): fidelity "
                          "is against onnxruntime running it, and an artifact that computes the same graph elsewhere "
                          "(or in float) differs by more than float rounding, so every artifact is judged at the "
                          "'dynamic' tolerance at least; judge them by your task metric too")
    return bool(count)


def _corrupt(path: Path, exc: Exception) -> EdgekitError:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return EdgekitError(f"{path.name} is truncated or corrupt ({first})", "re-export the ONNX model")


def _check_interface(path: Path, model, graph_inputs, opts) -> None:
    """Outputs to compare and tensor inputs of known rank; an input of unknown rank takes its rank
    from --input-shape."""
    if not model.graph.output:
        raise EdgekitError(f"{path.name} declares no graph outputs, so there is nothing to convert or compare",
                           "re-export it with its outputs (e.g. output_names in torch.onnx.export)")
    if not graph_inputs:
        raise EdgekitError(f"{path.name} declares no graph inputs", "re-export it with its inputs")
    for value in graph_inputs:
        if not value.type.HasField("tensor_type"):
            raise EdgekitError(f"{path.name}: input '{value.name}' is not a tensor (sequence/map/optional inputs "
                               "are not supported)", "re-export the model with tensor inputs")
        if not value.type.tensor_type.HasField("shape"):
            override = opts.input_shapes.get(value.name) or (opts.input_shapes.get(None) if len(graph_inputs) == 1
                                                              else None)
            if not override:
                raise EdgekitError(f"{path.name}: input '{value.name}' has unknown rank",
                                   f"give its shape with --input-shape {value.name}:1,3,224,224 (your model's dims)")
            for size in override:
                value.type.tensor_type.shape.dim.add().dim_param = "?"
    for value in model.graph.output:
        if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"):
            value.type.tensor_type.shape.SetInParent()  # unknown rank: shape inference fills it in


def _fix_outputs(onnx, model):
    """Clear stale output dims so shape inference can fill the now-fixed shapes."""
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model


def export(source, out_path: Path, ctx) -> list[str]:
    path, note = float_model(source)
    shutil.copyfile(path, out_path)
    return [note]


def float_model(source) -> tuple[Path, str]:
    """A fixed-shape float ONNX file of the source (converted once, cached in the workdir), and how it was made."""
    if source.kind == "onnx":
        return source.onnx_fixed_path, "input model with fixed input shapes"
    path = source.path.parent / "float.onnx"  # per source: a pruned model gets its own
    note = f"tf2onnx from {'TFLite' if source.kind == 'tflite' else 'the TF graph'}, opset {OPSET}"
    if source.kind == "tflite":
        from ._tflite_rewrite import for_converters
        tflite_path, rewrites = for_converters(source)
        note = "; ".join([note, *rewrites])
    if not path.exists():
        onnx = require("onnx", "full")
        tf2onnx = require("tf2onnx", "full")
        try:
            if source.kind == "tflite":
                model, _ = tf2onnx.convert.from_tflite(str(tflite_path), opset=OPSET)
            elif source.kind == "savedmodel":
                model = _from_saved_model(tf2onnx, source)
            else:
                fn, signature, _ = source.handle
                model, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=OPSET)
                _freeze_captures(onnx, model, fn.get_concrete_function(*signature), {s.name for s in signature})
        except Exception as exc:
            where = _tf2onnx_where(exc, tflite_path if source.kind == "tflite" else None)
            raise ConversionError(f"tf2onnx failed{where}: {_first_line(str(exc))}") from None
        onnx.save(canonical_names(_complete(onnx, model)), str(path))
    return path, note


def _tf2onnx_where(exc: BaseException, tflite_path: Path | None = None) -> str:
    """Where in the graph tf2onnx was when it raised, from its frames: the node it was converting, or
    the TFLite op / constant tensor it was reading (its exceptions name neither)."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        if "tf2onnx" not in frame.f_code.co_filename:
            continue
        found = frame.f_locals
        node = found.get("node")
        if hasattr(node, "type") and hasattr(node, "name"):
            return f" at node '{node.name}' (op {node.type.removeprefix('TFL_')})"
        if frame.f_code.co_name == "parse_tflite_graph":
            if "optype" in found and "output_names" in found:
                return f" at TFLite op {found['optype'].removeprefix('TFL_')} (output {found['output_names'][:1]})"
            if "name" in found:
                from ._tflite_rewrite import consumers
                users = consumers(tflite_path, found["name"]) if tflite_path else []
                return f" reading TFLite tensor '{found['name']}'" + (f" (input of {', '.join(users)})" if users else "")
    return ""


def _complete(onnx, model):
    """Rewrite TF ops tf2onnx copies through untranslated where ONNX has an exact composition
    (Erfc(x) = 1 - Erf(x): Keras 3's GELU); refuse any other op ONNX does not define, naming it."""
    graph, helper = model.graph, onnx.helper
    rebuilt = []
    for node in graph.node:
        if node.op_type == "Erfc" and node.domain in ("", "ai.onnx"):
            one = node.name + "/one"
            graph.initializer.append(onnx.numpy_helper.from_array(np.array(1, np.float32), one))
            rebuilt += [helper.make_node("Erf", list(node.input), [node.output[0] + "/erf"], name=node.name + "/Erf"),
                        helper.make_node("Sub", [one, node.output[0] + "/erf"], list(node.output), name=node.name)]
        else:
            rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    unknown = [n for n in graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unknown:
        ops = sorted({n.op_type.removeprefix("TFL_") for n in unknown})
        kind = "TFLite" if unknown[0].op_type.startswith("TFL_") else "TensorFlow"
        raise ConversionError(f"tf2onnx has no ONNX equivalent for {kind} op {', '.join(ops)} "
                              f"(node '{unknown[0].name}', {len(unknown)} node(s) in all)")
    return model


def _freeze_captures(onnx, model, concrete, names: set[str]) -> None:
    """Tensors the function captures (e.g. a Normalization layer's mean) that tf2onnx left as graph
    inputs become initializers holding their values, so the model has exactly the source's inputs."""
    values = {internal.name: external for external, internal in
              zip(concrete.captured_inputs, concrete.graph.internal_captures)}
    graph = model.graph
    for value in list(graph.input):
        captured = values.get(value.name)
        if value.name in names or captured is None or captured.dtype.name == "resource":
            continue
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(captured.numpy()), value.name))
        graph.input.remove(value)


def _from_saved_model(tf2onnx, source):
    """tf2onnx's SavedModel loader on the serving signature: it freezes variables and the tensors the
    function captures (which from_function would leave as extra graph inputs); shapes fixed as loaded."""
    from tf2onnx import tf_loader
    require("absl.logging", "full").set_verbosity("error")
    graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
        str(source.path), None, None, tag=["serve"], signatures=["serving_default"], return_tensors_to_rename=True)
    shapes = {graph_name: list(spec.shape) for graph_name, spec in zip(inputs, source.inputs)}
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=OPSET,
                                              shape_override=shapes, tensors_to_rename=renames)
    return model


def canonical_names(model):
    """Make names independent of the converter's process-wide counters, so equal graphs give equal bytes.

    Node names keep their layer path (`model/conv1/BiasAdd`) without the counter suffix, made
    unique by position; tensors other than graph inputs and outputs are renamed by position.
    """
    graph = model.graph
    graph.doc_string = ""  # tf2onnx records the traced function's numbered name here
    if any(a.type in (5, 10) for n in graph.node for a in n.attribute):  # GRAPH / GRAPHS: leave subgraphs alone
        return model
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    renamed: dict[str, str] = {}

    def new(name: str) -> str:
        if name in keep:
            return name
        return renamed.setdefault(name, f"t{len(renamed)}")

    scoped_inits = {t.name for t in graph.initializer if "/" in t.name}
    for init in graph.initializer:
        init.name = new(init.name)
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        base = _COUNTER.sub("", node.name) or node.op_type
        if "/" not in base:  # a node the converter made (e.g. Conv with BatchNorm folded in): name it by its weights
            scope = next((n.rsplit(":", 1)[0] for n in node.input if n in scoped_inits), None)
            base = f"{scope}/{node.op_type}" if scope else base
        node.name = base if base not in seen else f"{base}#{i}"
        seen.add(node.name)
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)
    return model


_COUNTER = re.compile(r"(__\d+)+$")


def quantize(source, float_artifact: Path, out_path: Path, config, calib, method: str) -> list[str]:
    """onnxruntime.quantization: QDQ static (per-channel, pre-processed), dynamic, or float16."""
    from ..passes.quantize import select
    onnx = require("onnx", "full")
    q = require("onnxruntime.quantization", EXTRA)
    model = onnx.load(str(float_artifact))
    excluded = select([n.name for n in model.graph.node], config.keep_float, "ONNX") if config.keep_float else []
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
                _quantize_once(q, weights, out_path, config, calib, method, model, excluded, attempt)
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
    onnx.save(canonical_names(quantized), str(out_path))
    if excluded:
        notes.append(f"kept in float: {', '.join(excluded)}")
    return notes + [f"QDQ, {config.activations} activations, {'per-channel' if attempt['per_channel'] else 'per-tensor'} "
                    f"int8 weights" if config.precision != "dynamic" else "int8 weights, activations quantized at run time"]


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
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        q.shape_inference.quant_pre_process(str(weights), str(pre), skip_optimization=not attempt["optimize"],
                                            skip_symbolic_shape=True)
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
                              extra_options={"CalibMovingAverage": False})
    finally:
        pre.unlink(missing_ok=True)


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


def _first_line(text: str) -> str:
    """onnxruntime's message without its code and the file path it repeats, so the node name fits."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return _ORT_PREFIX.sub("", lines[0] if lines else "no detail")[:300]


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : |Load model from \S+ failed: ?")


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


LAYOUT_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}  # move data, compute nothing: not counted as ops


def op_summary(path: Path) -> dict:
    """Count compute ops that run in integer. In a QDQ graph a node whose inputs all come from
    DequantizeLinear (or int8 graph inputs) and whose outputs all go to Quantize/DequantizeLinear
    (or int8 graph outputs) is fused into an integer kernel by onnxruntime."""
    onnx = require("onnx", "full")
    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    int_io = {v.name for v in [*graph.input, *graph.output] if v.type.tensor_type.elem_type not in floating}
    constants = {t.name for t in graph.initializer}
    qdq = {"QuantizeLinear", "DequantizeLinear"}
    by_type: dict[str, int] = {}
    float_ops = 0
    for node in graph.node:
        by_type[node.op_type] = by_type.get(node.op_type, 0) + 1
        if node.op_type in qdq or node.op_type in _INTEGER_OPS or node.op_type in LAYOUT_OPS:
            continue
        ins = [i for i in node.input if i and i not in constants]
        ins_integer = bool(ins) and all(i in int_io or (i in producers and producers[i].op_type == "DequantizeLinear")
                                        for i in ins)
        outs_integer = all(o in int_io or (consumers.get(o) and all(c.op_type in qdq for c in consumers[o]))
                           for o in node.output)
        float_ops += not (ins_integer and outs_integer)
    compute = sum(v for k, v in by_type.items() if k not in qdq and k not in LAYOUT_OPS)
    return {"ops": compute, "float_ops": float_ops, "by_type": by_type, "how": "graph inspection (QDQ fusion rules)"}


_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QLinearGlobalAveragePool", "QLinearConcat"}
