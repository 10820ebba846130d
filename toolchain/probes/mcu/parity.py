"""The emulated run, parent side: the artifact in TFLite Micro in a child process (`python -m
edgekit.probes.mcu.child`), compared with LiteRT as benchmarked and with LiteRT's built-in kernels;
on a difference, the first op whose output tensor differs."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ... import children
from .ops import HOW, TIMEOUT_S, read_model

if TYPE_CHECKING:
    from ...context import Context

CHILD = [sys.executable, "-m", "edgekit.probes.mcu.child"]


def emulate(artifact: Path, ctx: Context, host_outputs, litert_builtin: bool = True) -> dict:
    """Run the artifact in TFLite Micro in a child process; compare its outputs with LiteRT's (or with
    `host_outputs` alone when LiteRT cannot load it, as for a compressed model)."""
    from ... import runner
    run_dir = Path(tempfile.mkdtemp(prefix="tflm-", dir=ctx.workdir))
    runner.save_stacked(run_dir / "in.npz", "in", ctx.evalset.samples)
    cmd = [*CHILD, str(artifact), "--inputs", str(run_dir / "in.npz"),
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
    from ... import runner
    runner.save_stacked(run_dir / "one.npz", "in", [sample])
    cmd = [*CHILD, str(artifact), "--inputs", str(run_dir / "one.npz"),
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

    from ...backends.tflite import _quant_params
    from ...runner import quantize_inputs
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

    from ...backends.tflite import _quant_params
    from ...runner import dequantize_outputs, quantize_inputs

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
