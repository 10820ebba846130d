"""TFLite / LiteRT: export (TF converter, onnx2tf for ONNX inputs), run (ai-edge-litert)."""
from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConversionError, EdgekitError
from . import _norm_stats, _onehot, require
from ._tflite_rebuild import quant_params as _quant_params, set_inputs as _set_inputs  # noqa: F401 (probes)

FORMAT = "tflite"
SUFFIX = ".tflite"
RUNTIME = "ai-edge-litert"
SOURCES = ("keras", "h5", "savedmodel", "onnx", "tflite")  # input kinds export() can convert from
PRECISIONS = ("fp16", "dynamic", "int8", "int8-io", "int16x8")
CALIB_METHODS = ("minmax",)
EXTRA = "tflite"
gpu_name = None  # the LiteRT GPU delegate is not used: CPU only
detect = None    # input kind detected by sources.detect_kind


def files(path: Path) -> list[Path]:
    return [path]


def runtime_version() -> str:
    from importlib.metadata import version
    return version("ai-edge-litert")


class Session:
    def __init__(self, path: Path, threads: int = 1, device: str = "cpu"):
        interpreter_mod = require("ai_edge_litert.interpreter", EXTRA)
        if device != "cpu":
            raise EdgekitError("no GPU runs for .tflite here: the LiteRT wheel has no desktop GPU delegate",
                               "measure the ONNX or OpenVINO artifact on the GPU")
        try:
            self.interpreter = interpreter_mod.Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise _load_error(Path(path).name, str(exc)) from None
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self.inputs = [(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name) for d in self._in]
        self.input_quant = [_quant_params(d) for d in self._in]
        self.output_quant = [_quant_params(d) for d in self._out]

    def bind(self, arrays: list[np.ndarray]) -> None:
        for detail, array in zip(self._in, arrays):
            self.interpreter.set_tensor(detail["index"], np.asarray(array, dtype=detail["dtype"]))

    def invoke(self) -> None:
        self.interpreter.invoke()

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        self.bind(arrays)
        self.invoke()
        return [self.interpreter.get_tensor(d["index"]) for d in self._out]


def _load_error(name: str, text: str) -> EdgekitError:
    custom = _UNRESOLVED.search(text)
    if custom:
        node = _NODE.search(text)
        return EdgekitError(f"{name} uses TFLite custom op '{custom.group(1)}'"
                            f"{f' (node {node.group(1)})' if node else ''}, which LiteRT has no kernel for",
                            "re-export the model with builtin ops, or run it where that op's kernel is registered")
    return EdgekitError(f"{name} is truncated or corrupt (LiteRT: {text.strip().splitlines()[0][:200]})",
                        "re-export the .tflite model")


_UNRESOLVED = re.compile(r"unresolved custom op: ([^\s.]+)")
_NODE = re.compile(r"Node number (\d+)")


def load_source(path: Path, opts):
    from ..sources import Source, TensorSpec
    session = Session(path)
    specs = [TensorSpec(n, s, d) for n, s, d in session.inputs]
    if any(min(s.shape, default=1) < 1 for s in specs):
        raise EdgekitError(f"{path.name} has dynamic input dims", "re-export the .tflite with a fixed input shape")
    return Source("tflite", path, path.stem, specs, session.run)


def export(source, out_path: Path, ctx) -> list[str]:
    """Write the float artifact; returns notes for the report."""
    if source.kind == "tflite":
        shutil.copyfile(source.path, out_path)
        return ["copied from the input model"]
    if source.kind == "onnx":
        return _from_onnx(source, out_path)
    _write(out_path, _converter(source).convert)
    return ["tf.lite.TFLiteConverter (float32)"]


def _converter(source):
    """A fresh TFLiteConverter for the source's float graph."""
    tf = require("tensorflow", "full")
    require("absl.logging", "full").set_verbosity("error")  # a deprecation notice per conversion
    if source.kind in ("onnx", "tflite"):
        from ._tflite_rebuild import float_saved_model
        return tf.lite.TFLiteConverter.from_saved_model(str(float_saved_model(source)))
    fn, signature, _ = source.handle
    # No trackable object here: with one, the converter keeps variables unfrozen and the model reads NaNs.
    return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function(*signature)])


def _write(out_path: Path, convert) -> None:
    try:
        out_path.write_bytes(convert())
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"TFLite converter failed: {_last_error_line(str(exc))}") from None


