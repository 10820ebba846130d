"""Per-op time in one format for all three runtimes (`edgekit bench ARTIFACT --ops`, `convert --ops`).

Runs inside the light runner: numpy, the standard library and the one runtime (plus LiteRT's own
flatbuffer schema for .tflite). Each runtime's own per-op figures:
- onnxruntime: the session profiler's JSON (`enable_profiling`; the `*_kernel_time` events), on the
  graph as onnxruntime runs it (after its graph optimizations, the same level as timing);
- OpenVINO: the CPU plugin's performance counters (`PERF_COUNT`), on the runtime model it compiled;
- LiteRT: its Python interpreter has no op profiler (the C++ benchmark tool's --enable_op_profiling is
  not in the wheel), so each op is cut into a single-op model (accel.graph) and timed alone on the
  inputs it sees in a full run; the sum is not the whole graph's latency (XNNPACK fuses across ops).

Result: {"how", "runs", "total_ms", "ops": [{"name", "type", "ms", "precision"}], "by_type": [...],
"slowest": [...]}; `compare(fp32, other)` puts a pair side by side.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

SLOWEST = 10
ADDED_KINDS = {"QUANTIZE", "DEQUANTIZE", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "FakeQuantize",
               "TRANSPOSE", "Transpose", "Reorder", "Convert"}


def profile(model: Path, threads: int, sample: list[np.ndarray], runs: int) -> dict:
    """Per-op time of one artifact over `runs` inferences on `sample` (inputs already in the model's dtypes)."""
    suffix = Path(model).suffix.lower()
    collect = {".tflite": _tflite, ".onnx": _onnx, ".xml": _openvino}.get(suffix)
    if collect is None:
        raise ValueError(f"no per-op profiler for {suffix} artifacts")
    ops, how = collect(Path(model), threads, sample, max(1, runs))
    return summarize(ops, how, runs)


def summarize(ops: list[dict], how: str, runs: int) -> dict:
    total = sum(o["ms"] for o in ops)
    by_type: dict[str, dict] = {}
    for o in ops:
        row = by_type.setdefault(o["type"], {"type": o["type"], "count": 0, "ms": 0.0})
        row["count"] += 1
        row["ms"] += o["ms"]
    share = (lambda ms: ms / total if total > 0 else 0.0)
    types = sorted(by_type.values(), key=lambda r: (-r["ms"], r["type"]))
    return {"how": how, "runs": runs, "total_ms": total, "ops": ops,
            "by_type": [{**r, "share": share(r["ms"])} for r in types],
            "slowest": [{**o, "share": share(o["ms"])} for o in sorted(ops, key=lambda o: -o["ms"])[:SLOWEST]]}


def _tflite(model: Path, threads: int, sample: list[np.ndarray], runs: int) -> tuple[list[dict], str]:
    from ai_edge_litert.interpreter import Interpreter

    from . import tflite_file as graph
    full = Interpreter(model_path=str(model), num_threads=threads, experimental_preserve_all_tensors=True)
    full.allocate_tensors()
    for detail, array in zip(full.get_input_details(), sample):
        full.set_tensor(detail["index"], np.asarray(array, dtype=detail["dtype"]))
    full.invoke()
    graph_tensors, graph_ops, _, _ = graph.load(model)
    details = full._get_ops_details()[:len(graph_ops)]  # a delegate's own node comes after the model's ops
    tensors = {t["index"]: t for t in full.get_tensor_details()}
    constant = {i for i, t in enumerate(graph_tensors) if t.data is not None}
    cuts = graph.single_op_models(model, [d["index"] for d in details])
    ops = []
    for d in details:
        single = Interpreter(model_content=cuts[d["index"]], num_threads=threads)
        single.allocate_tensors()
        feeds = [i for i in d["inputs"] if i >= 0 and i not in constant]
        for detail, index in zip(single.get_input_details(), feeds):
            single.set_tensor(detail["index"], full.get_tensor(index))
        ops.append({"name": tensors[d["outputs"][0]]["name"] if len(d["outputs"]) else f"op{d['index']}",
                    "type": d["op_name"], "ms": _median_ms(single.invoke, runs),
                    "precision": _dtype_name(tensors[d["inputs"][0]]["dtype"]) if len(d["inputs"]) else "-"})
    return ops, "LiteRT interpreter, each op timed alone as a single-op model (LiteRT's Python API has no op " \
                "profiler); sums exclude cross-op fusion"


def _median_ms(invoke, runs: int) -> float:
    invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        invoke()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times))


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def _onnx(model: Path, threads: int, sample: list[np.ndarray], runs: int) -> tuple[list[dict], str]:
    import onnxruntime as ort
    with tempfile.TemporaryDirectory(prefix="edgekit-ops-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        feeds = dict(zip([i.name for i in session.get_inputs()], sample))
        for _ in range(runs + 1):  # the first is a warm-up, left out below
            session.run(None, feeds)
        events = _kernel_events(Path(session.end_profiling()))
    per_node: dict[str, dict] = {}
    for e in events:
        node = per_node.setdefault(e["name"].removesuffix("_kernel_time"),
                                   {"type": e["args"]["op_name"], "us": [], "precision": _ort_precision(e["args"])})
        node["us"].append(e["dur"])
    ops = [{"name": name, "type": n["type"], "ms": float(np.median(n["us"][-runs:])) / 1000, "precision": n["precision"]}
           for name, n in per_node.items()]
    return ops, "onnxruntime session profiler (enable_profiling), nodes of the graph as optimized by onnxruntime"


def _kernel_events(path: Path) -> list[dict]:
    events = json.loads(path.read_text())
    return [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]


def _ort_precision(args: dict) -> str:
    shapes = args.get("input_type_shape") or [{}]
    return next(iter(shapes[0]), "-") if shapes else "-"


def _openvino(model: Path, threads: int, sample: list[np.ndarray], runs: int) -> tuple[list[dict], str]:
    import openvino as ov

    from .backends.openvino import precision_hint
    core = ov.Core()
    read = core.read_model(str(model))
    hint = precision_hint(read)
    compiled = core.compile_model(read, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "PERF_COUNT": True,
                                                 "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    request.infer(list(sample))
    times: dict[str, dict] = {}
    for _ in range(runs):
        request.infer(list(sample))
        for info in request.get_profiling_info():  # NOT_RUN ops (in-place reshapes) are listed, at 0 ms
            if info.node_type in _OV_NOT_OPS or info.exec_type == "undef":  # undef: fused into another op
                continue
            exec_type = "not run" if str(info.status).endswith("NOT_RUN") else info.exec_type
            row = times.setdefault(info.node_name, {"type": info.node_type, "us": [], "exec": exec_type})
            row["us"].append(info.real_time.total_seconds() * 1e6)
    ops = [{"name": name, "type": t["type"], "ms": float(np.median(t["us"])) / 1000, "precision": _ov_precision(t["exec"])}
           for name, t in times.items()]
    return ops, f"OpenVINO CPU performance counters (PERF_COUNT), runtime model, inference precision {hint}"


_OV_NOT_OPS = {"Parameter", "Result", "Constant", "Input", "Output", "Const"}  # graph I/O and weights


def _ov_precision(exec_type: str) -> str:
    return exec_type.rsplit("_", 1)[-1].lower() if "_" in exec_type else exec_type


def compare(base: dict, other: dict) -> dict:
    """fp32 (base) and a quantized/native artifact side by side: per op type the time in each and the change,
    op types only the other has (quantize/dequantize, transposes, reorders), and its compute ops left in float."""
    a = {r["type"]: r for r in base["by_type"]}
    b = {r["type"]: r for r in other["by_type"]}
    rows = []
    for kind in sorted(set(a) | set(b), key=lambda k: -max(a.get(k, {}).get("ms", 0), b.get(k, {}).get("ms", 0))):
        ra, rb = a.get(kind), b.get(kind)
        change = rb["ms"] / ra["ms"] if ra and rb and ra["ms"] > 0 else None
        rows.append({"type": kind, "base_count": ra["count"] if ra else 0, "base_ms": ra["ms"] if ra else 0.0,
                     "count": rb["count"] if rb else 0, "ms": rb["ms"] if rb else 0.0, "change": change,
                     "verdict": "added" if not ra else "gone" if not rb else
                     "faster" if change is not None and change < 0.9 else "slower" if change and change > 1.1 else "same"})
    stayed = {}
    for o in other["ops"]:
        if o["type"] not in ADDED_KINDS and o["precision"].startswith(("float", "fp32", "f32")):
            row = stayed.setdefault(o["type"], {"type": o["type"], "count": 0, "ms": 0.0})
            row["count"] += 1
            row["ms"] += o["ms"]
    return {"total_ms": [base["total_ms"], other["total_ms"]], "by_type": rows,
            "added": [r["type"] for r in rows if r["verdict"] == "added"],
            "layout_or_quantize_ms": sum(r["ms"] for r in rows if r["type"] in ADDED_KINDS),
            "stayed_float": sorted(stayed.values(), key=lambda r: -r["ms"])}


def type_rows(prof: dict) -> list[tuple[str, ...]]:
    return [(r["type"], str(r["count"]), f"{r['ms']:.4g}", f"{r['share']:.1%}") for r in prof["by_type"]]


def slowest_rows(prof: dict) -> list[tuple[str, ...]]:
    return [(o["name"], o["type"], o["precision"], f"{o['ms']:.4g}", f"{o['share']:.1%}") for o in prof["slowest"]]


def compare_rows(cmp: dict) -> list[tuple[str, ...]]:
    return [(r["type"], f"{r['base_count']} / {r['count']}", f"{r['base_ms']:.4g}", f"{r['ms']:.4g}",
             f"{r['change']:.2f}x" if r["change"] is not None else "-", r["verdict"]) for r in cmp["by_type"]]


TYPE_COLUMNS = ("op type", "count", "ms", "share")
SLOWEST_COLUMNS = ("op", "type", "precision", "ms", "share")
COMPARE_COLUMNS = ("op type", "count fp32 / other", "fp32 ms", "other ms", "change", "")
