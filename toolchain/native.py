"""Native precisions: what this host's runtimes compute faster than float32, offered as rows of their own.

A CPU with AVX512-BF16 or AMX runs OpenVINO in bf16 by default (its `INFERENCE_PRECISION_HINT`);
edgekit pins float32 artifacts to f32 so their figures are float32's. The native row is the same
graph with the run-time hint written into the IR (`rt_info` runtime_options/INFERENCE_PRECISION_HINT,
which `backends.openvino.Session` reads; OpenVINO itself does not apply that key), so the artifact
carries its precision wherever it is benchmarked. It is measured and verified like every other
artifact, at its precision's tolerance (measure.TOLERANCE).

Where a runtime has no native path edgekit can select, no row is built and a note says why:
LiteRT's XNNPACK fp16 path (ARM cores with fp16 arithmetic) cannot be chosen from LiteRT's Python
interpreter, and onnxruntime's CPU provider has no bf16/fp16 kernels worth timing.
"""
from __future__ import annotations

import platform
from pathlib import Path

from .backends.openvino import HINT_PATH

PRECISIONS = ("bf16", "fp16")  # what a profile's build.native may name
_OPENVINO_HINT = {"bf16": "bf16", "fp16": "f16"}
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
_NONE = {("tflite", "fp16"): "XNNPACK's fp16 path cannot be selected from LiteRT's Python interpreter",
         ("tflite", "bf16"): "LiteRT's CPU kernels have no bf16 path",
         ("onnx", "fp16"): "onnxruntime's CPU provider has no fp16 fast path",
         ("onnx", "bf16"): "onnxruntime's CPU provider has no bf16 fast path"}


def openvino_capabilities() -> tuple[set[str], str]:
    """OpenVINO CPU plugin: the precisions it reports as native here, and its default inference precision."""
    import openvino as ov
    core = ov.Core()
    capabilities = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return capabilities, core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def plan(fmt: str, wanted: list[str], device, target_precision: str) -> tuple[list[str], list[str]]:
    """The native precisions to build for one format (those of `wanted` this host runs natively), and a
    note for each one it does not build (why)."""
    wanted = [p for p in wanted if p != target_precision]
    if not wanted:
        return [], []
    if device.kind != "cpu" or device.arch != platform.machine():
        return [], []  # host figures say nothing about another device's native precision
    if fmt != "openvino":
        return [], [f"no {p} row: {_NONE[fmt, p]}" for p in wanted if (fmt, p) in _NONE]
    capabilities, _ = openvino_capabilities()
    build = [p for p in wanted if _CAPABILITY[p] in capabilities]
    notes = [f"no {p} row: this host's CPU has no native {p} (OpenVINO's OPTIMIZATION_CAPABILITIES lacks "
             f"{_CAPABILITY[p]}{'; bf16 needs AVX512-BF16 or AMX' if p == 'bf16' else ''})"
             for p in wanted if p not in build]
    return build, notes


def fp32_note(fmt: str) -> str | None:
    """What the float32 row of a format is pinned to, and what the runtime would pick on its own here."""
    if fmt != "openvino":
        return None
    _, default = openvino_capabilities()
    return (f"pinned to f32 (INFERENCE_PRECISION_HINT=f32); OpenVINO's default on this host would be {default}"
            + (" (benchmark_app runs that by default)" if default not in ("f32", "") else ""))


def build(fmt: str, precision: str, float_artifact: Path, out_path: Path) -> list[str]:
    """Write the native artifact: the float32 graph with the run-time precision hint in it."""
    assert fmt == "openvino", fmt
    import openvino as ov
    model = ov.Core().read_model(str(float_artifact))
    hint = _OPENVINO_HINT[precision]
    model.set_rt_info(hint, HINT_PATH)
    ov.save_model(model, str(out_path), compress_to_fp16=False)
    return [f"the float32 IR with INFERENCE_PRECISION_HINT={hint} in its rt_info (runtime_options): OpenVINO's CPU "
            f"plugin computes in {precision} on this host's native instructions; weights stay float32"]


def against_native(entries: list[dict], latency_ratio) -> None:
    """A quantized artifact's latency against each native row of its format (`vs_native`): the runtime's own
    default on this host (OpenVINO runs bf16 there unless pinned), the baseline users' tools report."""
    natives = [e for e in entries if e.get("role") == "native" and e["status"] == "ok"]
    for entry in (e for e in entries if e.get("role") == "target" and e["status"] == "ok" and e["precision"] != "fp32"):
        entry["vs_native"] = {n["precision"]: latency_ratio(entry, n) for n in natives}