def quantize(source, float_artifact: Path, out_path: Path, config, calib, method: str) -> list[str]:
    """Post-training quantization with the TFLite converter (see passes/quantize.py). The result is run
    on a calibration sample; when an op fails or is the first to give NaN/inf (e.g. a divisor quantized
    to exactly zero), that op and the producers of its inputs are kept in float and the model is
    rebuilt, up to MAX_FLOAT_RETRIES times. For int8 (float I/O: CPU targets) the op types XNNPACK
    refuses in int8 are then kept in float (backends/_xnnpack.py). The file is written in canonical op order
    (tflite_canonical): same input and flags, same bytes."""
    notes = [f"TFLite post-training {config.precision}, {'per-channel' if config.per_channel else 'per-tensor'} weights"]
    if source.kind == "tflite":
        notes.append("float graph rebuilt from the .tflite input (tf2onnx, then onnx2tf) to quantize it")
    notes += _quantize_checked(source, float_artifact, out_path, config, calib, [])
    if config.precision == "int8" and calib is not None:  # float I/O: a CPU target, run through XNNPACK
        from . import _xnnpack
        notes += _xnnpack.keep_refused_in_float(out_path, lambda ops, path: _quantize_checked(
            source, float_artifact, path, config, calib, list(ops)))
    from ..tflite_canonical import canonicalize  # TF's quantizer varies the Q/DQ ops it adds per build
    canonicalize(out_path)
    return notes


def _quantize_checked(source, float_artifact: Path, out_path: Path, config, calib, kept_ops: list[str]) -> list[str]:
    """Quantize, run, and rebuild with the failing op kept in float, up to MAX_FLOAT_RETRIES times."""
    from . import _tflite_rebuild as rebuilt
    notes = []
    kept: list[str] = []
    for _ in range(MAX_FLOAT_RETRIES + 1):
        notes_now = _quantize_once(source, float_artifact, out_path, config, calib, kept, kept_ops)
        notes_now += rebuilt.channels_first_outputs(out_path, float_artifact) + _onehot.requantize_one_hot(out_path)
        failure = _first_failing_op(out_path, calib)
        if failure is None:
            unrolled = (getattr(source, "onnx2tf_for_quantizer", None) or (None, []))[1]
            return notes + unrolled + notes_now + rebuilt.match_outputs(source, out_path, float_artifact, calib)
        message, op, tensors = failure
        if calib is None:
            break
        names = {t["name"] for t in rebuilt.tensor_details(_calibrated(source, config, calib))}  # the denylist's
        more = [t for t in tensors if t in names and t not in kept]
        if tensors and tensors[0] not in names and op not in kept_ops:  # the op's own output was renamed
            kept_ops.append(op)
            more.append(f"every {op}")
        if not more:
            break
        kept += [t for t in more if t in names]
        notes.append(f"kept in float after the {config.precision} model failed: {', '.join(more)} ({message})")
    raise ConversionError(f"LiteRT cannot run the {config.precision} model: {message}"
                          + (f" (already kept in float: {', '.join(kept)})" if kept else "")
                          + " — keep that op in float with --keep-float")


MAX_FLOAT_RETRIES = 3


def _quantizing_converter(source, config, calib, float_fallback: bool = False):
    """A TFLiteConverter set up for `config` (optimizations, calibration data, ops set, I/O types)."""
    tf = require("tensorflow", "full")
    converter = _converter(source)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter._experimental_disable_per_channel = not config.per_channel
    ops = tf.lite.OpsSet
    if config.precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if calib is not None:
        converter.representative_dataset = lambda: iter([list(s) for s in calib.samples])
        converter.target_spec.supported_ops = [ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                                               if config.precision == "int16x8" else ops.TFLITE_BUILTINS_INT8]
        converter.target_spec.supported_ops += [ops.TFLITE_BUILTINS] if float_fallback else []
    if config.precision == "int8-io":
        converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter


def _quantize_once(source, float_artifact: Path, out_path: Path, config, calib, kept: list[str],
                   kept_ops: list[str]) -> list[str]:
    """One build. int8 with float I/O re-quantizes the cached calibrated model even when nothing is kept (same
    ranges, scales and outputs as the converter's own build): the XNNPACK and run-once rebuilds that may follow
    reuse its calibration instead of running it again (ddddocr's unrolled CRNN: 37 s of calibration, twice)."""
    if not config.keep_float and not kept and not kept_ops and (calib is None or config.precision != "int8"):
        try:
            _write(out_path, _quantizing_converter(source, config, calib).convert)
        except ConversionError as exc:  # TF's documented way out: ops with no 16x8 kernel left in float
            if config.precision != "int16x8" or "16x8-bit not yet supported" not in str(exc):
                raise
            _write(out_path, _quantizing_converter(source, config, calib, float_fallback=True).convert)
            return [f"ops with no 16x8 kernel left in float (TFLITE_BUILTINS fallback): {str(exc).split(': ', 1)[-1][:200]}"]
        return []
    if calib is None:
        raise ConversionError(f"--keep-float needs a calibrated precision on TFLite, not {config.precision}")
    calibrated = _calibrated(source, config, calib)
    denied = _keep_names(calibrated, float_artifact, config.keep_float, calib) if config.keep_float else []
    stats = _norm_stats.float_ops(*_norm_stats.tflite_nodes(calibrated)) if config.precision == "int8" else []
    from tensorflow.lite.python import convert
    _write(out_path, lambda: convert.mlir_quantize(  # what QuantizationDebugger's denylists do, minus its debug model
        calibrated.read_bytes(), disable_per_channel=not config.per_channel,
        fully_quantize=config.precision == "int8-io", denylisted_ops=kept_ops, denylisted_nodes=denied + kept + stats))
    return ([f"kept in float: {len(denied)} tensors of {', '.join(config.keep_float)}"] if denied else []) \
        + _norm_stats.note(stats)


