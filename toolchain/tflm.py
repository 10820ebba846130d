"""The TFLite Micro probe for microcontroller targets: where the model really runs on an MCU.

A probe module (`applies(target)`, `run(artifact, ctx, host_outputs)`, `notes(figures)`):

- **ops**: the model's operators against the TFLite Micro op resolver, named before anything
  else is attempted;
- **emulated**: the artifact runs in TFLite Micro's own kernels (the `tflite-micro` host build,
  in a child process: native code can abort) on the evaluation samples; parity with LiteRT
  (bit-exact or max difference), accuracy, and the tensor arena TFLite Micro's recording
  allocator measured (head = planned activations, tail = persistent buffers);
- **C artifact**: `model_data.cc` / `model_data.h`, the flatbuffer as an aligned array and a
  header with I/O shapes, types, quantization and the arena to allocate, compiled with
  `arm-none-eabi-g++` for the profile's core; the flash bytes come from the object file;
- **verdict**: measured arena + the profile's stated runtime RAM against its SRAM, compiled
  model bytes + stated runtime flash against its flash.

The child process (`python -m edgekit.tflm MODEL --inputs in.npz --outputs out.npz --json r.json`)
imports numpy and tflite_micro only. TFLite Micro prints its allocation report and its errors
on the C stderr; the child captures that file descriptor and parses it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import children

if TYPE_CHECKING:
    from .pipeline import Context

HOW = "emulated (TFLite Micro host build)"
COMPILED = "compiled (arm-none-eabi-g++, section size from arm-none-eabi-size)"
STATED = "stated in the target profile"
ARENA_ALIGNMENT = 16  # TFLM: an arena that is not 16-byte aligned needs arena_used_bytes() + 16
TIMEOUT_S = 900

# Builtin operators the op resolver of the tflite-micro wheel registers (python_ops_resolver.cc
# of the pinned build; requirements/lock.txt), and its custom operators.
BUILTIN_OPS = frozenset("""
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND BROADCAST_ARGS
BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV
DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER
GATHER_ND GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND
LOGICAL_NOT LOGICAL_OR LOGISTIC LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL PACK PAD
PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_ALL REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH
SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV
UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE""".split())
CUSTOM_OPS = frozenset("""
CIRCULAR_BUFFER SignalDelay SignalEnergy SignalFftAutoScale SignalFilterBank SignalFilterBankLog
SignalFilterBankSpectralSubtraction SignalFilterBankSquareRoot SignalFramer SignalIrfft SignalOverlapAdd SignalPCAN
SignalRfft SignalStacker SignalWindow TFLM_DECODE TFLite_Detection_PostProcess ethos-u""".split())
MISSING_OP = re.compile(r"Didn't find op for (?:builtin opcode|custom op(?:code)?) '([^']+)'")
TFLITE_TYPES = {"float32": 1, "int32": 2, "uint8": 3, "int64": 4, "bool": 6, "int16": 7, "int8": 9}


# --- the probe: applies / run / notes ------------------------------------------------------------

def applies(target) -> bool:
    return target.profile.device.kind == "mcu"


def run(artifact: Path, ctx: Context, host_outputs) -> dict:
    """Every MCU figure of one .tflite artifact; each says how it was obtained."""
    from . import measure
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


# --- ops -----------------------------------------------------------------------------------------

def read_model(path: Path) -> dict:
    """Operator names (builtin, or custom codes as 'CUSTOM:name') and I/O tensors of a .tflite file."""
    from tensorflow.lite.python import schema_py_generated as schema
    buf = Path(path).read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops = set()
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), f"BUILTIN_{code.builtinCode}")
            ops.add(f"CUSTOM:{_text(code.customCode)}" if name == "CUSTOM" else name)
    graph = model.subgraphs[0]

    def tensor(i):
        t = graph.tensors[i]
        q = t.quantization
        scale = [float(s) for s in (q.scale if q is not None and q.scale is not None else [])]
        zero = [int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else [])]
        return {"name": _text(t.name), "shape": [int(d) for d in t.shape], "dtype": types[t.type],
                "scale": scale, "zero_point": zero}
    sequence = []
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        sequence.append((names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"),
                         [int(o) for o in op.outputs], [_text(graph.tensors[o].name) for o in op.outputs]))
    return {"ops": sorted(ops), "inputs": [tensor(i) for i in graph.inputs], "outputs": [tensor(i) for i in graph.outputs],
            "sequence": sequence}


def missing_ops(ops: list[str]) -> list[str]:
    return [op for op in ops if not (op.removeprefix("CUSTOM:") in CUSTOM_OPS if op.startswith("CUSTOM:")
                                     else op in BUILTIN_OPS)]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


# --- the emulated run (parent side) ---------------------------------------------------------------

def emulate(artifact: Path, ctx: Context, host_outputs, litert_builtin: bool = True) -> dict:
    """Run the artifact in TFLite Micro in a child process; compare its outputs with LiteRT's (or with
    `host_outputs` alone when LiteRT cannot load it, as for a compressed model)."""
    from . import runner
    run_dir = Path(tempfile.mkdtemp(prefix="tflm-", dir=ctx.workdir))
    runner.save_stacked(run_dir / "in.npz", "in", ctx.evalset.samples)
    cmd = [sys.executable, "-m", "edgekit.tflm", str(artifact), "--inputs", str(run_dir / "in.npz"),
           "--outputs", str(run_dir / "out.npz"), "--json", str(run_dir / "result.json"), "--log", str(run_dir / "tflm.log")]
    try:
        proc = children.run(cmd, TIMEOUT_S)  # its own process group: ended with edgekit on a signal
    except subprocess.TimeoutExpired:
        return {"runs": False, "reason": f"TFLite Micro did not finish in {TIMEOUT_S} s", "how": HOW}
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
    if proc.returncode != 0 or not result.get("runs"):
        log = (run_dir / "tflm.log").read_text(errors="replace") if (run_dir / "tflm.log").is_file() else ""
        return {"runs": False, "how": HOW, "reason": result.get("reason") or _crash_reason(proc, log)}
    outputs = runner.load_stacked(run_dir / "out.npz", "out")
    figures = {"runs": True, "how": HOW, "version": result["version"], "arena": result["arena"],
               "parity_vs_litert": parity(host_outputs, outputs), "_outputs": outputs}
    if litert_builtin:
        builtin = litert_builtin_outputs(artifact, ctx.evalset.samples)
        figures["parity_vs_litert_builtin"] = parity(builtin, outputs)
        if not figures["parity_vs_litert_builtin"]["bit_exact"]:
            first = next(i for i, (b, o) in enumerate(zip(builtin, outputs))
                         if any(not np.array_equal(np.ravel(x), np.ravel(y)) for x, y in zip(b, o)))
            figures["parity_vs_litert_builtin"]["first_divergence"] = first_divergence(
                artifact, ctx.evalset.samples[first], run_dir, first)
    return figures


def first_divergence(artifact: Path, sample: list[np.ndarray], run_dir: Path, index: int) -> dict:
    """On one sample whose outputs differ: the first op (in execution order) whose output tensor
    differs between TFLite Micro and LiteRT's built-in kernels, and by how many integer steps."""
    from . import runner
    runner.save_stacked(run_dir / "one.npz", "in", [sample])
    cmd = [sys.executable, "-m", "edgekit.tflm", str(artifact), "--inputs", str(run_dir / "one.npz"),
           "--dump", str(run_dir / "tensors.npz"), "--json", str(run_dir / "dump.json"), "--log", str(run_dir / "dump.log")]
    if children.run(cmd, TIMEOUT_S).returncode != 0:
        return {"sample": index, "op": None, "reason": "TFLite Micro could not keep every tensor"}
    theirs = np.load(run_dir / "tensors.npz")
    ours = litert_builtin_tensors(artifact, sample)
    for step, (op, outs, names) in enumerate(read_model(artifact)["sequence"]):
        for t, name in zip(outs, names):
            a, b = ours.get(t), theirs[f"t{t}"] if f"t{t}" in theirs else None
            if a is not None and b is not None and a.size == b.size and not np.array_equal(a.ravel(), b.ravel()):
                diff = int(np.max(np.abs(a.astype(np.int64).ravel() - b.astype(np.int64).ravel()))) \
                    if np.issubdtype(a.dtype, np.integer) else float(np.max(np.abs(a.ravel() - b.ravel())))
                return {"sample": index, "op_index": step, "op": op, "tensor": name, "max_diff": diff,
                        "elements_differing": int(np.sum(a.ravel() != b.ravel())), "elements": int(a.size)}
    return {"sample": index, "op": None, "reason": "no intermediate tensor differs"}


