"""Latency and memory estimates for a device that is not here: a per-op roofline.

For each compute node of the model's ONNX form (from `analysis.node_stats`):

    compute_s = MACs / (macs_per_cycle(precision) x clock x efficiency x effective_cores)
    memory_s  = bytes moved (inputs + outputs + weights, at the precision's element size) / bandwidth
    node_s    = max(compute_s, memory_s) + op_overhead

    effective_cores = 1 + (min(threads, cores) - 1) x parallel_efficiency

Peak activation memory follows tensor lifetimes in graph order: a tensor lives from the node
that makes it to its last reader (graph inputs from the start, outputs to the end), as a
simple arena without in-place reuse would hold them. Model size is checked against flash and
peak activations against RAM. Every figure here is *estimated*; docs/COSTMODEL.md explains the
constants and how they were checked against published measurements.
"""
from __future__ import annotations

from pathlib import Path

from .measure import ESTIMATED, how

HOW = how(ESTIMATED, "per-op roofline cost model, docs/COSTMODEL.md")
# bytes per element (activations, weights) and which MAC rate applies, per precision
PRECISION = {"fp32": (4, 4, "fp32"), "fp16": (2, 2, "fp32"), "dynamic": (4, 1, "fp32"),
             "int8": (1, 1, "int8"), "int8-io": (1, 1, "int8"), "int16x8": (2, 1, "int16")}


def has_device_model(device) -> bool:
    return device.clock_ghz > 0 and device.fp32_macs_per_cycle > 0


def estimate(nodes: list[dict], device, precision: str, threads: int, model_bytes: int | None = None) -> dict:
    """Estimated latency (total and per layer), peak activation memory, and budget checks."""
    act_bytes, weight_bytes, rate = PRECISION[precision]
    macs_per_cycle = {"fp32": device.fp32_macs_per_cycle, "int8": device.int8_macs_per_cycle,
                      "int16": device.int8_macs_per_cycle / 2}[rate] or device.fp32_macs_per_cycle
    cores = 1 + (min(threads, device.cores) - 1) * device.parallel_efficiency
    macs_per_s = macs_per_cycle * device.clock_ghz * 1e9 * device.compute_efficiency * cores
    bytes_per_s = device.memory_gbps * 1e9
    layers: dict[str, float] = {}
    total_s, bound = 0.0, {"compute": 0, "memory": 0}
    for n in nodes:
        moved = act_bytes * (sum(n["inputs"].values()) + sum(n["outputs"].values())) + weight_bytes * n["params"]
        compute_s, memory_s = n["macs"] / macs_per_s, moved / bytes_per_s
        seconds = max(compute_s, memory_s) + device.op_overhead_us * 1e-6
        bound["compute" if compute_s >= memory_s else "memory"] += 1
        layers[n["layer"]] = layers.get(n["layer"], 0.0) + seconds
        total_s += seconds
    peak = peak_activation_elements(nodes) * act_bytes
    size = model_bytes if model_bytes is not None else weight_bytes * sum(n["params"] for n in nodes)
    return {
        "latency_ms": total_s * 1e3, "threads": threads, "precision": precision,
        "layers_ms": {k: v * 1e3 for k, v in sorted(layers.items(), key=lambda kv: -kv[1])[:8]},
        "ops_compute_bound": bound["compute"], "ops_memory_bound": bound["memory"],
        "peak_activation_bytes": peak, "ram_budget_bytes": device.ram_kib * 1024 or None,
        "fits_ram": peak <= device.ram_kib * 1024 if device.ram_kib else None,
        "model_bytes": size, "flash_budget_bytes": device.flash_kib * 1024 or None,
        "fits_flash": size <= device.flash_kib * 1024 if device.flash_kib else None,
        "device": device.description or device.arch, "how": HOW,
    }


def peak_activation_elements(nodes: list[dict]) -> int:
    """Largest sum of live tensor elements over the graph's execution order."""
    last_use: dict[str, int] = {}
    size: dict[str, int] = {}
    for step, n in enumerate(nodes):
        for t, elements in n["inputs"].items():
            last_use[t] = step
            size.setdefault(t, elements)
        for t, elements in n["outputs"].items():
            size[t] = elements
            last_use.setdefault(t, len(nodes))  # never read again: a graph output
    produced = {t for n in nodes for t in n["outputs"]}
    live = {t for t in size if t not in produced}  # graph inputs are there from the start
    peak = 0
    for step, n in enumerate(nodes):
        live |= set(n["outputs"])
        peak = max(peak, sum(size[t] for t in live))
        live = {t for t in live if last_use[t] > step}
    return peak


def for_model(onnx_path: Path, device, precision: str, threads: int, model_bytes: int | None = None) -> dict:
    from .analysis import node_stats
    return estimate(node_stats(onnx_path), device, precision, threads, model_bytes)
