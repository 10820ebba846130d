"""ONNX backend, export side: the fixed-shape float ONNX of a source (tf2onnx from the TF graph, a
SavedModel's serving signature or a .tflite), TF ops tf2onnx leaves untranslated, and names made
independent of the converters' counters (same input, same bytes)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from . import require

OPSET = 17


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


def _first_line(text: str) -> str:
    """onnxruntime's message without its code and the file path it repeats, so the node name fits."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return _ORT_PREFIX.sub("", lines[0] if lines else "no detail")[:300]


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : |Load model from \S+ failed: ?")
