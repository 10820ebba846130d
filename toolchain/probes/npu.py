"""Arm Ethos-U targets (device.kind "npu"): what the `vela` pass compiled (passes/vela.py, engine
passes/_vela.py) turned into figures: the NPU/CPU operator split with Vela's reason for each CPU
fallback, SRAM and flash against the profile's budgets, Vela's cycle estimate beside edgekit's own
cycle model, and the C artifact (mcu/model_data.cc) of the Vela-optimised model.
The NPU part is compiled and estimated here, never executed (no FVP or board)."""
from __future__ import annotations

from pathlib import Path

NAME = "npu"
ORDER = 38
NOT_RUN = "compiled and estimated, not executed here (no Ethos-U FVP or board)"


def applies(ctx, backend, precision: str) -> bool:
    return ctx.target.profile.device.kind == "npu" and backend.FORMAT == "tflite" and precision != "fp32"


def run(ctx, backend, artifact: Path, host) -> dict:
    from ..passes import _vela
    figures = _vela.load(_vela.output_dir(ctx, artifact))
    if figures is None or "error" in figures:  # the pass did not run, or Vela failed: said in one line
        return {NAME: figures} if figures else {}
    device = ctx.target.profile.device
    figures.update(executed=False, note=NOT_RUN)
    figures["c_artifact"] = _c_artifact(ctx, artifact.with_name(figures["file"]))
    figures["verdict"] = verdict(device, figures)
    spec = _vela.accel_spec(device, ctx.target.profile.accelerator, figures)
    figures["edgekit_estimate"] = _vela.edgekit_estimate(artifact, figures, spec)
    return {NAME: figures}


def _c_artifact(ctx, compiled: Path) -> dict:
    """mcu/model_data.cc/.h of the Vela-optimised model (TFLite Micro runs it with the Ethos-U custom op)."""
    from .mcu import c_artifact, ops
    c_dir = ctx.stage / "mcu"
    c_dir.mkdir(exist_ok=True)
    c_art = c_artifact.write_c_artifact(compiled, ops.read_model(compiled), None, c_dir)
    flags = ctx.target.profile.device.gcc_flags
    if flags:
        c_art["compiled"] = c_artifact.compile_c_artifact(c_dir, flags, ctx.workdir)
    return c_art


def verdict(device, figures: dict) -> dict:
    """SRAM: what Vela allocated (+ the stated runtime when the host shares that SRAM); flash: the
    compiled model array (the .tflite size when it was not compiled) + the stated runtime."""
    from ..passes import _vela as vela
    dedicated = device.npu_memory_mode.startswith("Dedicated")
    compiled = figures["c_artifact"].get("compiled", {})
    flash_need, flash_how = (compiled["model_section_bytes"], "model array, compiled (arm-none-eabi-g++)") \
        if compiled.get("ok") else (figures["bytes"], "Vela .tflite size on disk (not compiled)")
    ram = _budget("SRAM", figures["memory_used_bytes"].get("SRAM", 0), vela.ALLOCATED,
                  0 if dedicated else device.runtime_ram_kib * 1024, device.ram_kib * 1024)
    flash = _budget("flash", flash_need, flash_how, device.runtime_flash_kib * 1024, device.flash_kib * 1024)
    fits = None if ram["fits"] is None or flash["fits"] is None else ram["fits"] and flash["fits"]
    word = {True: "FITS", False: "DOES NOT FIT", None: "UNKNOWN"}[fits]
    summary = f"{word} on {device.description or device.npu}. {ram['text']} {flash['text']}"
    dram = figures["memory_used_bytes"].get("DRAM")
    if dram:
        summary += f" DRAM: {dram:,} B ({vela.ALLOCATED}; the profile states no DRAM budget)."
    return {"fits": fits, "runs": True, "ram": ram, "flash": flash, "cpu_fallback_ops": figures["ops"]["cpu"],
            "summary": summary}


