"""ConvertOptions: every knob of `edgekit convert`, typed and described (the CLI help comes from here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .measure import OUTPUT_KINDS
from . import passes
from .schema import option

TUNE_OBJECTIVES = ("latency", "size", "memory")  # what `edgekit tune` minimises besides the accuracy drop


@dataclass
class ConvertOptions:
    target: str = option("cpu", "Target profile name (see `edgekit targets`).")
    out: Path | None = option(None, "Output directory; default ./edgekit-out/<model>-<target>/. Never the input's "
                                    "folder, the current or home directory, or one of their parents.")
    data: Path | None = option(None, "Evaluation .npz with `x` (inputs) and optional `y` (labels).")
    input_shape: list[str] = option([], "Input shape that fixes dynamic dims: '1,224,224,3' or 'name:1,3,32,32'.")
    force: bool = option(False, "Replace an existing output directory that edgekit wrote (or an empty one).")
    trust_model: bool = option(False, "Allow Keras models that need unsafe deserialisation (Lambda with Python code).")
    formats: list[str] = option([], "Artifact formats to build instead of the profile's list.")
    calib: str | None = option(None, "Calibration data: .npz/.npy, a folder of images, or 'random' (marked "
                                     "uncalibrated). Default: a held-apart slice of --data.")
    calib_scale: float | None = option(None, "Pixel scale for image-folder calibration, instead of the profile's.")
    threads: int | None = option(None, "Inference threads for latency, instead of the profile's.")
    threads_unbounded: bool = option(False, "Allow more than 4 inference threads per core of this host.")
    runs: int | None = option(None, "Timed runs, instead of the profile's.")
    processes: int | None = option(None, "Runner processes per artifact for latency (interleaved between the "
                                         "artifacts compared), instead of the profile's.")
    warmup: int | None = option(None, "Warm-up runs, instead of the profile's.")
    targets_dirs: list[str] = option([], "Extra directories searched for target profiles.")
    seed: int = option(0, "Seed for generated inputs when no --data is given.")
    sensitivity: bool = option(False, "Add per-layer int8 sensitivity (which layers to keep in float) to the report.")
    ops: bool = option(False, "Add per-op time to the report (the runtimes' own profilers): each format's fp32 "
                              "artifact, and every other one side by side with it.")
    train_data: Path | None = option(None, "Training .npz (x, and y where labels exist) for fine-tuning and distillation; "
                                           "default: a held-apart half of --data.")
    devices: list[str] = option([], "Also benchmark every artifact on these devices over SSH (ssh://user@host[:port]).")
    tflm_compress: bool = option(False, "MCU targets: also compress weights with TFLite Micro's LUT compression where a "
                                        "tensor's distinct values per channel fit fewer than 8 bits; report its flash "
                                        "size and parity in TFLite Micro (mcu/compressed/).")
    outputs: str = option("auto", "How outputs are judged: classes (top-1 agreement + cosine), values (SNR in dB: "
                                  "boxes, masks, landmarks, embeddings) or auto (probability vectors are classes).",
                          choices=OUTPUT_KINDS)
    recipe: Path | dict | None = option(None, "Replay a recipe (recipe.json of a convert run, or of a tune trial) "
                                              "instead of the profile's pass settings and the pass flags.")
    flags: dict = option({}, "Every pass's flags by field name (each pass's Flags, passes/base.py: --precision, "
                             "--prune, --distill, ... and plug-in passes' flags); `make` fills them in.")
    emulate: bool | None = option(None, "Also run TFLite/ONNX artifacts on emulated aarch64 (QEMU) and compare with "
                                        "the host; default: on for aarch64 targets when QEMU is installed.")

    def __getattr__(self, name: str):
        """A pass's flag reads like a field (`options.precision`, `options.clip_sigmas`)."""
        flags = self.__dict__.get("flags") or {}
        if name in flags:
            return flags[name]
        raise AttributeError(name)

    @classmethod
    def make(cls, **kwargs) -> ConvertOptions:
        """From keyword arguments (the CLI's, the API's): the passes' flags go into `flags`, every one of them
        (those not given at their Flags defaults)."""
        flags = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                 for p in passes.all_passes() if p.Flags is not None for f in dataclasses.fields(p.Flags)}
        flags.update(kwargs.pop("flags", None) or {})
        flags.update({name: kwargs.pop(name) for name in [k for k in kwargs if k in flags]})
        return cls(**kwargs, flags=flags)