def litert_builtin_tensors(artifact: Path, sample: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Every tensor after one inference in LiteRT's built-in kernels (no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from .backends.tflite import _quant_params
    from .runner import quantize_inputs
    it = Interpreter(model_path=str(artifact), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    details = it.get_input_details()

    class _Shape:
        inputs = [(d["name"], tuple(d["shape"]), np.dtype(d["dtype"]).name) for d in details]
        input_quant = [_quant_params(d) for d in details]
    for d, a in zip(details, quantize_inputs(_Shape, sample)):
        it.set_tensor(d["index"], np.asarray(a, dtype=d["dtype"]).reshape(d["shape"]))
    it.invoke()
    tensors = {}
    for t in it.get_tensor_details():
        try:
            tensors[t["index"]] = np.array(it.get_tensor(t["index"]))
        except ValueError:  # tensors without data
            pass
    return tensors


def litert_builtin_outputs(artifact: Path, samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """LiteRT's own built-in kernels without its default XNNPACK delegate, on the same quantized inputs."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from .backends.tflite import _quant_params
    from .runner import dequantize_outputs, quantize_inputs

    class _Session:
        def __init__(self):
            self.it = Interpreter(model_path=str(artifact),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            self.it.allocate_tensors()
            self.ins, self.outs = self.it.get_input_details(), self.it.get_output_details()
            self.inputs = [(d["name"], tuple(d["shape"]), np.dtype(d["dtype"]).name) for d in self.ins]
            self.input_quant = [_quant_params(d) for d in self.ins]
            self.output_quant = [_quant_params(d) for d in self.outs]

        def run(self, arrays):
            for d, a in zip(self.ins, arrays):
                self.it.set_tensor(d["index"], np.asarray(a, dtype=d["dtype"]).reshape(d["shape"]))
            self.it.invoke()
            return [self.it.get_tensor(d["index"]) for d in self.outs]

    session = _Session()
    return [dequantize_outputs(session, session.run(quantize_inputs(session, s))) for s in samples]


def _crash_reason(proc: subprocess.CompletedProcess, log: str) -> str:
    lines = [ln for ln in (log + "\n" + proc.stderr).splitlines() if ln.strip()]
    last = (lines or ["no message"])[-1][:200]
    if proc.returncode < 0:
        import signal
        return f"TFLite Micro died with {signal.Signals(-proc.returncode).name} while loading or running the model " \
               f"(last message: {last}); a kernel's internal check failed"
    return f"TFLite Micro failed: {last}"


def parity(reference: list[list[np.ndarray]], actual: list[list[np.ndarray]]) -> dict:
    """TFLM outputs against LiteRT's on the same (quantized) inputs: bit-exact or how far apart."""
    diffs = [float(np.max(np.abs(np.asarray(a, np.float64).reshape(np.shape(r)) - np.asarray(r, np.float64))))
             if np.size(r) and np.size(r) == np.size(a) else (0.0 if np.size(r) == np.size(a) else float("inf"))
             for ref, act in zip(reference, actual) for r, a in zip(ref, act)]
    differing = sum(any(np.size(r) != np.size(a) or not np.array_equal(np.ravel(r), np.ravel(a))
                        for r, a in zip(ref, act)) for ref, act in zip(reference, actual))
    top1 = [int(np.argmax(ref[0])) == int(np.argmax(act[0])) for ref, act in zip(reference, actual)]
    return {"samples": len(reference), "bit_exact": differing == 0, "samples_differing": differing,
            "max_abs_diff": max(diffs, default=0.0), "top1_agreement": float(np.mean(top1)) if top1 else 1.0,
            "how": HOW}


# --- verdict -------------------------------------------------------------------------------------

def arena_to_allocate(used_bytes: int) -> int:
    """TFLM's advice: arena_used_bytes() + 16 when the buffer may not be 16-byte aligned; rounded up to 16."""
    return -(-(used_bytes + ARENA_ALIGNMENT) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT


def _lifetime_estimate(ctx: Context, model: dict) -> dict | None:
    """Peak activations from tensor lifetimes (the cost model's figure), for the report beside the arena."""
    from . import costmodel
    from .backends import onnx as onnx_backend
    from .errors import ConversionError
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


# --- TFLite Micro weight compression (LUT) -----------------------------------------------------

def compressed(artifact: Path, ctx: Context, figures: dict, out_dir: Path) -> dict:
    """LUT-compress the weights where it applies and saves bytes; the compressed model's flash size,
    arena and parity with the uncompressed one, all in TFLite Micro."""
    work = Path(tempfile.mkdtemp(prefix="tflm-compress-", dir=ctx.workdir))
    path = work / "model.tflite"
    cmd = [sys.executable, "-m", "edgekit.tflm", str(artifact), "--compress", str(path), "--json", str(work / "c.json"),
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


def compression_plan(model_bytes: bytes) -> tuple[list, list[dict]]:
    """Child side: a LUT spec for every constant int8/int16 weight tensor whose distinct values per
    channel (quantized axis) fit in fewer than 8 bits and whose tables cost less than the bits saved."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor, spec
    model = model_editor.read(model_bytes)
    specs, decisions = [], []
    for g, graph in enumerate(model.subgraphs):
        for i, t in enumerate(graph.tensors):
            data = t.buffer.data if t.buffer is not None else None
            if not data or t.dtype not in (9, 7) or len(t.shape) < 2:  # int8 / int16 weights
                continue
            dtype = np.int8 if t.dtype == 9 else np.int16
            values = np.frombuffer(bytes(data), dtype).reshape(t.shape)
            axis = t.quantization.axis if t.quantization is not None else None
            channels = values.reshape(1, -1) if axis is None else np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
            distinct = max(len(np.unique(c)) for c in channels)
            bits = max(1, int(np.ceil(np.log2(distinct))))
            saved = values.size * (8 * values.itemsize - bits) // 8 - channels.shape[0] * (2 ** bits) * values.itemsize
            entry = {"tensor": _text(t.name), "shape": list(map(int, t.shape)), "distinct_per_channel": int(distinct),
                     "index_bits": bits}
            if bits >= 8 * values.itemsize or saved <= 16:
                entry["compressed"] = False
                entry["why"] = (f"up to {distinct} distinct values per channel: {bits}-bit indices plus value tables "
                                f"save nothing (cluster the weights to 16 values or fewer first)")
            else:
                entry["compressed"] = True
                mode = spec.PerTensor() if axis is None else spec.PerChannel(axis)
                specs.append(spec.Tensor(g, i, [spec.LookUpTableCompression(bits, mode)]))
            decisions.append(entry)
    return specs, decisions


def compress_model(model_path: Path, out: Path) -> dict:
    import warnings

    from tflite_micro.tensorflow.lite.micro.compression import compress
    specs, decisions = compression_plan(model_path.read_bytes())
    if not specs:
        return {"compressed": False, "tensors": decisions,
                "reason": "no weight tensor has few enough distinct values per channel for LUT compression to save "
                          "bytes (cluster the weights first)"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.write_bytes(bytes(compress(model_path.read_bytes(), specs)))
    return {"compressed": True, "tensors": decisions}


# --- the C artifact ------------------------------------------------------------------------------

def write_c_artifact(artifact: Path, model: dict, arena: dict | None, out_dir: Path,
                     symbol: str = "g_model_data") -> dict:
    """model_data.cc (the flatbuffer as an aligned array) and model_data.h (its length, I/O and arena)."""
    data = Path(artifact).read_bytes()
    alloc = arena_to_allocate(arena["used_bytes"]) if arena else None
    alloc_text = f"{alloc:,} B (measured {arena['used_bytes']:,} B + {ARENA_ALIGNMENT}, rounded up to " \
                 f"{ARENA_ALIGNMENT}; {HOW})" if arena else "unknown (TFLite Micro did not run the model)"
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12)]
    cc = [f"// Generated by edgekit from {artifact.name} ({len(data)} bytes). Do not edit.",
          '#include "model_data.h"', "",
          "// TFLite Micro reads the flatbuffer in place: keep it 16-byte aligned.",
          f"alignas(16) const unsigned char {symbol}[] = {{", *[f"    {r}," for r in rows], "};",
          f"const unsigned int {symbol}_len = {len(data)};", ""]
    h = [f"// Generated by edgekit from {artifact.name}. Do not edit.", "#ifndef EDGEKIT_MODEL_DATA_H_",
         "#define EDGEKIT_MODEL_DATA_H_", "",
         f"// The {artifact.name} flatbuffer ({len(data)} bytes), 16-byte aligned: pass it to tflite::GetModel().",
         f"extern const unsigned char {symbol}[];", f"extern const unsigned int {symbol}_len;", ""]
    if alloc:
        h += [f"// Tensor arena to allocate (alignas(16) uint8_t arena[...]): {alloc_text}.",
              f"constexpr unsigned int kTensorArenaSize = {alloc};", ""]
    else:
        h += [f"// Tensor arena: {alloc_text}; measure it before flashing.", ""]
    h += _resolver_lines(model["ops"])
    h += _io_lines("Input", model["inputs"]) + _io_lines("Output", model["outputs"])
    h += ["#endif  // EDGEKIT_MODEL_DATA_H_", ""]
    (out_dir / "model_data.cc").write_text("\n".join(cc))
    (out_dir / "model_data.h").write_text("\n".join(h))
    return {"files": [f"{out_dir.name}/model_data.cc", f"{out_dir.name}/model_data.h"], "symbol": symbol,
            "tflite_bytes": len(data), "arena_alloc_bytes": alloc, "arena_alloc_text": alloc_text}


RESOLVER_NAMES = {"UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM", "CUMSUM": "CumSum",
                  "BATCH_MATMUL": "BatchMatMul", "PADV2": "PadV2", "CUSTOM:TFLite_Detection_PostProcess": "DetectionPostprocess",
                  "CUSTOM:CIRCULAR_BUFFER": "CircularBuffer", "CUSTOM:ethos-u": "EthosU"}


def resolver_method(op: str) -> str | None:
    """The tflite::MicroMutableOpResolver method that registers `op` (CONV_2D -> AddConv2D)."""
    if op in RESOLVER_NAMES:
        return "Add" + RESOLVER_NAMES[op]
    if op.startswith("CUSTOM:Signal"):
        return "Add" + op.removeprefix("CUSTOM:Signal")
    if op.startswith("CUSTOM:"):
        return "AddDecode" if op == "CUSTOM:TFLM_DECODE" else None
    return "Add" + "".join(part if part[:1].isdigit() else part.capitalize() for part in op.split("_"))


def _resolver_lines(ops: list[str]) -> list[str]:
    methods = [m for m in map(resolver_method, ops) if m]
    custom = [op for op in ops if resolver_method(op) is None]
    lines = [f"// The {len(ops)} op(s) this model uses; register exactly these in the firmware:",
             f"//   static tflite::MicroMutableOpResolver<{len(ops)}> resolver;",
             *[f"//   resolver.{m}();" for m in methods]]
    lines += [f"//   {op}: a custom op, register its kernel with resolver.AddCustom()" for op in custom]
    return lines + [f"constexpr int kModelOpCount = {len(ops)};", ""]


def _io_lines(kind: str, tensors: list[dict]) -> list[str]:
    lines = [f"constexpr int kModel{kind}Count = {len(tensors)};"]
    for i, t in enumerate(tensors):
        prefix = f"kModel{kind}{i}"
        quant = f"scale {t['scale'][0]!r}, zero point {t['zero_point'][0]}" if t["scale"] else "not quantized"
        lines += [f"// {kind} {i} '{t['name']}': {t['dtype']} {t['shape']}, {quant}",
                  f"constexpr int {prefix}Type = {TFLITE_TYPES.get(t['dtype'], 0)};  // TfLiteType: {t['dtype']}",
                  f"constexpr int {prefix}Rank = {len(t['shape'])};",
                  f"constexpr int {prefix}Dims[] = {{{', '.join(map(str, t['shape'])) or '0'}}};"]
        if t["scale"]:
            lines += [f"constexpr float {prefix}Scale = {float(t['scale'][0])!r}f;",
                      f"constexpr int {prefix}ZeroPoint = {t['zero_point'][0]};"]
    return lines + [""]


def compile_c_artifact(c_dir: Path, flags: list[str], workdir: Path) -> dict:
    """Compile model_data.cc for the profile's core and read the model array's section size."""
    gxx, size_tool = shutil.which("arm-none-eabi-g++"), shutil.which("arm-none-eabi-size")
    cpu = next((f.split("=", 1)[1] for f in flags if f.startswith("-mcpu=")), "arm")
    if not gxx or not size_tool:
        return {"ok": False, "cpu": cpu, "reason": "arm-none-eabi-g++ is not installed (Debian gcc-arm-none-eabi; "
                                                   "`make setup` installs it)"}
    obj = Path(tempfile.mkdtemp(prefix="mcu-", dir=workdir)) / "model_data.o"
    cmd = [gxx, *flags, "-std=c++17", "-Os", "-fdata-sections", "-ffunction-sections", "-fno-exceptions",
           "-fno-rtti", "-Wall", "-Werror", "-c", str(c_dir / "model_data.cc"), "-o", str(obj)]
    proc = children.run(cmd, TIMEOUT_S)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["no output"]
        return {"ok": False, "cpu": cpu, "reason": f"arm-none-eabi-g++ failed: {lines[0][:300]}"}
    sections = section_sizes(size_tool, obj)
    section = next((s for s in sections if s.endswith(".g_model_data")), None)
    if section is None:
        return {"ok": False, "cpu": cpu, "reason": f"no section for the model array in the object ({sorted(sections)})"}
    return {"ok": True, "cpu": cpu, "flags": flags, "section": section, "model_section_bytes": sections[section],
            "object_flash_bytes": sum(v for k, v in sections.items() if k.startswith((".text", ".rodata", ".data"))),
            "how": COMPILED}


def section_sizes(size_tool: str, obj: Path) -> dict[str, int]:
    """`arm-none-eabi-size -A` of an object file: {section: bytes}."""
    out = children.run([size_tool, "-A", str(obj)], TIMEOUT_S).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


# --- the child process: numpy + tflite_micro only ------------------------------------------------

ALLOCATION = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
RECORD = re.compile(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+)")


def parse_allocations(text: str) -> dict:
    """The RecordingMicroAllocator report: total/head/tail bytes and each recorded kind."""
    sums = {k: int(v) for k, v in ALLOCATION.findall(text)}
    if "total" not in sums:
        raise ValueError("no allocation report")
    kinds = {name: {"bytes": int(used), "requested": int(req), "count": int(n)}
             for name, used, req, n in RECORD.findall(text)}
    return {"used_bytes": sums["total"], "head_bytes": sums.get("head", 0), "tail_bytes": sums.get("tail", 0),
            "records": kinds, "how": f"{HOW}, RecordingMicroAllocator"}


class _Stderr:
    """Capture what native code writes to file descriptor 2, in `log` (kept for the parent if the child dies)."""

    def __init__(self, log: Path):
        self.log = log

    def __enter__(self):
        sys.stderr.flush()
        self.file = open(self.log, "w+b")
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        self.text = self.file.read().decode(errors="replace")
        self.file.close()
        return False


class Session:
    """The TFLite Micro interpreter with the runner's session shape (inputs, input/output quantization)."""

    def __init__(self, model: bytes, arena_size: int, keep_tensors: bool = False):
        from tflite_micro.python.tflite_micro import runtime
        config = runtime.InterpreterConfig.kPreserveAllTensors if keep_tensors else \
            runtime.InterpreterConfig.kAllocationRecording
        self.interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena_size, intrepreter_config=config)
        self.inputs, self.input_quant, self.output_quant, self.outputs = [], [], [], 0
        for i in range(_count(self.interpreter.get_input_details)):
            d = self.interpreter.get_input_details(i)
            self.inputs.append((f"in{i}", tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name))
            self.input_quant.append(_quant(d))
        self.outputs = _count(self.interpreter.get_output_details)
        self.output_quant = [_quant(self.interpreter.get_output_details(i)) for i in range(self.outputs)]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for i, (array, (_, shape, dtype)) in enumerate(zip(arrays, self.inputs)):
            self.interpreter.set_input(np.asarray(array, dtype=dtype).reshape(shape), i)
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_output(i)) for i in range(self.outputs)]


def _count(details) -> int:
    n = 0
    while True:
        try:
            details(n)
        except Exception:  # the binding raises past the last index
            return n
        n += 1


def _quant(detail: dict):
    q = detail.get("quantization_parameters") or {}
    scales, zeros = list(q.get("scales", [])), list(q.get("zero_points", []))
    if scales and np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return float(scales[0]), int(zeros[0])
    return None


def dump_tensors(model_path: Path, inputs: Path, out: Path) -> dict:
    """Child side: one sample with every tensor kept (TFLM's kPreserveAllTensors), saved as t<index>."""
    from tflite_micro.python.tflite_micro import runtime

    from .runner import load_stacked, quantize_inputs
    data = model_path.read_bytes()
    session = Session(data, max(16 << 20, 10 * len(data)), keep_tensors=True)
    session.run(quantize_inputs(session, load_stacked(inputs)[0]))
    it = session.interpreter
    count = len(runtime.convert_bytearray_to_object(data).subgraphs[0].tensors)
    tensors = {}
    for i in range(count):
        try:
            t = it.GetTensor(i, 0)
        except Exception:  # tensors TFLM keeps no data for
            continue
        if t and t.get("tensor_data") is not None:
            tensors[f"t{i}"] = np.asarray(t["tensor_data"])
    np.savez(out, **tensors)
    return {"runs": True, "dumped": len(tensors)}


def probe(model_path: Path, inputs: Path | None, outputs: Path | None, log: Path) -> dict:
    """Child side: load in TFLM (growing the arena until it fits), run every sample, report the arena."""
    from importlib.metadata import version

    from .runner import dequantize_outputs, load_stacked, quantize_inputs, save_stacked
    model = model_path.read_bytes()
    arena_size = max(16 << 20, 10 * len(model))
    while True:
        with _Stderr(log) as err:
            try:
                session = Session(model, arena_size)
                break
            except (RuntimeError, ValueError):
                pass
        if "missing:" not in err.text or arena_size >= 2 << 30:
            return {"runs": False, "reason": _first_error(err.text)}
        arena_size *= 4
    samples = load_stacked(inputs) if inputs else [[np.zeros(s, d) for _, s, d in session.inputs]]
    results = []
    with _Stderr(log) as err:
        try:
            for sample in samples:
                results.append(dequantize_outputs(session, session.run(quantize_inputs(session, sample))))
        except RuntimeError:
            pass
    if len(results) < len(samples):
        return {"runs": False, "reason": _first_error(err.text, "invoke failed")}
    with _Stderr(log) as err:
        session.interpreter.print_allocations()
    if outputs:
        save_stacked(outputs, "out", results)
    return {"runs": True, "version": version("tflite-micro"), "arena": parse_allocations(err.text),
            "arena_size_given": arena_size, "samples": len(samples)}


NODE_FAILED = re.compile(r"Node (\S+) \(number (\d+)\) failed to (prepare|invoke)")


def _first_error(log: str, fallback: str = "could not load the model") -> str:
    """One line: the kernel that refused a node (and its check) when TFLM says so, else its first messages."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        node = NODE_FAILED.search(line)
        if node:
            check = re.sub(r"^\S+\.cc:\d+ ", "", lines[i - 1]) if i else "no message"
            return (f"TFLite Micro's {node.group(1)} kernel refused node {node.group(2)} at {node.group(3)} "
                    f"({check[:200]}): this op is there but not for these types or options")
    return "TFLite Micro: " + ("; ".join(lines[:2])[:300] if lines else fallback)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.tflm", description="Run a .tflite in TFLite Micro.")
    parser.add_argument("model", type=Path)
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--outputs", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log", type=Path, help="where TFLite Micro's own messages go (default: a temp file)")
    parser.add_argument("--compress", type=Path, metavar="OUT", help="write a LUT-compressed copy instead of running")
    parser.add_argument("--dump", type=Path, metavar="NPZ", help="run the first input sample keeping every tensor; "
                                                                 "save them as t<index>")
    args = parser.parse_args(argv)
    log = args.log or Path(tempfile.mkstemp(prefix="tflm-", suffix=".log")[1])
    try:
        with _Stderr(log):
            result = compress_model(args.model, args.compress) if args.compress else \
                dump_tensors(args.model, args.inputs, args.dump) if args.dump else None
        result = result or probe(args.model, args.inputs, args.outputs, log)
    except ImportError:
        result = {"runs": False, "reason": "tflite-micro is not installed (pip install 'edgekit-toolchain[mcu]')"}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0 if result.get("runs", result.get("compressed")) else 1


if __name__ == "__main__":
    sys.exit(main())
