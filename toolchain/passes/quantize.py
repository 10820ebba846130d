"""Post-training quantization, written once; each backend module provides the `quantize` hook.

A backend declares what it can do (backends/base.py), and the pass checks a request against that
before any work:

    PRECISIONS    precision modes it implements (besides fp32)
    CALIB_METHODS calibration methods it implements; others fall back to minmax, and the report says so
    quantize(source, float_artifact, out_path, config, calib, method) -> list[str] of notes

What each format's hook can do for one layer is LAYER_FIXES (automatic mixed precision picks from it, in
the order the target's `[mixed] fixes` gives): `keep_float` leaves a layer's ops in float everywhere;
`keep_int16` quantizes a layer's activations (its ops' inputs and outputs) to 16 bits with int8 weights
(16x8), which only onnxruntime does per layer (TensorQuantOverrides, int16 Q/DQ at opset 21). TFLite's
converter has 16x8 for a whole model only (precision int16x8: WHOLE_MODEL_FIXES); NNCF has no per-layer
16-bit activations on CPU, so float is OpenVINO's only fix.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import ConversionError, EdgekitError
from ..schema import option

NAME, STAGE, ORDER, FORMATS = "quantize", "artifact", 10, ()
DESCRIPTION = "post-training quantization of each format's fp32 artifact by its backend's hook"

PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int8-io", "int16x8")
CALIBRATED = ("int8", "int8-io", "int16x8")  # precisions that need activation ranges
CALIB_METHODS = ("minmax", "percentile", "entropy")
LAYER_FIXES = {"tflite": ("float",), "onnx": ("float", "int16x8"), "openvino": ("float",)}  # per layer, by format
WHOLE_MODEL_FIXES = {"tflite": "int16x8"}  # a precision for the whole model where no per-layer fix reaches a gate


@dataclass(frozen=True)
class QuantizeConfig:
    precision: str = option("fp32", "fp32, fp16 (weights and compute), dynamic (int8 weights, float activations), "
                                    "int8 (calibrated, float I/O), int8-io (int8 I/O too), int16x8 "
                                    "(int16 activations, int8 weights).", choices=PRECISIONS)
    calib_method: str = option("minmax", "How activation ranges are taken from the calibration set.",
                               choices=CALIB_METHODS)
    calib_samples: int = option(100, "Calibration samples used.")
    per_channel: bool = option(True, "Per-channel weight scales (else one scale per tensor).")
    activations: str = option("auto", "Activation integer type where the backend lets us choose (onnxruntime): "
                                      "auto is uint8 on x86-64 (U8S8, its fast path there) and int8 elsewhere "
                                      "and for int8-io.", choices=("auto", "int8", "uint8"))
    keep_float: list[str] = option([], "Layers left in float (names as in the source model).")
    keep_int16: list[str] = option([], "Layers whose activations are quantized to 16 bits, weights staying int8 "
                                       "(16x8), where the format does that per layer (ONNX); --mixed auto fills it "
                                       "when the target's [mixed] fixes try int16x8.")


@dataclass
class Flags:
    precision: str | None = option(None, "Precision instead of the profile's.", choices=PRECISIONS)
    calib_samples: int | None = option(None, "Calibration samples, instead of the profile's.")
    calib_method: str | None = option(None, "minmax, percentile or entropy, instead of the profile's.",
                                      choices=CALIB_METHODS)
    per_tensor: bool = option(False, "One weight scale per tensor instead of per channel.")
    keep_float: list[str] = option([], "Layers to leave in float on every backend (adds to the profile's).")


Config = QuantizeConfig


@dataclass
class Calibration:
    samples: list[list[np.ndarray]]
    origin: str
    uncalibrated: bool = False  # random inputs chosen explicitly with --calib random


def configure(profile, flags: Flags | None) -> QuantizeConfig:
    """The profile's [quantize] with the flags on top; 'auto' settled for the target's architecture, and an
    fpga target's scale granularity set by its accelerator."""
    flags = flags or Flags()
    overrides = {"precision": flags.precision, "calib_samples": flags.calib_samples,
                 "calib_method": flags.calib_method, "per_channel": False if flags.per_tensor else None}
    config = dataclasses.replace(profile.quantize, **{k: v for k, v in overrides.items() if v is not None})
    if flags.keep_float:
        config = dataclasses.replace(config, keep_float=[*config.keep_float, *flags.keep_float])
    if config.calib_samples < 1:
        raise EdgekitError("--calib-samples must be at least 1", "give a positive count")
    config = resolve(config, profile.device.arch)
    if profile.device.kind == "fpga":  # the accelerator's scale granularity decides
        config = dataclasses.replace(config, per_channel=profile.accelerator.scales == "per-channel")
    return config


def applies(recipe, source) -> bool:
    return recipe[NAME].precision != "fp32"


def run(ctx, config: QuantizeConfig, backend, baseline, path) -> dict:
    if baseline is None:
        raise ConversionError(f"the fp32 {backend.FORMAT} baseline failed, so there is nothing to quantize")
    return quantize_with(backend, ctx.source, baseline, path, config, ctx.calib)


def search_space(trial, setup) -> dict:
    """int8 with its calibration choices and up to two of the most sensitive layers kept in float, or a
    mode without calibration."""
    precision = trial.suggest_categorical("precision", ["int8", "dynamic", "fp16"])
    if precision != "int8":
        return {"precision": precision}
    return {"precision": precision, "per_tensor": not trial.suggest_categorical("per_channel", [True, False]),
            "calib_method": trial.suggest_categorical("calib_method", list(CALIB_METHODS)),
            "calib_samples": trial.suggest_categorical("calib_samples", [32, 100]),
            "keep_float": setup.candidates[:trial.suggest_int("keep_float", 0, min(2, len(setup.candidates)))]}

needs_training = None


def resolve(config: QuantizeConfig, arch: str) -> QuantizeConfig:
    """Settle 'auto' choices for the target's architecture."""
    if config.activations != "auto":
        return config
    fast = "uint8" if arch == "x86_64" and config.precision == "int8" else "int8"
    return dataclasses.replace(config, activations=fast)


def quantize_with(backend, source, float_artifact, out_path, config: QuantizeConfig, calib: Calibration | None) -> dict:
    """Quantize `float_artifact` into `out_path` with the backend's hook; returns the report entries."""
    if config.precision not in backend.PRECISIONS:
        raise ConversionError(f"{backend.FORMAT} has no {config.precision} mode "
                              f"(it has: {', '.join(backend.PRECISIONS) or 'fp32 only'})")
    if config.keep_int16 and "int16x8" not in LAYER_FIXES.get(backend.FORMAT, ()):
        raise ConversionError(f"{backend.FORMAT} has no per-layer 16-bit activations (keep_int16): keep those "
                              "layers in float instead")
    if config.keep_int16 and config.precision not in ("int8", "int8-io"):
        raise ConversionError(f"keep_int16 applies to an int8 build, not {config.precision}")
    method = config.calib_method if config.calib_method in backend.CALIB_METHODS else "minmax"
    needs_calib = config.precision in CALIBRATED
    notes = backend.quantize(source, float_artifact, out_path, config, calib if needs_calib else None, method)
    entry = {"notes": notes, "calibration": None}
    if needs_calib:
        entry["calibration"] = {"method": method, "requested": config.calib_method, "samples": len(calib.samples),
                                "origin": calib.origin, "uncalibrated": calib.uncalibrated}
        if method != config.calib_method:
            notes.append(f"{backend.FORMAT} supports only {', '.join(backend.CALIB_METHODS)}: used {method} "
                         f"instead of {config.calib_method}")
    return entry


