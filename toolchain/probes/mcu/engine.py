"""The TFLite Micro engine for microcontroller targets: where the model really runs on an MCU.

Called by the `mcu` probe (probes/mcu/__init__.py): `applies(target)`, `run(artifact, ctx, host_outputs)`,
`notes(figures)`. The parts, one module each:

- **ops** (ops.py): the model's operators against the TFLite Micro op resolver, named before anything
  else is attempted;
- **emulated** (parity.py, child.py): the artifact runs in TFLite Micro's own kernels (the `tflite-micro` host build,
  in a child process: native code can abort) on the evaluation samples; parity with LiteRT
  (bit-exact or max difference), accuracy, and the tensor arena TFLite Micro's recording
  allocator measured (head = planned activations, tail = persistent buffers);
- **C artifact** (c_artifact.py): `model_data.cc` / `model_data.h`, the flatbuffer as an aligned array and a
  header with I/O shapes, types, quantization and the arena to allocate, compiled with
  `arm-none-eabi-g++` for the profile's core; the flash bytes come from the object file;
- **verdict** (verdict.py): measured arena + the profile's stated runtime RAM against its SRAM, compiled
  model bytes + stated runtime flash against its flash.

Here: the probe's entry points, the report lines, and LUT weight compression (parent side).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ... import children
from .c_artifact import compile_c_artifact, write_c_artifact
from .ops import COMPILED, HOW, MISSING_OP, TIMEOUT_S, missing_ops, read_model
from .parity import CHILD, _crash_reason, emulate
from .verdict import _lifetime_estimate, verdict

if TYPE_CHECKING:
    from ...context import Context


def applies(target) -> bool:
    return target.profile.device.kind == "mcu"


def run(artifact: Path, ctx: Context, host_outputs) -> dict:
    """Every MCU figure of one .tflite artifact; each says how it was obtained."""
    from ... import measure
    device = ctx.target.profile.device
    model = read_model(artifact)
    figures: dict = {"ops": {"used": model["ops"], "missing": missing_ops(model["ops"])}}
    arena = None
    if figures["ops"]["missing"]:
        figures["emulated"] = {"runs": False, "how": HOW, "reason": "not attempted: an op has no TFLite Micro kernel"}
    else:
        ctx.progress("tflite: running in TFLite Micro (host build)")
        figures["emulated"] = emulate(artifact, ctx, host_outputs)
        arena = figures["emulated"].get("arena")
        named = MISSING_OP.search(figures["emulated"].get("reason", ""))
        if named:  # the resolver lacks an op this module's list has: believe the interpreter
            figures["ops"]["missing"].append(named.group(1))
    estimate = _lifetime_estimate(ctx, model)
    c_dir = ctx.stage / "mcu"
    c_dir.mkdir(exist_ok=True)
    figures["c_artifact"] = write_c_artifact(artifact, model, arena, c_dir)
    if device.gcc_flags:
        figures["c_artifact"]["compiled"] = compile_c_artifact(c_dir, device.gcc_flags, ctx.workdir)
    if ctx.options.tflm_compress:
        figures["compressed"] = compressed(artifact, ctx, figures, c_dir / "compressed")
    figures["verdict"] = verdict(device, arena, estimate, figures["c_artifact"], artifact.stat().st_size,
                                 figures["ops"]["missing"])
    if figures["emulated"].get("runs") and ctx.evalset.labels is not None:
        outputs = figures["emulated"].pop("_outputs")
        acc = measure.accuracy(outputs, ctx.evalset.labels)
        figures["emulated"]["accuracy"] = {"value": acc, "delta": acc - ctx.source_accuracy, "how": HOW}
    figures["emulated"].pop("_outputs", None)
    return figures


def notes(name: str, figures: dict) -> list[str]:
    """Report lines, most decisive first: missing ops, the verdict, then how each figure was had."""
    if "error" in figures:
        return [f"MCU {name}: {figures['error']}"]
    lines = []
    ops, emu, c_art, v = figures["ops"], figures["emulated"], figures["c_artifact"], figures["verdict"]
    if ops["missing"]:
        lines.append(f"TFLITE MICRO lacks {len(ops['missing'])} op(s) of {name}: {', '.join(ops['missing'])} — "
                     "replace them with supported ops, or register a custom kernel in the firmware")
    lines.append(f"MCU VERDICT {name}: {v['summary']}")
    if emu.get("runs"):
        parity = emu["parity_vs_litert"]
        exact = f"vs LiteRT as benchmarked (XNNPACK) {_parity_text(parity)}; vs LiteRT built-in kernels " \
            f"{_parity_text(emu['parity_vs_litert_builtin'])}"
        accuracy = f"; accuracy {emu['accuracy']['value']:.2%} ({emu['accuracy']['delta'] * 100:+.2f}pt)" \
            if emu.get("accuracy") else ""
        arena = emu["arena"]
        lines.append(f"TFLITE MICRO {name} ({HOW}, tflite-micro {emu['version']}): runs; outputs on "
                     f"{parity['samples']} samples: {exact}, top-1 agreement {parity['top1_agreement']:.1%}{accuracy}; "
                     f"tensor arena {arena['used_bytes']:,} B measured (head {arena['head_bytes']:,} B activations, "
                     f"tail {arena['tail_bytes']:,} B persistent; x86-64 build: its structs hold 8-byte pointers)")
    else:
        lines.append(f"TFLITE MICRO {name}: does not run ({emu['reason']})")
    compiled = c_art.get("compiled", {})
    if compiled.get("ok"):
        lines.append(f"C ARTIFACT {c_art['files'][0]}, {c_art['files'][1]} ({COMPILED}, {compiled['cpu']}): "
                     f"model array {compiled['model_section_bytes']:,} B of flash in {compiled['section']} "
                     f"(.tflite {c_art['tflite_bytes']:,} B); arena to allocate {c_art['arena_alloc_text']}")
    else:
        why = compiled.get("reason", "the profile names no compiler flags (device.gcc_flags)")
        lines.append(f"C ARTIFACT {', '.join(c_art['files'])} written, not compiled ({why}); "
                     f"arena to allocate {c_art['arena_alloc_text']}")
    if figures.get("compressed"):
        lines.append(_compression_note(figures["compressed"], c_art))
    return lines


def _compression_note(comp: dict, plain: dict) -> str:
    done = [t for t in comp["tensors"] if t["compressed"]]
    if not comp.get("runs"):
        return f"TFLM COMPRESSION not applied: {comp['reason']}"
    before, after = plain.get("compiled", {}), comp["c_artifact"].get("compiled", {})
    flash = f"compiled model array {after['model_section_bytes']:,} B (uncompressed {before['model_section_bytes']:,} B)" \
        if after.get("ok") and before.get("ok") else "not compiled"
    bits = ", ".join(f"{t['tensor']} {t['index_bits']}-bit" for t in done[:4]) + (" ..." if len(done) > 4 else "")
    return (f"TFLM COMPRESSION ({comp['how']}): {len(done)} of {len(comp['tensors'])} weight tensors ({bits}); "
            f".tflite {comp['tflite_bytes']:,} B (uncompressed {plain['tflite_bytes']:,} B); {flash}; arena "
            f"{comp['arena']['used_bytes']:,} B (decompressed weights live in it); outputs vs uncompressed in TFLM: "
            f"{_parity_text(comp['parity_vs_uncompressed'])}; written to mcu/compressed/")


def _parity_text(parity: dict) -> str:
    if parity["bit_exact"]:
        return "bit-exact"
    text = f"max abs diff {parity['max_abs_diff']:.3g} ({parity['samples_differing']} of {parity['samples']} samples differ"
    first = parity.get("first_divergence") or {}
    if first.get("op"):
        text += (f"; first differing op on sample {first['sample']}: #{first['op_index']} {first['op']} "
                 f"({first['elements_differing']} of {first['elements']} values, up to {first['max_diff']} steps)")
    return text + ")"


def compressed(artifact: Path, ctx: Context, figures: dict, out_dir: Path) -> dict:
    """LUT-compress the weights where it applies and saves bytes; the compressed model's flash size,
    arena and parity with the uncompressed one, all in TFLite Micro."""
    work = Path(tempfile.mkdtemp(prefix="tflm-compress-", dir=ctx.workdir))
    path = work / "model.tflite"
    cmd = [*CHILD, str(artifact), "--compress", str(path), "--json", str(work / "c.json"),
           "--log", str(work / "c.log")]
    proc = children.run(cmd, TIMEOUT_S)
    result = json.loads((work / "c.json").read_text()) if (work / "c.json").is_file() else {}
    base = {"how": f"{HOW}, LUT compression (tensorflow/lite/micro/compression)", "tensors": result.get("tensors", [])}
    if proc.returncode != 0 or not result.get("compressed"):
        log = (work / "c.log").read_text(errors="replace") if (work / "c.log").is_file() else ""
        return {**base, "applied": False, "reason": result.get("reason") or _crash_reason(proc, log)}
    ctx.progress("tflite: running the compressed model in TFLite Micro")
    plain = figures["emulated"].get("_outputs")
    if not plain:
        return {**base, "applied": True, "runs": False, "reason": "the uncompressed model did not run in TFLite Micro"}
    emu = emulate(path, ctx, plain, litert_builtin=False)
    if not emu.get("runs"):
        return {**base, "applied": True, "runs": False, "reason": emu["reason"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    c_art = write_c_artifact(path, read_model(path), emu["arena"], out_dir)
    device = ctx.target.profile.device
    if device.gcc_flags:
        c_art["compiled"] = compile_c_artifact(out_dir, device.gcc_flags, ctx.workdir)
    shutil.copyfile(path, out_dir / "model.tflite")
    return {**base, "applied": True, "runs": True, "tflite_bytes": path.stat().st_size,
            "arena": emu["arena"], "c_artifact": c_art,
            "parity_vs_uncompressed": emu["parity_vs_litert"]}
