"""The float graph the TFLite quantizer reads for ONNX and .tflite sources, and how the int8 model it writes
differs from the fp32 artifact (used by backends/tflite.py's quantize hook).

An ONNX source's fp32 artifact is onnx2tf's own .tflite; a .tflite source's is the user's file as it is. The TF
converter quantizes neither: it reads onnx2tf's SavedModel (a .tflite goes to ONNX with tf2onnx first; recurrent
layers unrolled, `_onnx2tf.for_quantizer`). So the int8 model
- has its 4-D outputs channels-last where the fp32 artifact has them transposed back (`channels_first_outputs`);
- lists its outputs in the SavedModel's order (`match_outputs`: by the SavedModel's output names, which follow
  the ONNX model's order, else by values);
- names its tensors as that SavedModel does (`model/tf.math.add_15/Add;...;Const_841`), and mlir_quantize's
  denylist takes only those exact names: layers kept in float are looked up in the calibrated model the quantizer
  re-quantizes, and a layer named as in the fp32 artifact (what a .tflite source's author, or `edgekit explain`,
  calls it) through the tensors holding the same values in both float graphs (`translate`).
Also what both modules feed LiteRT a sample with (`set_inputs`, `quant_params`).
"""
from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from . import require

ORDER_SAMPLES = 4  # calibration samples the outputs are matched on when the names do not say
SAME_DB = 40.0     # two float tensors of the same shape this close hold the same values (translate)


def quant_params(detail: dict):
    """(scale, zero_point) of an integer I/O tensor, None for a float one."""
    scale, zero_point = detail["quantization"]
    return (float(scale), int(zero_point)) if scale and np.issubdtype(detail["dtype"], np.integer) else None


def set_inputs(interpreter, sample: list[np.ndarray] | None) -> None:
    """A sample's arrays where their sizes fit the model's inputs in order, else uniform [0, 1) values."""
    rng = np.random.default_rng(0)
    for i, d in enumerate(interpreter.get_input_details()):
        given = sample[i] if sample is not None and i < len(sample) else None
        x = given.reshape(d["shape"]) if given is not None and given.size == np.prod(d["shape"]) \
            else rng.random(tuple(d["shape"]), dtype=np.float32)
        qp = quant_params(d)
        if qp:
            x = np.clip(np.round(x / qp[0] + qp[1]), np.iinfo(d["dtype"]).min, np.iinfo(d["dtype"]).max)
        interpreter.set_tensor(d["index"], x.astype(d["dtype"]))


def float_saved_model(source) -> Path:
    """A TF SavedModel of an ONNX or TFLite source, for the TFLite quantizer: onnx2tf's output (a float
    .tflite goes to ONNX with tf2onnx first), recurrent layers unrolled (`_onnx2tf.for_quantizer`)."""
    from . import _onnx2tf
    if getattr(source, "onnx2tf_for_quantizer", None) is None:
        source.onnx2tf_for_quantizer = _onnx2tf.for_quantizer(_onnx2tf_saved_model(source))
    return source.onnx2tf_for_quantizer[0]


def _onnx2tf_saved_model(source) -> Path:
    saved_model = getattr(source, "onnx2tf_saved_model", None)
    if saved_model is not None:
        return saved_model
    if source.kind == "onnx":
        raise ConversionError("no onnx2tf SavedModel to quantize from: the fp32 TFLite conversion did not run")
    from . import _onnx2tf
    from . import onnx as onnx_backend
    if _is_quantized(source.path):
        raise ConversionError(f"{source.path.name} is already quantized: give the float model to quantize it again")
    work = source.path.parent / "onnx2tf"
    shutil.rmtree(work, ignore_errors=True)
    _, source.onnx2tf_saved_model = _onnx2tf.convert(onnx_backend.float_model(source)[0], source.inputs, work,
                                                     work / "float.tflite")
    return source.onnx2tf_saved_model


def _is_quantized(path: Path) -> bool:
    return any(np.issubdtype(np.dtype(t["dtype"]), np.integer) and t["quantization"][0]
               for t in tensor_details(path))


def tensor_details(path: Path) -> list[dict]:
    return require("ai_edge_litert.interpreter", "tflite").Interpreter(model_path=str(path)).get_tensor_details()


def channels_first_outputs(out_path: Path, float_artifact: Path) -> list[str]:
    """onnx2tf's SavedModel, which the quantizer converts from, has channels-last 4-D outputs where the
    float artifact had them transposed back (backends/_onnx2tf.py): do the same here."""
    from . import _tflite_rewrite
    lite = require("ai_edge_litert.interpreter", "tflite")
    wanted = [tuple(int(x) for x in d["shape"]) for d in lite.Interpreter(model_path=str(float_artifact)).get_output_details()]
    got = [tuple(int(x) for x in d["shape"]) for d in lite.Interpreter(model_path=str(out_path)).get_output_details()]
    positions = [k for k, shape in enumerate(got)
                 if shape not in wanted and _tflite_rewrite.channels_first(shape) in wanted]
    if not positions:
        return []
    _tflite_rewrite.transpose_outputs(out_path, positions)
    return ["outputs transposed back to the float model's channels-first layout (TRANSPOSE appended)"]


