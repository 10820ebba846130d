"""ONNX: export (tf2onnx for TF and TFLite inputs), run (onnxruntime)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConversionError, EdgekitError
from . import require

FORMAT = "onnx"
SUFFIX = ".onnx"
RUNTIME = "onnxruntime"
SOURCES = ("keras", "h5", "savedmodel", "onnx", "tflite")  # input kinds export() can convert from
EXTRA = "onnx"
OPSET = 17
_UNSUPPORTED = re.compile(r"Could not find an implementation for (?P<a>[\w.:]+)|(?P<b>[\w.:]+)(\(\S*\))? is not a "
                          r"registered function/op|No opset import for domain (?P<c>\S+)")


def files(path: Path) -> list[Path]:
    return [path]


def runtime_version() -> str:
    return require("onnxruntime", EXTRA).__version__


class Session:
    def __init__(self, path: Path, threads: int = 1, display_name: str | None = None):
        ort = require("onnxruntime", EXTRA)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise _load_error(display_name or Path(path).name, str(exc)) from None
        self.inputs = [(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape), _ort_dtype(i.type))
                       for i in self.session.get_inputs()]
        self._names = [i.name for i in self.session.get_inputs()]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self._names, arrays)))


def _ort_dtype(type_str: str) -> str:
    name = type_str.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(name, name)


def _load_error(name: str, text: str) -> EdgekitError:
    match = _UNSUPPORTED.search(text)
    if match:
        op = next(g for g in match.group("a", "b", "c") if g)
        return EdgekitError(f"{name}: unsupported op {op} (onnxruntime has no kernel for it)",
                            "replace it with standard ONNX ops, or register the custom-op library")
    first = text.strip().splitlines()[0][:200] if text.strip() else "no detail"
    return EdgekitError(f"{name}: onnxruntime cannot load it ({first})", "check the file is a complete ONNX model")


def load_source(path: Path, opts):
    from ..sources import Source, TensorSpec, fix_shape
    onnx = require("onnx", "full")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"{path.name} is truncated or corrupt ({first})", "re-export the ONNX model") from None
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
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
    fixed = opts.workdir / "source" / "fixed.onnx"
    onnx.save(_fix_outputs(onnx, model), str(fixed))
    session = Session(fixed, display_name=path.name)
    source = Source("onnx", path, path.stem, specs, session.run, workdir=opts.workdir)
    source.onnx_fixed_path = fixed
    return source


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
    onnx = require("onnx", "full")
    if source.kind == "onnx":
        model, notes = onnx.load(str(source.onnx_fixed_path)), ["input model with fixed input shapes"]
    elif source.kind == "tflite":
        tf2onnx = require("tf2onnx", "full")
        try:
            model, _ = tf2onnx.convert.from_tflite(str(source.path), opset=OPSET)
        except Exception as exc:
            raise ConversionError(f"tf2onnx failed on the TFLite model: {str(exc).splitlines()[0][:300]}") from None
        notes = [f"tf2onnx from TFLite, opset {OPSET}"]
    else:
        model, notes = _from_tf(source), [f"tf2onnx from the TF graph, opset {OPSET}"]
    onnx.save(canonical_names(model), str(out_path))
    return notes


def _from_tf(source):
    tf2onnx = require("tf2onnx", "full")
    fn, signature, _ = source.handle
    try:
        model, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=OPSET)
    except Exception as exc:
        raise ConversionError(f"tf2onnx failed: {str(exc).splitlines()[0][:300]}") from None
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

    for init in graph.initializer:
        init.name = new(init.name)
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        base = _COUNTER.sub("", node.name) or node.op_type
        node.name = base if base not in seen else f"{base}#{i}"
        seen.add(node.name)
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)
    return model


_COUNTER = re.compile(r"(__\d+)+$")
