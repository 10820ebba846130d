"""Does the model fit the board: RAM from the measured arena (or the lifetime estimate), flash from
the compiled model array (or the .tflite size), each plus the profile's stated runtime share."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .ops import COMPILED, HOW, STATED, arena_to_allocate

if TYPE_CHECKING:
    from ...context import Context


def _lifetime_estimate(ctx: Context, model: dict) -> dict | None:
    """Peak activations from tensor lifetimes (the cost model's figure), for the report beside the arena."""
    from ... import costmodel
    from ...backends import onnx as onnx_backend
    from ...errors import ConversionError
    try:
        float_path = onnx_backend.float_model(ctx.source)[0]
    except ConversionError:
        return None
    est = costmodel.for_model(float_path, ctx.target.profile.device, ctx.qconfig.precision, 1)
    return {"peak_activation_bytes": est["peak_activation_bytes"], "how": est["how"]}


def verdict(device, arena: dict | None, estimate: dict | None, c_artifact: dict, tflite_bytes: int,
            missing: list[str] = ()) -> dict:
    """Does the model fit the board? RAM from the measured arena (the lifetime estimate only when TFLM
    cannot run it), flash from the compiled array (the .tflite size when it was not compiled). A model
    with an op TFLite Micro lacks does not run there, whatever its size."""
    runtime_ram, runtime_flash = device.runtime_ram_kib * 1024, device.runtime_flash_kib * 1024
    if arena:
        ram_need, ram_what = arena_to_allocate(arena["used_bytes"]), f"tensor arena ({HOW})"
    elif estimate:
        ram_need, ram_what = estimate["peak_activation_bytes"], f"activations ({estimate['how']}; TFLM did not run)"
    else:
        ram_need, ram_what = None, None
    compiled = c_artifact.get("compiled", {})
    flash_model, flash_what = (compiled["model_section_bytes"], COMPILED) if compiled.get("ok") else \
        (tflite_bytes, ".tflite size on disk (not compiled)")
    ram = _budget("RAM", ram_need, ram_what, runtime_ram, device.ram_kib * 1024)
    flash = _budget("flash", flash_model, f"model array, {flash_what}", runtime_flash, device.flash_kib * 1024)
    fits = None if ram["fits"] is None or flash["fits"] is None else ram["fits"] and flash["fits"]
    board = device.description or device.arch
    word = {True: "FITS", False: "DOES NOT FIT", None: "UNKNOWN"}[fits]
    if missing:
        fits, word = False, f"DOES NOT RUN (no TFLite Micro kernel for {len(missing)} op(s)); budgets as built"
    summary = f"{word} on {board}. {ram['text']} {flash['text']}"
    if estimate:
        summary += f" (Lifetime estimate of peak activations, for comparison: {estimate['peak_activation_bytes']:,} B," \
                   f" {estimate['how']}.)"
    return {"fits": fits, "runs": not missing, "ram": ram, "flash": flash, "lifetime_estimate": estimate,
            "summary": summary}


def _budget(what: str, need: int | None, need_how: str | None, runtime: int, budget: int) -> dict:
    if need is None:
        return {"fits": None, "text": f"{what}: unknown (TFLM did not run and no estimate could be made)."}
    total = need + runtime
    fits = total <= budget if budget else None
    verdict_word = "no budget in the profile" if not budget else ("fits" if fits else "does not fit")
    text = (f"{what}: {need:,} B {need_how} + {runtime:,} B runtime ({STATED}) = {total:,} B of {budget:,} B: "
            f"{verdict_word}" + (f", {total - budget:,} B over." if fits is False else "."))
    return {"fits": fits, "needed_bytes": total, "model_bytes": need, "model_how": need_how, "runtime_bytes": runtime,
            "runtime_how": STATED, "budget_bytes": budget, "text": text}
