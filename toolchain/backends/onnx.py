"""ONNX: export (tf2onnx for TF and TFLite inputs; _onnx_export.py), quantize (onnxruntime.quantization;
_onnx_quantize.py), run (onnxruntime), read an .onnx input."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from ..errors import EdgekitError
from . import require
from ._onnx_export import _first_line, float_model
from ._onnx_quantize import LAYOUT_OPS, CalibrationReader, quantize  # noqa: F401  (the quantize hook; the reader for passes/sensitivity)

FORMAT = "onnx"
SUFFIX = ".onnx"
RUNTIME = "onnxruntime"
SOURCES = ("keras", "h5", "savedmodel", "onnx", "tflite")  # input kinds export() can convert from
PRECISIONS = ("fp16", "dynamic", "int8", "int8-io")
CALIB_METHODS = ("minmax", "percentile", "entropy")
EXTRA = "onnx"
detect = None  # input kind detected by sources.detect_kind
_UNSUPPORTED = re.compile(r"Could not find an implementation for (?P<a>[\w.:]+)|(?P<b>[\w.:]+)(\(\S*\))? is not a "
                          r"registered function/op|No opset import for domain (?P<c>\S+)")


def files(path: Path) -> list[Path]:
    if not Path(path).is_file():
        return [path]
    try:
        return [path, *external_files(path)]
    except EdgekitError:  # sizes only: a broken artifact is reported where it is loaded
        return [path]


def external_files(path: Path) -> list[Path]:
    """The external-data files an .onnx references (models over 2 GB keep their weights that way),
    each checked to lie inside the model's own folder: `../` and absolute locations are refused."""
    onnx = require("onnx", "full")
    from onnx import external_data_helper as ext
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise _corrupt(path, exc) from None
    folder, found = Path(path).parent.resolve(), []
    for tensor in ext._get_all_tensors(model):  # noqa: SLF001 (onnx's own walk: initializers, attributes, subgraphs)
        if not ext.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or folder not in target.parents:
            raise EdgekitError(f"{Path(path).name}: tensor {tensor.name!r} keeps its data at {location!r}, outside "
                               "the model's folder", "keep external data files beside the .onnx (relative names)")
        if not target.is_file():
            raise EdgekitError(f"{Path(path).name}: external data file {location!r} of tensor {tensor.name!r} is "
                               "missing", "copy it beside the .onnx")
        if target not in found:
            found.append(target)
    return found


def copy_with_data(path: Path, out_path: Path) -> None:
    """An .onnx and its external-data files, at the same relative names beside `out_path`."""
    folder = Path(path).parent.resolve()
    shutil.copyfile(path, out_path)
    for data in external_files(path):
        target = Path(out_path).parent / data.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data, target)


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
    _save(onnx, _fix_outputs(onnx, model), fixed)
    session = Session(fixed, display_name=path.name)
    source = Source("onnx", path, path.stem, specs, session.run)
    source.onnx_fixed_path = fixed
    if dynamic:
        source.reference_precision = "dynamic"  # measure.judged_as: its own run-time quantization noise
    return source


def _save(onnx, model, path: Path) -> None:
    """Inline when it fits in one protobuf (under 2 GB), else with its weights in `<name>.data` beside it."""
    if model.ByteSize() < 2 ** 31 - 2 ** 20:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data")


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
    copy_with_data(path, out_path)
    return [note]


def op_summary(path: Path) -> dict:
    """Count compute ops that run in integer (`integer_nodes`)."""
    onnx = require("onnx", "full")
    graph = onnx.load(str(path)).graph
    qdq = {"QuantizeLinear", "DequantizeLinear"}
    by_type: dict[str, int] = {}
    for node in graph.node:
        by_type[node.op_type] = by_type.get(node.op_type, 0) + 1
    floating = {name for name, integer in integer_nodes(graph) if not integer}
    in_float: dict[str, int] = {}
    if qdq & by_type.keys():  # what onnxruntime itself left in float after fusing the QDQ patterns it knows
        for name, op_type in runs_in_float(path):
            floating.add(name)
            in_float[op_type] = in_float.get(op_type, 0) + 1
    compute = sum(v for k, v in by_type.items() if k not in qdq and k not in LAYOUT_OPS)
    return {"ops": compute, "float_ops": len(floating), "by_type": by_type, "how": "graph inspection (QDQ fusion rules)",
            "outside_int8": in_float, "outside_int8_why": "onnxruntime has no int8 kernel for them: each runs in "
                                                          "float between a DequantizeLinear and a QuantizeLinear"}


def runs_in_float(path: Path) -> list[tuple[str, str]]:
    """(name, op type) of the compute nodes of a QDQ model that onnxruntime runs in float: in the graph it
    runs after its own optimizations (QDQ fusion at ORT_ENABLE_EXTENDED; node names kept), those still fed
    by a DequantizeLinear (e.g. PRelu, Div, HardSigmoid: no QDQ fusion, so no integer kernel)."""
    ort, onnx = require("onnxruntime", EXTRA), require("onnx", "full")
    from ..output import tempdir
    with tempdir("ortopt-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp / "optimized.onnx")
        options.log_severity_level = 4
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # the artifact's own load check reports it
            return []
        graph = onnx.load(options.optimized_model_filepath).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    return [(n.name, n.op_type) for n in graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and n.op_type not in LAYOUT_OPS
            and any(producers.get(i) == "DequantizeLinear" for i in n.input if i)]


def integer_nodes(graph) -> list[tuple[str, bool]]:
    """(node name, whether it runs in integer) of every compute node. In a QDQ graph a node whose inputs all come from
    DequantizeLinear (or int8 graph inputs) and whose outputs all go to Quantize/DequantizeLinear (or int8
    graph outputs) is fused into an integer kernel by onnxruntime; Q/DQ and layout ops are not listed."""
    onnx = require("onnx", "full")
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    int_io = {v.name for v in [*graph.input, *graph.output] if v.type.tensor_type.elem_type not in floating}
    constants = {t.name for t in graph.initializer}
    qdq = {"QuantizeLinear", "DequantizeLinear"}
    flags = []
    for node in graph.node:
        if node.op_type in qdq or node.op_type in LAYOUT_OPS:
            continue
        if node.op_type in _INTEGER_OPS:
            flags.append((node.name, True))
            continue
        ins = [i for i in node.input if i and i not in constants]
        ins_integer = bool(ins) and all(i in int_io or (i in producers and producers[i].op_type == "DequantizeLinear")
                                        for i in ins)
        outs_integer = all(o in int_io or (consumers.get(o) and all(c.op_type in qdq for c in consumers[o]))
                           for o in node.output)
        flags.append((node.name, bool(ins_integer and outs_integer)))
    return flags


_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QLinearGlobalAveragePool", "QLinearConcat"}
