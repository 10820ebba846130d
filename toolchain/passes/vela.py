"""The Vela compile step for Arm Ethos-U targets: the target's int8 TFLite compiled by Arm's Vela for the
profile's NPU configuration (device.npu, npu_system_config, npu_memory_mode), in an isolated child
(engine: _vela.py). The Vela-optimised model is written next to the plain one as `<name>_vela.tflite`;
the plain model goes on to be verified in LiteRT as for every target. What Vela decided and estimated
is kept for the `npu` probe (probes/npu.py), which turns it into budgets, a cycle-model comparison and
report lines. A Vela failure or crash is one line in that figure: the plain artifact is kept."""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass

from ..schema import option

NAME, STAGE, ORDER, FORMATS = "vela", "artifact", 90, ("tflite",)  # last: it compiles the final model
DESCRIPTION = "Arm Ethos-U: the int8 TFLite compiled by Vela for the profile's NPU (compiled, not executed)"
Flags = None
search_space = None
needs_training = None


@dataclass(frozen=True)
class VelaConfig:
    accelerator: str = option("", "Ethos-U configuration Vela compiles for; set from the profile's device.npu "
                                  "(empty: the pass is off).")
    system_config: str = option("", "Vela system configuration; set from device.npu_system_config.")
    memory_mode: str = option("", "Vela memory mode; set from device.npu_memory_mode.")
    optimise: str = option("Performance", "Vela's --optimise strategy: Performance (speed, within the memory "
                                          "mode's SRAM) or Size (least SRAM).", choices=("Performance", "Size"))


Config = VelaConfig


def configure(profile, flags: None) -> VelaConfig:
    device = profile.device
    return dataclasses.replace(profile.vela, accelerator=device.npu, system_config=device.npu_system_config,
                               memory_mode=device.npu_memory_mode)


def applies(recipe, source) -> bool:
    """On when the profile names an Ethos-U configuration and the target quantizes; Vela missing is one
    line naming the extra, before any work."""
    from . import _vela
    if not recipe[NAME].accelerator or recipe["quantize"].precision == "fp32":
        return False
    _vela.require()
    return True


def run(ctx, config: VelaConfig, backend, baseline, path) -> dict:
    from . import _vela
    from ..errors import ConversionError
    out = _vela.output_dir(ctx, path)
    try:
        figures = _vela.compile(path, config, out, ctx.progress)
    except ConversionError as exc:
        _vela.save(out, {"error": f"not compiled for {config.accelerator}: {exc}", "how": _vela.HOW})
        return {"notes": [f"Vela: not compiled for {config.accelerator} ({exc}); the plain int8 model is kept"]}
    compiled = path.with_name(f"{path.stem}_vela{path.suffix}")
    shutil.copyfile(out / figures["compiled"], compiled)
    figures.update(file=compiled.name, bytes=compiled.stat().st_size)
    _vela.save(out, figures)
    return {"notes": [f"compiled for {config.accelerator} by Vela {figures['vela_version']} "
                      f"({config.system_config}, {config.memory_mode}, optimise {config.optimise}): {compiled.name}"]}
