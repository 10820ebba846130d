"""OpenVINO IR: export (openvino.convert_model from any input kind), run (OpenVINO runtime)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConversionError, EdgekitError
from . import _norm_stats, require

FORMAT = "openvino"
SUFFIX = ".xml"
RUNTIME = "openvino"
SOURCES = ("keras", "h5", "savedmodel", "onnx", "tflite")  # input kinds export() can convert from
PRECISIONS = ("fp16", "dynamic", "int8")
CALIB_METHODS = ("minmax", "percentile", "entropy")
EXTRA = "openvino"
load_source = None  # not an input kind
detect = None


def files(path: Path) -> list[Path]:
    return [path, Path(path).with_suffix(".bin")]


def runtime_version() -> str:
    return require("openvino", EXTRA).get_version()


def gpu_name() -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    return core.get_property("GPU", "FULL_DEVICE_NAME") if "GPU" in core.available_devices else None


class Session:
    def __init__(self, path: Path, threads: int = 1, device: str = "cpu"):
        ov = require("openvino", EXTRA)
        core = ov.Core()
        device = device.upper()
        if device == "GPU" and "GPU" not in core.available_devices:
            raise EdgekitError("no GPU: OpenVINO sees no GPU device here", "install the GPU driver (OpenCL/Level Zero)")
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        try:
            model = core.read_model(str(path))
            if device == "CPU":
                config["INFERENCE_NUM_THREADS"] = threads
                config["INFERENCE_PRECISION_HINT"] = precision_hint(model)
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            raise EdgekitError(f"{Path(path).name}: OpenVINO cannot load it ({_reason(exc)[:200]})",
                               "check that the .xml and its .bin are complete and belong together") from None
        self.request = self.compiled.create_infer_request()
        self.inputs = [(p.any_name, tuple(p.shape), p.element_type.to_dtype().name) for p in self.compiled.inputs]

    def runtime_precisions(self) -> dict[str, int]:
        """How many executed ops run in each precision, from the compiled (runtime) model."""
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in ("Input", "Output", "Const", *LAYOUT_OPS):
                continue
            precision = info["runtimePrecision"].astype(str)
            counts[precision] = counts.get(precision, 0) + 1
        return counts

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(list(arrays))
        return [np.array(results[out]) for out in self.compiled.outputs]

    def bind(self, arrays: list[np.ndarray]) -> None:
        ov = require("openvino", EXTRA)
        for i, array in enumerate(arrays):
            self.request.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(array)))

    def invoke(self) -> None:
        self.request.infer()


HINT_PATH = ["runtime_options", "INFERENCE_PRECISION_HINT"]  # where a native-precision IR carries its hint


def precision_hint(model) -> str:
    """The CPU inference precision an IR asks for in its rt_info (edgekit's native bf16/fp16 artifacts), else
    f32: a float32 artifact never silently runs in bf16/fp16 (OpenVINO's own default on bf16/AMX CPUs)."""
    return model.get_rt_info(HINT_PATH).astype(str) if model.has_rt_info(HINT_PATH) else "f32"


_LOCATION = re.compile(r"(Check '.*' failed at |Exception from |FrontEnd API failed with |Summary:$|\S+\.(cpp|hpp):\d+)")


def _reason(exc: Exception) -> str:
    """OpenVINO's messages lead with source locations ("Check '...' failed at src/...cpp:221:"); the
    lines that say what broke ("No translator found for Convolution2DTransposeBias node.") follow."""
    lines = [ln.strip(" -\t") for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not _LOCATION.match(ln)]
    return "; ".join(dict.fromkeys(lines))[:300] or type(exc).__name__


def canonical_names(model) -> None:
    """Auto-generated names (`Constant_3137`) carry a process-wide counter: number them by position."""
    for i, op in enumerate(model.get_ordered_ops()):
        if _AUTO_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")


_AUTO_NAME = re.compile(r"[A-Z][A-Za-z0-9]*_\d+")  # op-type names are CamelCase


def _origin(source):
    """What convert_model reads. TF graphs go through ONNX, whose node names keep the layer names
    (the TF frontend renames convolutions to Convolution_<n>), unless tf2onnx cannot convert them."""
    if source.kind == "tflite":
        from ._tflite_rewrite import for_converters
        path, rewrites = for_converters(source)
        return str(path), "; ".join(["openvino.convert_model from the TFLite input", *rewrites])
    from . import onnx as onnx_backend
    try:
        path, how = onnx_backend.float_model(source)
        return str(path), f"openvino.convert_model from ONNX ({how})"
    except ConversionError:
        fn, signature, _ = source.handle
        return fn.get_concrete_function(*signature), "openvino.convert_model from the TF graph"


def export(source, out_path: Path, ctx) -> list[str]:
    ov = require("openvino", EXTRA)
    convert_from, note = _origin(source)
    try:
        model = ov.convert_model(convert_from)
    except Exception as exc:
        raise ConversionError(f"openvino.convert_model failed: {_reason(exc)}") from None
    try:
        model.reshape({port: ov.PartialShape(list(spec.shape)) for port, spec in zip(model.inputs, source.inputs)})
    except Exception as exc:
        raise ConversionError(f"OpenVINO could not fix the input shapes: {_reason(exc)}") from None
    canonical_names(model)
    ov.save_model(model, str(out_path), compress_to_fp16=False)
    return [note + " (float32 IR)"]


def quantize(source, float_artifact: Path, out_path: Path, config, calib, method: str) -> list[str]:
    """NNCF: quantize (int8 with calibration), compress_weights (int8 weights), or fp16 IR compression."""
    from ..layers import select
    ov = require("openvino", EXTRA)
    model = ov.Core().read_model(str(float_artifact))
    if config.precision == "fp16":
        if config.keep_float:
            raise ConversionError("--keep-float is not available for OpenVINO fp16 (the whole IR is compressed)")
        ov.save_model(model, str(out_path), compress_to_fp16=True)
        return ["OpenVINO IR with float16 weights (compress_to_fp16); the CPU plugin computes in its own precision"]
    nncf = require("nncf", "full")
    names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    stats = _norm_stats.float_ops(*_norm_stats.openvino_nodes(model)) if config.precision != "dynamic" else []
    kept = (select(names, config.keep_float, "OpenVINO") if config.keep_float else []) + stats
    ignored = nncf.IgnoredScope(names=kept, validate=False) if kept else None
    try:
        with _without_progress_bars():
            if config.precision == "dynamic":
                result = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=ignored)
                notes = ["nncf.compress_weights INT8_SYM: int8 weights, float activations"]
            else:
                result = nncf.quantize(model, nncf.Dataset([list(s) for s in calib.samples]),
                                       subset_size=len(calib.samples), ignored_scope=ignored,
                                       advanced_parameters=_advanced(nncf, config, method))
                notes = [f"nncf.quantize int8, {'per-channel' if config.per_channel else 'per-tensor'} weights"
                         + ("" if int16_saturates() else "; 8-bit first layer (this CPU has VNNI: no overflow fix)")]
    except Exception as exc:
        raise ConversionError(f"NNCF failed: {str(exc).strip().splitlines()[0][:300]}") from None
    canonical_names(result)
    ov.save_model(result, str(out_path), compress_to_fp16=False)
    return notes + ([f"kept in float: {', '.join(config.keep_float)}"] if config.keep_float else []) \
        + _norm_stats.note(stats)


def _without_progress_bars():
    """NNCF draws rich progress bars on stdout while it calibrates, and logs every ignored_scope match at INFO
    on stderr (a line per node and --mixed auto round); edgekit shows its own progress. EDGEKIT_VERBOSE=1
    (--verbose) keeps them."""
    import contextlib
    import io
    import logging
    import os
    if os.environ.get("EDGEKIT_VERBOSE") == "1":
        return contextlib.nullcontext()
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return contextlib.redirect_stdout(io.StringIO())


def _advanced(nncf, config, method: str):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    # minmax is the true min/max of the calibration activations, as in TFLite and onnxruntime: NNCF's own
    # default averages per-sample extremes, which clipped real digits the calibration set did not cover
    # (zoo ResNet-8/digits CNN on MNIST: -1.1/-1.8 pt, against -0.1 with true min/max and no overflow fix)
    estimators = {"minmax": RangeEstimatorParametersSet.MINMAX, "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
                  "entropy": RangeEstimatorParametersSet.HISTOGRAM}
    extra = {"activations_range_estimator_params": estimators[method]} if method in estimators else {}
    return AdvancedQuantizationParameters(
        weights_quantization_params=QuantizationParameters(per_channel=config.per_channel),
        overflow_fix=OverflowFix.DISABLE if not int16_saturates() else OverflowFix.FIRST_LAYER, **extra)


def int16_saturates() -> bool:
    """Whether this host's int8 kernels sum u8 x s8 products in int16 (x86 without VNNI/AMX: vpmaddubsw),
    where NNCF's overflow fix (first-layer weights in 7 bits) is needed; elsewhere it only costs accuracy."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Reorder"}  # move data, compute nothing: not counted as ops


def op_summary(path: Path) -> dict:
    """Precision of each op as the CPU plugin actually executes it (runtime model)."""
    counts = Session(path).runtime_precisions()
    integer = sum(v for k, v in counts.items() if k in ("i8", "u8", "i4", "u4"))
    return {"ops": sum(counts.values()), "float_ops": sum(counts.values()) - integer, "by_precision": counts,
            "how": "OpenVINO CPU runtime model (runtimePrecision)"}
