"""The TFLite Micro child process (`python -m edgekit.probes.mcu.child MODEL --inputs in.npz --outputs
out.npz --json r.json`): numpy and tflite_micro only. TFLite Micro prints its allocation report and its
errors on the C stderr; the child captures that file descriptor and parses it. Also the child side of
LUT weight compression (--compress) and of the per-tensor dump (--dump)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from .ops import HOW, _text


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

    from ...runner import load_stacked, quantize_inputs
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

    from ...runner import dequantize_outputs, load_stacked, quantize_inputs, save_stacked
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
    parser = argparse.ArgumentParser(prog="python -m edgekit.probes.mcu.child", description="Run a .tflite in TFLite Micro.")
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
