"""ONNX -> TFLite through onnx2tf: a ladder of recipes, each on its own copy, in its own process.

Every recipe starts from the fixed-shape copy of the input model (never the user's file) and
  1. renames nodes and tensors TF rejects in scope names (`Softmax@0`, `onnx::Conv_12`),
     keeping a map back to the original names for messages;
  2. optionally folds shape subgraphs with onnxsim, the input shapes overwritten with the fixed
     ones (fixing only the graph inputs leaves `Shape -> Gather -> Concat -> Reshape` symbolic);
  3. runs onnx2tf with the recipe's flags, the inputs kept in the ONNX layout (`-kat`), and its
     sample-image download replaced by local data.
The first recipe whose TFLite file loads and matches the ONNX model's outputs wins. When all
fail, the reason names the ONNX node, its op type and the most specific error line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .. import children
from . import _onnx_rewrite, _tflite_rewrite
from ..errors import ConversionError

# TF scope names: [A-Za-z0-9.][A-Za-z0-9_.\-/>]*  (tensorflow/python/framework/ops.py)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/>]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STANDARD_DOMAINS = ("", "ai.onnx")
ATTEMPT_TIMEOUT_S = 1200
_DIFFERS = "TFLite output "  # + "<k> differs ...": it runs, with other values


@dataclass(frozen=True)
class Recipe:
    name: str
    simplify: bool  # fold shape subgraphs with onnxsim at the fixed input shapes first
    flags: tuple[str, ...]  # onnx2tf command-line flags


# Ultralytics drives onnx2tf on an already simplified model with onnx2tf's own onnxsim off; the
# retries add the switches onnx2tf's README offers for its common failures.
RECIPES = (
    Recipe("sanitised names + onnxsim at fixed shapes", True, ("-nuo",)),
    Recipe("sanitised names, onnx2tf's own simplification", False, ()),
    Recipe("sanitised names + onnxsim, no grouped conv, unrolled BatchMatMul/RNN (-dgc -ebu -eru)", True,
           ("-nuo", "-dgc", "-ebu", "-eru")),
    Recipe("sanitised names + onnxsim, pseudo ops, strict mode off (-rtpo -dsm)", True,
           ("-nuo", "-dsm", "-rtpo", "Erf", "GeLU", "HardSwish", "LeakyReLU", "PReLU", "Power", "GatherND", "Neg",
            "Abs", "MatMulInteger")),
)


def convert(fixed_onnx: Path, inputs: list, work: Path, out_path: Path) -> tuple[list[str], Path]:
    """Run the ladder; returns the report notes and the SavedModel directory of the winning recipe."""
    onnx = _require_onnx()
    model = onnx.load(str(fixed_onnx))
    rewritten = _onnx_rewrite.dequantize_dynamic(model)
    constants = _onnx_rewrite.constants_as_initializers(model)
    if rewritten or constants:
        work.mkdir(parents=True, exist_ok=True)
        fixed_onnx = work / "rewritten.onnx"
        onnx.save(model, str(fixed_onnx))
    foreign = [n for n in model.graph.node if n.domain not in _STANDARD_DOMAINS]
    if foreign:
        node = foreign[0]
        raise ConversionError(f"onnx2tf has no TensorFlow equivalent for node '{node.name}' (op {node.op_type}, "
                              f"domain {node.domain}): a non-standard ONNX op; "
                              f"{len(foreign)} node(s) of that kind, first of them this one")
    failures, runs_but_differs = [], None
    for i, recipe in enumerate(RECIPES):
        attempt = work / f"attempt{i}"
        shutil.rmtree(attempt, ignore_errors=True)
        attempt.mkdir(parents=True)
        error = _attempt(fixed_onnx, inputs, attempt, recipe)
        if error is None:
            return rewritten + _success(i, attempt, out_path, failures), attempt / "out"
        failures.append(error)
        if error.startswith(_DIFFERS) and runs_but_differs is None:
            runs_but_differs = i
    if runs_but_differs is not None:  # deliver it: the fidelity check then reports how far off it is
        attempt = work / f"attempt{runs_but_differs}"
        return rewritten + _success(runs_but_differs, attempt, out_path, failures), attempt / "out"
    distinct = list(dict.fromkeys(failures))
    raise ConversionError("onnx2tf failed with every recipe: " + " | ".join(
        f"recipe {failures.index(f) + 1}: {f}" for f in distinct))


def for_quantizer(saved_model: Path) -> tuple[Path, list[str]]:
    """The SavedModel TF's post-training quantizer should read, and a note when it is not the float artifact's.

    onnx2tf converts LSTM/GRU/RNN to a loop (a TFLite WHILE), and TF's int8 calibration crashes the whole
    process on it (tensorflow#41305; seen with TF 2.21). The float artifact keeps the loop: unrolled
    (`-eru`), XNNPACK packs the shared weights once per step (ddddocr's CRNN: 515 vs 152 MiB peak, 1.6x
    slower). The quantizer gets the same recipe with the recurrent layers unrolled over the fixed sequence.
    """
    attempt = saved_model.parent
    spec = json.loads((attempt / "recipe.json").read_text())
    onnx = _require_onnx()
    rnn = [n for n in onnx.load(str(attempt / "model.onnx"), load_external_data=False).graph.node
           if n.op_type in ("LSTM", "GRU", "RNN")]
    if not rnn or "-eru" in spec["flags"]:
        return saved_model, []
    unrolled = attempt.parent / f"{attempt.name}_unrolled"
    if not (unrolled / "out" / "saved_model.pb").is_file():
        shutil.rmtree(unrolled, ignore_errors=True)
        unrolled.mkdir(parents=True)
        inputs = [SimpleNamespace(name=name, shape=shape) for name, shape in spec["inputs"]]
        recipe = Recipe("unrolled", spec["simplify"], (*spec["flags"], "-eru"))
        error = _attempt(Path(spec["model"]), inputs, unrolled, recipe)
        if error is not None:
            raise ConversionError(f"TF's quantizer crashes on the rolled loop of {rnn[0].op_type} node "
                                  f"'{rnn[0].name}', and unrolling it (onnx2tf -eru) failed: {error}")
    return unrolled / "out", [f"{len(rnn)} recurrent layer(s) unrolled over the fixed sequence for the quantizer "
                              "(onnx2tf -eru): TF's int8 calibration crashes on the rolled loop"]


def _success(i: int, attempt: Path, out_path: Path, failures: list[str]) -> list[str]:
    shutil.copyfile(attempt / "out" / "model_float32.tflite", out_path)
    names = json.loads((attempt / "names.json").read_text())
    notes = [f"onnx2tf recipe {i + 1}/{len(RECIPES)}: {RECIPES[i].name}; input layout kept as in the ONNX model"]
    if (attempt / "layout.json").is_file():
        notes.append("outputs transposed back to the ONNX model's channels-first layout (TRANSPOSE appended)")
    renamed = {k: v for k, v in names["inputs"].items() if k != v}
    if renamed:
        notes.append("input names sanitised for TF: " + ", ".join(f"{k} -> {v}" for k, v in renamed.items()))
    return notes + [f"recipe {j + 1} failed: {f}" for j, f in enumerate(failures) if j != i]


def _attempt(fixed_onnx: Path, inputs: list, attempt: Path, recipe: Recipe) -> str | None:
    """One recipe in a subprocess (onnxsim and onnx2tf can crash the process); None when it worked."""
    np.save(attempt / "calibration_image_sample_data_20x128x128x3_float32.npy",
            np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    spec = {"model": str(fixed_onnx), "inputs": [[s.name, list(s.shape)] for s in inputs],
            "simplify": recipe.simplify, "flags": list(recipe.flags)}
    (attempt / "recipe.json").write_text(json.dumps(spec))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3",
           # onnx2tf must never reach the network: its one download is patched out in _main, and this
           # makes any other attempt fail fast instead of waiting.
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    try:
        proc = children.run([sys.executable, "-m", __name__, str(attempt)], ATTEMPT_TIMEOUT_S, env=env, cwd=attempt)
    except subprocess.TimeoutExpired:
        return f"onnx2tf timed out after {ATTEMPT_TIMEOUT_S} s"
    log = _ANSI.sub("", proc.stdout + proc.stderr)
    (attempt / "log.txt").write_text(log)
    if proc.returncode == 0 and (attempt / "out" / "model_float32.tflite").is_file():
        return _check(attempt)
    if proc.returncode < 0:
        return f"onnx2tf crashed (signal {-proc.returncode}) {_where(log, attempt)}".strip()
    return explain(log, attempt)


def explain(log: str, attempt: Path) -> str:
    """'node X (op Y): <most specific error line>' from onnx2tf's output."""
    where = _where(log, attempt)
    return f"{where}: {meaningful_error(log)}" if where else meaningful_error(log)


def _where(log: str, attempt: Path) -> str:
    match = re.findall(r"onnx_op_name:\s*(\S+)", log)
    if not match:
        return ""
    names_file = attempt / "names.json"
    names = json.loads(names_file.read_text()) if names_file.is_file() else {"nodes": {}}
    sanitised = match[-1]
    original, op_type = names["nodes"].get(sanitised, [sanitised, "?"])
    return f"at ONNX node '{original}' (op {op_type})"


_WRAPPERS = ("Exception encountered when calling", "Call arguments received", "Traceback", "During handling",
             "The above exception", "Read this and deal with it", "Alternatively, if the input OP",
             "If the input OP of ONNX", "Also, for models that include", "The trace log is below",
             "input_onnx_file_path:", "onnx_op_name:")
_ERROR_LINE = re.compile(r"^(?:ERROR:\s*)?(?:[\w.]+(?:Error|Exception|Exit)|Check failed)\b:?\s*(.*)$")


def meaningful_error(log: str) -> str:
    """The most specific error line: the last exception message that is not a wrapper around another.

    Keras wraps the real error as `ValueError: Exception encountered when calling layer ...` with
    the cause on a following line, and onnx2tf adds advice lines after it; both are skipped.
    """
    lines = [ln.strip() for ln in log.splitlines()]
    candidates = []
    for i, line in enumerate(lines):
        match = _ERROR_LINE.match(line)
        if not match:
            continue
        text = match.group(1) or line
        if any(w in line for w in _WRAPPERS):
            text = next((ln for ln in lines[i + 1:i + 6] if ln and not any(w in ln for w in _WRAPPERS)), "")
        if text:
            candidates.append(text)
    if not candidates:
        candidates = [ln for ln in lines if ln and "error" in ln.lower() and not any(w in ln for w in _WRAPPERS)]
    return (candidates[-1] if candidates else "no error message")[:300]


def _check(attempt: Path) -> str | None:
    """The TFLite file loads and gives the ONNX model's outputs (order, shapes, values) on one sample."""
    code = ("import json,sys; from edgekit.backends import _onnx2tf as m; "
            "print(json.dumps(m._compare(sys.argv[1])))")
    proc = children.run([sys.executable, "-c", code, str(attempt)], ATTEMPT_TIMEOUT_S)
    if proc.returncode != 0:
        return f"the TFLite file does not run: {meaningful_error(proc.stderr)}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compare(attempt: str) -> str | None:
    """Runs in a child: LiteRT vs onnxruntime on one random sample; reorders TFLite outputs to ONNX order."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter
    attempt = Path(attempt)
    tflite = attempt / "out" / "model_float32.tflite"
    session = ort.InferenceSession(str(attempt / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = [_sample(rng, i.shape, i.type) for i in session.get_inputs()]
    expected = session.run(None, {i.name: a for i, a in zip(session.get_inputs(), feeds)})
    interpreter = Interpreter(model_path=str(tflite))
    by_name = {d["name"]: j for j, d in enumerate(interpreter.get_input_details())}
    wanted = [by_name.get(i.name) for i in session.get_inputs()]
    if None not in wanted and wanted != sorted(wanted):  # the runner feeds inputs by position
        _reorder(tflite, "inputs", wanted)
        interpreter = Interpreter(model_path=str(tflite))
    outs = interpreter.get_output_details()
    if len(outs) != len(expected):
        return f"TFLite model has {len(outs)} outputs, the ONNX model {len(expected)}"
    order, channels_last = _output_order([tuple(d["shape"]) for d in outs], [e.shape for e in expected])
    if order is None:
        return (f"the TFLite output shapes {[tuple(int(x) for x in d['shape']) for d in outs]} do not match "
                f"the ONNX outputs {[e.shape for e in expected]}")
    if order != list(range(len(order))):
        _reorder(tflite, "outputs", order)
    if channels_last:
        _tflite_rewrite.transpose_outputs(tflite, channels_last)
        (attempt / "layout.json").write_text(json.dumps({"transposed_outputs": channels_last}))
    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    for detail, array in zip(interpreter.get_input_details(), feeds):
        interpreter.set_tensor(detail["index"], array.astype(detail["dtype"]))
    interpreter.invoke()
    for k, (detail, want) in enumerate(zip(interpreter.get_output_details(), expected)):
        got = interpreter.get_tensor(detail["index"]).astype(np.float64).ravel()
        want = want.astype(np.float64).ravel()
        error = np.max(np.abs(got - want)) if got.size else 0.0
        scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-6)
        if not np.isfinite(error) or error > 1e-2 * scale + 1e-4:
            return f"{_DIFFERS} {k} differs from the ONNX model (max abs error {error:.3g}, output scale {scale:.3g})"
    return None


def _sample(rng, shape, type_str: str) -> np.ndarray:
    if "float" in type_str:
        return rng.random(shape, dtype=np.float32)
    dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}.get(type_str, np.int64)
    return rng.integers(0, 2, shape).astype(dtype)


def _output_order(got: list[tuple], want: list[tuple]) -> tuple[list[int] | None, list[int]]:
    """For each ONNX output, the TFLite output with its shape (first unused match) or else with its
    shape in channels-last layout; and the ONNX output positions that need transposing back."""
    free = list(range(len(got)))
    got = [tuple(int(x) for x in g) for g in got]
    order, channels_last = [], []
    for k, shape in enumerate(want):
        match = next((j for j in free if got[j] == tuple(shape)), None)
        if match is None:
            match = next((j for j in free if _tflite_rewrite.channels_first(got[j]) == tuple(shape)), None)
            channels_last += [k] if match is not None else []
        if match is None:
            return None, []
        free.remove(match)
        order.append(match)
    return order, channels_last


def _reorder(path: Path, which: str, order: list[int]) -> None:
    """Put the main subgraph's inputs or outputs in `order` (the ONNX model's), in place."""
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    tensors = getattr(graph, which)
    setattr(graph, which, [tensors[j] for j in order])
    flatbuffer_utils.write_model(model, str(path))


# ---- the child process: prepare the copy, run onnx2tf --------------------------------------------

def _main(attempt: Path) -> None:
    import onnx
    spec = json.loads((attempt / "recipe.json").read_text())
    model = onnx.load(spec["model"])
    initializers = {t.name for t in model.graph.initializer}
    before = [i.name for i in model.graph.input if i.name not in initializers]
    names = sanitise_model(model)
    names["inputs"] = {old: names["tensors"][old] for old in before}
    shapes = {names["tensors"][old]: shape for old, (_, shape) in zip(before, spec["inputs"])}  # by position
    if spec["simplify"]:
        import onnxsim
        model, ok = onnxsim.simplify(model, overwrite_input_shapes=shapes)
        if not ok:
            raise SystemExit("onnxsim could not validate the simplified model")
    _onnx_rewrite.explicit_recurrent_state(model)  # after onnxsim, which drops all-zero initial states
    _onnx_rewrite.drop_identity_slices(model)  # with the shapes onnxsim fixed
    onnx.save(model, str(attempt / "model.onnx"))
    (attempt / "names.json").write_text(json.dumps({"nodes": names["nodes"], "inputs": names["inputs"]}))
    import onnx2tf.onnx2tf as tool
    sample = np.load(attempt / "calibration_image_sample_data_20x128x128x3_float32.npy")
    tool.download_test_image_data = lambda: sample  # never from the network
    for op in CHANNELS_LAST_OPS:
        _channels_last_input(op)
    keep = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    sys.argv = ["onnx2tf", "-i", str(attempt / "model.onnx"), "-o", str(attempt / "out"), "-n",
                "-kat", *keep, *spec["flags"]]
    try:
        with _float32_only():
            tool.main()
    except _Float32Written:
        pass
    produced = attempt / "out" / "model_float32.tflite"
    if not produced.is_file():
        raise SystemExit("onnx2tf wrote no model_float32.tflite")


class _Float32Written(Exception):
    """onnx2tf has written the SavedModel and model_float32.tflite: all edgekit reads."""


@contextmanager
def _float32_only():
    """onnx2tf converts its Keras model to TFLite a second time, with float16 weights, once the float32 file
    is written; nothing reads that file (ddddocr's CRNN, the unrolled copy for the quantizer: 120 and 122 s
    with it, 70 and 85 s without, interleaved at load 8-9). Its converters raise _Float32Written instead."""
    import tensorflow as tf
    cls = tf.lite.TFLiteConverter
    names = ("from_keras_model", "from_concrete_functions")
    own = {name: vars(cls)[name] for name in names if name in vars(cls)}  # the classmethods, to put back

    def guarded(factory):
        def make(*args, **kwargs):
            converter = factory(*args, **kwargs)
            convert = converter.convert

            def float32_only():
                if tf.float16 in converter.target_spec.supported_types:
                    raise _Float32Written()
                return convert()
            converter.convert = float32_only
            return converter
        return staticmethod(make)
    for name in names:
        setattr(cls, name, guarded(getattr(cls, name)))
    try:
        yield
    finally:
        for name in names:
            if name in own:
                setattr(cls, name, own[name])
            else:
                delattr(cls, name)


CHANNELS_LAST_OPS = ("DepthToSpace", "SpaceToDepth", "PRelu")  # onnx2tf modules that take their input channels-last


def _channels_last_input(op_type: str) -> None:
    """onnx2tf's DepthToSpace/SpaceToDepth hand their TF input to tf.nn.depth_to_space as it is, taking it to be
    channels-last, and its PRelu a slope transposed for channels-last. onnx2tf 1.29's Add can leave its output in
    the ONNX layout (a "rescue guard" transposes both inputs until the result has the ONNX shape), and then
    - DepthToSpace splits the wrong axis (mp_pose_detection: Add -> Clip -> DepthToSpace, "Dimension size must
      be evenly divisible by 4 but is 14");
    - PRelu's Keras layer refuses the slope and onnx2tf writes relu(x) + (x - |x|) * slope / 2 instead, with
      TRANSPOSEs around it (mp_palm_detection: 349 ops for the original's 119, each piece quantized on its own).
    Patched here, in the child: an input whose TF shape is the ONNX (channels-first) shape and not its
    channels-last permutation is transposed to channels-last for that op only."""
    import importlib

    import tensorflow as tf
    module = importlib.import_module(f"onnx2tf.ops.{op_type}")
    make_node = module.make_node

    def guarded(*, graph_node, tf_layers_dict, **kwargs):
        name, shape = graph_node.inputs[0].name, graph_node.inputs[0].shape
        entry = tf_layers_dict.get(name) or {}
        tensor = entry.get("tf_node")
        got = list(getattr(tensor, "shape", None) or [])
        if shape is None or len(shape) != 4 or got != list(shape) or got == [shape[0], *shape[2:], shape[1]]:
            return make_node(graph_node=graph_node, tf_layers_dict=tf_layers_dict, **kwargs)
        tf_layers_dict[name] = {**entry, "tf_node": tf.transpose(tensor, [0, 2, 3, 1])}
        try:  # for this op only: other consumers of the tensor read it as onnx2tf left it
            return make_node(graph_node=graph_node, tf_layers_dict=tf_layers_dict, **kwargs)
        finally:
            tf_layers_dict[name] = entry

    module.make_node = guarded


def sanitise_model(model) -> dict:
    """Rename nodes and tensors to names TF accepts.

    Returns {'nodes': {new name: [original name, op type]}, 'tensors': {original: new}}.
    """
    graph = model.graph
    used: set[str] = set()

    def clean(name: str) -> str:
        base = _UNSAFE.sub("_", name) or "t"
        if not re.match(r"[A-Za-z0-9.]", base):
            base = "n" + base
        new, k = base, 1
        while new in used:
            new, k = f"{base}_{k}", k + 1
        used.add(new)
        return new

    tensors: dict[str, str] = {"": ""}
    # Subgraph bodies (If/Loop) refer to outer tensors by name: there only nodes are renamed.
    has_subgraphs = any(a.type in (5, 10) for n in graph.node for a in n.attribute)
    for name in [v.name for v in [*graph.input, *graph.initializer, *graph.output]] + \
            [t for n in graph.node for t in [*n.input, *n.output]]:
        if name not in tensors:
            tensors[name] = name if has_subgraphs else clean(name)
    nodes = {}
    for i, node in enumerate(graph.node):
        old = node.name or f"{node.op_type}_{i}"
        node.name = clean(old)
        nodes[node.name] = [old, node.op_type]
        node.input[:] = [tensors[n] for n in node.input]
        node.output[:] = [tensors[n] for n in node.output]
    for value in [*graph.input, *graph.initializer, *graph.output, *graph.value_info]:
        value.name = tensors.get(value.name, value.name)
    return {"nodes": nodes, "tensors": tensors}


def _require_onnx():
    from . import require
    return require("onnx", "full")


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