def _budget(what: str, need: int, how: str, runtime: int, budget: int) -> dict:
    total = need + runtime
    fits = total <= budget if budget else None
    word = "no budget in the profile" if not budget else ("fits" if fits else "DOES NOT FIT")
    runtime_text = f" + {runtime:,} B runtime (stated in the target profile)" if runtime else ""
    text = (f"{what}: {need:,} B {how}{runtime_text} = {total:,} B of {budget:,} B: {word}"
            + (f", {total - budget:,} B over." if fits is False else "."))
    return {"fits": fits, "needed_bytes": total, "model_bytes": need, "runtime_bytes": runtime, "budget_bytes": budget,
            "text": text}


def warnings(ctx) -> list[str]:
    if ctx.target.profile.device.kind != "npu":
        return []
    return [f"the {ctx.target.profile.device.npu} NPU part is {NOT_RUN}; its cycles and time are Vela's estimate"]


def notes(result: dict) -> list[str]:
    return [line for a in result["artifacts"] if a.get(NAME)
            for line in artifact_notes(f"{a['format']} {a['precision']}", a[NAME])]


def artifact_notes(name: str, npu: dict) -> list[str]:
    if "error" in npu:
        return [f"NPU {name}: {npu['error']}; the plain int8 model and its figures are kept"]
    ops, cycles, est = npu["ops"], npu["cycles"], npu["edgekit_estimate"]
    fallback = "; ".join(f"{f['op']} '{f['output']}' ({f['reason']})" for f in npu["fallback"][:6]) or "none"
    if len(npu["fallback"]) > 6:
        fallback += f"; and {len(npu['fallback']) - 6} more"
    cfg = est["config"]
    ratio = f" = {est['ratio_to_vela']:.2f}x Vela's" if est["ratio_to_vela"] else ""
    memory = ", ".join(f"{k} {v:,}" for k, v in cycles.items() if k not in ("npu", "total"))
    c_art = npu["c_artifact"]
    compiled = c_art.get("compiled", {})
    c_text = (f"model array {compiled['model_section_bytes']:,} B of flash in {compiled['section']} "
              f"({compiled['cpu']})" if compiled.get("ok") else f"not compiled ({compiled.get('reason', 'no gcc_flags')})")
    return [
        f"NPU {name} (Vela {npu['vela_version']}, {npu['accelerator']}, {npu['system_config']}, {npu['memory_mode']}): "
        f"{npu['note']}. {ops['npu']} of {ops['total']} operators on the NPU, {ops['cpu']} on the CPU; CPU fallback: "
        f"{fallback}. Written {npu['file']} ({npu['bytes']:,} B) next to the plain int8 model, which was verified "
        "in LiteRT.",
        f"NPU VERDICT {name}: {npu['verdict']['summary']}",
        f"NPU ESTIMATED (Vela) {name}: {cycles['total']:,} cycles, {npu['inference_ms']:.4g} ms at "
        f"{npu['clock_mhz']:g} MHz (NPU compute {cycles['npu']:,} cycles; memory access cycles: {memory or 'none'}), "
        f"{npu['macs']:,} MACs. edgekit's cycle model on the same configuration ({cfg['mac_rows']}x{cfg['mac_cols']} "
        f"MACs/cycle, {cfg['clock_mhz']:g} MHz, weights from {npu['weights_area']} at {cfg['dram_gbps']:.3g} GB/s, "
        f"feature maps in {npu['feature_map_area']}; efficiency {cfg['compute_efficiency']:g} compute, "
        f"{cfg['dram_efficiency']:g} memory; {est['how']}): {est['cycles']:,} cycles, {est['latency_ms']:.4g} ms{ratio}.",
        f"C ARTIFACT {', '.join(c_art['files'])} from {npu['file']}: {c_text}; register the Ethos-U custom op "
        "(resolver.AddEthosU()) and link the Ethos-U driver",
    ]