def match_outputs(source, out_path: Path, float_artifact: Path, calib=None) -> list[str]:
    """Put the quantized model's outputs in the float artifact's order. onnx2tf's SavedModel names them
    output_0, output_1, ... in the ONNX model's order (the float artifact's) and lists them sorted by name
    (output_10 before output_2): its signature says where each went. Without such names, outputs are matched by
    size and values on ORDER_SAMPLES calibration samples, the closest pairs (SNR) first: a scalar output has no
    direction, so cosine could not tell mp_hand_landmark's two [1, 1] scores apart (one of them swapped: -24 dB)."""
    if source.kind not in ("onnx", "tflite"):
        return []
    from . import _onnx2tf
    count = len(require("ai_edge_litert.interpreter", "tflite").Interpreter(
        model_path=str(float_artifact)).get_output_details())
    order, how = signature_order(out_path, count), "by the SavedModel's output names"
    if order is None:
        samples = calib.samples[:ORDER_SAMPLES] if calib is not None else [None]  # noise can be outside the domain
        order, how = _value_order(_outputs(float_artifact, samples), _outputs(out_path, samples)), "by size and values"
    if order is None or order == list(range(len(order))):
        return []  # None: the fidelity check reports the mismatch
    _onnx2tf._reorder(out_path, "outputs", order)
    return [f"outputs reordered to the float model's order ({how})"]


_OUTPUT_KEY = re.compile(r"output_(\d+)")


def signature_order(path: Path, count: int) -> list[int] | None:
    """For output_0 .. output_{count-1} of the model's one signature, its position in the graph's outputs;
    None when the signature does not name exactly those."""
    interpreter = require("ai_edge_litert.interpreter", "tflite").Interpreter(model_path=str(path))
    signatures = interpreter._get_full_signature_list()
    if len(signatures) != 1:
        return None
    outputs = next(iter(signatures.values()))["outputs"]
    keys = {int(m.group(1)): index for key, index in outputs.items() if (m := _OUTPUT_KEY.fullmatch(key))}
    where = [int(d["index"]) for d in interpreter.get_output_details()]
    if sorted(keys) != list(range(count)) or len(outputs) != count or sorted(keys.values()) != sorted(where):
        return None
    return [where.index(int(keys[k])) for k in range(count)]


def _value_order(reference: list[np.ndarray], quantized: list[np.ndarray]) -> list[int] | None:
    """For each reference output, the quantized output of its size closest to it (SNR), closest pairs first."""
    pairs = sorted(((_snr(want, got), -i, -j) for i, want in enumerate(reference)
                    for j, got in enumerate(quantized) if got.size == want.size), reverse=True)
    order: dict[int, int] = {}
    for _, minus_i, minus_j in pairs:
        if -minus_i not in order and -minus_j not in order.values():
            order[-minus_i] = -minus_j
    return [order[i] for i in range(len(reference))] if len(order) == len(reference) else None


def _snr(want: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((want - got) ** 2))
    return np.inf if noise == 0 else 10 * np.log10(max(float(np.sum(want ** 2)), 1e-30) / noise)


def _outputs(path: Path, samples: list) -> list[np.ndarray]:
    """Each output over `samples` (None: uniform [0, 1) inputs), dequantized, flat and concatenated."""
    interpreter = require("ai_edge_litert.interpreter", "tflite").Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    runs = []
    for sample in samples:
        set_inputs(interpreter, sample)
        try:
            interpreter.invoke()
        except RuntimeError as exc:
            raise ConversionError(f"LiteRT cannot run {path.name}: {' '.join(str(exc).split())[:300]}") from None
        row = []
        for d in interpreter.get_output_details():
            y, qp = interpreter.get_tensor(d["index"]).astype(np.float64), quant_params(d)
            row.append(((y - qp[1]) * qp[0] if qp else y).ravel())
        runs.append(row)
    return [np.concatenate([r[k] for r in runs]) for k in range(len(runs[0]))]


def translate(float_artifact: Path, calibrated: Path, names: list[str], sample) -> list[str]:
    """The calibrated model's op outputs that hold the same values as the float artifact's tensors `names`
    on one sample (same shape, SAME_DB or closer): the quantizer's names for a layer named in the fp32 artifact
    (a .tflite source's own names; onnx2tf renamed every op of it)."""
    theirs, ours = _op_outputs(float_artifact, sample), _op_outputs(calibrated, sample)
    found = []
    for name in names:
        want = theirs.get(name)
        if want is not None and np.any(want):
            found += [n for n, got in ours.items() if got.shape == want.shape and _snr(want, got) >= SAME_DB]
    return list(dict.fromkeys(found))


def _op_outputs(path: Path, sample) -> dict[str, np.ndarray]:
    """Every float op output of a .tflite on one sample, by tensor name (custom ops rewritten to builtins on a
    scratch copy, as the divergence tap does: MediaPipe's run only inside XNNPACK, which hides tensors)."""
    import tempfile

    from ._tflite_rewrite import rewrite
    lite = require("ai_edge_litert.interpreter", "tflite")
    with tempfile.TemporaryDirectory(prefix="edgekit-translate-") as tmp:
        content = rewrite(Path(path), Path(tmp) / "builtin.tflite")[0].read_bytes()
    with warnings.catch_warnings():  # "intended for debugging purposes only": that is what it is for here
        warnings.simplefilter("ignore")
        interpreter = lite.Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                                       experimental_op_resolver_type=lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    set_inputs(interpreter, sample)
    interpreter.invoke()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    values = {}
    for op in interpreter._get_ops_details():
        for index in (int(i) for i in op["outputs"] if int(i) >= 0):
            if np.dtype(details[index]["dtype"]) == np.float32:
                try:
                    values[details[index]["name"]] = interpreter.get_tensor(index).astype(np.float64)
                except ValueError:  # left null (an unrolled RNN's unread SPLIT output)
                    continue
    return values