def _keep_names(calibrated: Path, float_artifact: Path, layers: list[str], calib) -> list[str]:
    """The calibrated model's tensor names (mlir_quantize's denylist takes those, exactly) belonging to `layers`;
    a layer named only in the fp32 artifact (a .tflite source rebuilt through onnx2tf keeps none of its names)
    through the tensors that hold the same values (`_tflite_rebuild.translate`)."""
    from ..layers import select
    from . import _tflite_rebuild as rebuilt
    names = [t["name"] for t in rebuilt.tensor_details(calibrated)]
    chosen: list[str] = []
    for layer in layers:
        exact = re.compile(rf"(^|[/;]){re.escape(layer)}([/;:]|$)")  # onnx2tf's first `tf.math.add` scope, not every
        try:                                                           # `tf.math.add_N` (a Keras `conv1_1` for `conv1`)
            chosen += [n for n in names if exact.search(n)] or select(names, [layer], "TFLite")
        except ConversionError:
            theirs = select([t["name"] for t in rebuilt.tensor_details(float_artifact)], [layer], "TFLite")
            found = rebuilt.translate(float_artifact, calibrated, theirs, calib.samples[0])
            if not found:
                raise ConversionError(f"--keep-float {layer}: no op of the TFLite graph belongs to that layer (the "
                                      "quantizer's rebuilt graph has no tensor with its values)") from None
            chosen += found
    return list(dict.fromkeys(chosen))


def _calibrated(source, config, calib) -> Path:
    """The converter's calibrated float model (ranges recorded, nothing quantized), made once per source and
    calibration setting, in the workdir: each rebuild with other ops kept in float (the run-once check,
    --mixed auto rounds) only re-quantizes it; its tensor names are the int8 builds' (`divergence_reference`)."""
    cache = getattr(source, "tflite_calibrated", None)
    if cache is None:
        cache = source.tflite_calibrated = {}
    import hashlib
    digest = hashlib.sha256()
    for array in (a for sample in calib.samples for a in sample):
        digest.update(np.ascontiguousarray(array).tobytes())
    key = (config.precision, config.per_channel, digest.hexdigest())
    if key not in cache:
        converter = _quantizing_converter(source, config, calib)
        converter.experimental_mlir_quantizer = True
        converter._experimental_calibrate_only = True
        name = hashlib.sha256(repr((key, str(source.path))).encode()).hexdigest()[:16]
        path = source.path.parent / f"calibrated-{name}.tflite"
        try:
            path.write_bytes(converter.convert())
        except Exception as exc:
            raise ConversionError(f"TFLite converter failed: {_last_error_line(str(exc))}") from None
        cache[key] = path
    return cache[key]


class _Calibrated(os.PathLike):
    """The calibrated model's path, made on first use (a plain build that meets its gate never needs it)."""

    def __init__(self, source, config, calib):
        self._args = (source, config, calib)

    def __fspath__(self) -> str:
        return str(_calibrated(*self._args))


def divergence_reference(source, float_artifact: Path, config, calib) -> os.PathLike:
    """What --mixed auto's layer-wise divergence compares an int8 build with: the calibrated float model every
    build re-quantizes (made on first use). Its tensor names are the builds' and the ones keep_float is looked up
    in; a model rebuilt through onnx2tf shares none with its fp32 artifact (mp_palm_detection: every diverging
    layer named in the .tflite's terms, none of them keepable)."""
    return _Calibrated(source, config, calib)


_FAILED_NODE = re.compile(r"Node number (\d+) \((\w+)\) failed")


CHECK_SAMPLES = 16  # calibration samples the quantized model is run on before it is accepted


def _first_failing_op(path: Path, calib) -> tuple[str, str, list[str]] | None:
    """None when LiteRT runs the model with finite outputs on the first CHECK_SAMPLES calibration samples;
    else one line naming the op that failed (or first gave NaN/inf) and its output tensor, and the
    tensors to keep in float: that output and the op's non-constant inputs."""
    for sample in (calib.samples[:CHECK_SAMPLES] if calib is not None else [None]):
        failure = _failing_op_on(path, sample)
        if failure is not None:
            return failure
    return None


def _failing_op_on(path: Path, sample) -> tuple[str, str, list[str]] | None:
    lite = require("ai_edge_litert.interpreter", EXTRA)
    with warnings.catch_warnings():  # "intended for debugging purposes only": that is what it is for here
        warnings.simplefilter("ignore")
        interpreter = lite.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    _set_inputs(interpreter, sample)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    try:
        interpreter.invoke()
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        match = _FAILED_NODE.search(text)
        if not match:
            return text[:300], "", []
        op = next(d for d in ops if d["index"] == int(match.group(1)))
        return _describe(op, details, f"failed: {text[:match.start()].strip().rstrip('.')[:200]}")
    outputs = [_finite(interpreter, d["index"]) for d in interpreter.get_output_details()]
    if all(ok is not False for ok in outputs):
        return None
    # Tensors no op wrote this run (constants, what DEQUANTIZE of fp16 weights prepared) may hold
    # anything: only ops fed by the inputs or by other ops are looked at.
    live = {int(d["index"]) for d in interpreter.get_input_details()}
    for op in ops:
        if not live & {int(i) for i in op["inputs"]}:
            continue
        live |= {int(i) for i in op["outputs"]}
        if any(_finite(interpreter, index) is False for index in op["outputs"]):
            return _describe(op, details, "gave NaN or infinite values")
    return "the outputs contain NaN or infinite values", "", []


def _finite(interpreter, index) -> bool | None:
    """Whether a float tensor is all finite (None: not float, or LiteRT left it null, e.g. an unrolled
    RNN's unread SPLIT output)."""
    try:
        value = interpreter.get_tensor(int(index))
    except ValueError:
        return None
    return bool(np.all(np.isfinite(value))) if np.issubdtype(value.dtype, np.floating) else None


def _describe(op: dict, details: dict, what: str) -> tuple[str, str, list[str]]:
    name = lambda i: details[int(i)]["name"]  # noqa: E731
    produced = [i for i in op["inputs"] if int(i) >= 0 and not details[int(i)].get("sparsity_parameters")
                and details[int(i)]["name"]]
    tensors = [name(i) for i in op["outputs"]] + [name(i) for i in produced]
    return f"op {op['op_name']} (node {op['index']}, output '{name(op['outputs'][0])}') {what}", op["op_name"], tensors


def _from_onnx(source, out_path: Path) -> list[str]:
    """ONNX -> TFLite through onnx2tf's recipe ladder (backends/_onnx2tf.py), on copies in the workdir."""
    require("onnx2tf", "full")
    from . import _onnx2tf
    work = source.path.parent / "onnx2tf"
    shutil.rmtree(work, ignore_errors=True)
    notes, saved_model = _onnx2tf.convert(source.onnx_fixed_path, source.inputs, work, out_path)
    source.onnx2tf_saved_model, source.onnx2tf_for_quantizer = saved_model, None  # the quantizer converts from it
    return notes


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return ((errors or lines or ["no output"])[-1])[:300]


LAYOUT_OPS = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS"}  # move data, compute nothing: not counted as ops


def op_summary(path: Path) -> dict:
    """Count ops by output type, without delegates (XNNPACK would hide the ops behind DELEGATE)."""
    interpreter_mod = require("ai_edge_litert.interpreter", EXTRA)
    interpreter = interpreter_mod.Interpreter(
        model_path=str(path), experimental_op_resolver_type=interpreter_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    by_type: dict[str, int] = {}
    float_ops = 0
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        by_type[name] = by_type.get(name, 0) + 1
        outputs_float = any(np.issubdtype(dtypes[i], np.floating) for i in op["outputs"] if i >= 0)
        if outputs_float and name not in ("DEQUANTIZE", "QUANTIZE") and name not in LAYOUT_OPS:
            float_ops += 1
    skipped = sum(v for k, v in by_type.items() if k in ("QUANTIZE", "DEQUANTIZE") or k in LAYOUT_OPS)
    from ._xnnpack import refused
    return {"ops": sum(by_type.values()) - skipped, "float_ops": float_ops, "by_type": by_type,
            "how": "TFLite graph inspection (output tensor types)", "outside_int8": refused(path, "int8"),
            "outside_int8_why": "XNNPACK has no int8 kernel for them: LiteRT's built-in ones run them, outside the delegate"}
