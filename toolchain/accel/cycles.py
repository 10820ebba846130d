"""The cycle model: per-layer cycles on the MAC array (compute- or memory-bound), latency,
utilisation and DRAM traffic (docs/ACCELERATOR.md)."""
from __future__ import annotations

import math

import numpy as np

from .spec import MAC_OPS, AcceleratorSpec

HOW = "estimated (MAC-array cycle model, docs/ACCELERATOR.md)"
# with fuse_activations: applied in the output stage of the op before them, or (PAD) folded into the
# next conv's padding, at no cost of their own
FUSED = ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "HARD_SWISH", "LOGISTIC", "TANH", "PAD")


def cycles(emu, spec: AcceleratorSpec) -> dict:
    bytes_per_cycle = spec.dram_gbps * 1e9 / (spec.clock_mhz * 1e6) * spec.dram_efficiency
    onchip = spec.onchip_kib * 1024
    onchip_per_cycle = spec.onchip_gbps * 1e9 / (spec.clock_mhz * 1e6) * spec.dram_efficiency
    layers, total, macs_on, dram = [], 0, 0, 0
    for op, where in emu.placement():
        if where != "accelerator" or op.kind in ("RESHAPE",) or spec.fuse_activations and op.kind in FUSED:
            continue
        out = emu.t(op.outputs[0])
        compute, macs = layer_compute(emu, op, spec)
        compute = math.ceil(compute / spec.compute_efficiency)
        weights = int(sum(emu.t(i).data.nbytes for i in op.inputs[1:] if i >= 0 and emu.t(i).data is not None))
        acts = sum(int(np.prod(emu.t(i).shape)) for i in op.inputs if i >= 0 and emu.t(i).data is None) + \
            int(np.prod(out.shape))  # every non-constant input (both operands of an ADD) and the output
        fits = weights + acts <= onchip
        tiles = 1 if fits else math.ceil(acts / max(onchip - weights, onchip // 2))
        traffic = weights * tiles + (acts if spec.activations_offchip or not fits else 0)
        memory = math.ceil(traffic / bytes_per_cycle)
        local = 0 if spec.activations_offchip or not onchip_per_cycle else math.ceil(acts / onchip_per_cycle)
        memory = max(memory, local)
        layer_cycles = max(compute, memory) + spec.layer_overhead_cycles
        layers.append({"op": op.kind, "output": out.name, "macs": macs, "compute_cycles": compute,
                       "memory_cycles": memory, "cycles": layer_cycles,
                       "bound": "compute" if compute >= memory else "memory", "fits_onchip": fits,
                       "dram_bytes": traffic, "weight_traffic_bytes": weights * tiles, "activation_bytes": acts})
        total += layer_cycles
        macs_on += macs
        dram += traffic
    return {"layers": layers, "cycles": total, "latency_ms": total / (spec.clock_mhz * 1e3),
            "mac_utilisation": macs_on / (total * spec.mac_rows * spec.mac_cols) if total else 0.0,
            "dram_bytes": dram, "how": HOW}


def layer_compute(emu, op, spec: AcceleratorSpec) -> tuple[int, int]:
    """(cycles, MACs) of one op on the array: R output channels x C reduction lanes per cycle."""
    out = emu.t(op.outputs[0]).shape
    if op.kind in MAC_OPS:
        w = emu.t(op.inputs[1]).shape
        taps = 1  # kernel taps taken one per cycle ("channels" reduction); "flattened" folds them into the lanes
        if op.kind == "FULLY_CONNECTED":
            pixels, out_channels, reduction = 1, w[0], w[1]
        elif op.kind == "CONV_2D":
            pixels, out_channels, reduction = out[1] * out[2], w[0], w[1] * w[2] * w[3]
            if spec.reduction == "channels":
                taps, reduction = w[1] * w[2], w[3]
        else:  # depthwise: each output channel reduces over its own kernel window only
            pixels, out_channels, reduction = out[1] * out[2], w[3], w[1] * w[2]
            if spec.reduction == "channels":
                taps, reduction = w[1] * w[2], 1
        return (int(pixels * math.ceil(out_channels / spec.mac_rows) * taps * math.ceil(reduction / spec.mac_cols)),
                int(pixels * out_channels * taps * reduction))
    elements = int(np.prod(out))  # pooling streams its windows through the lanes
    if op.kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return math.ceil(elements * op.options.filterHeight * op.options.filterWidth / spec.mac_cols), 0
    return math.ceil(elements / (spec.elementwise_per_cycle or spec.mac_cols)), 0  # elementwise, copies


def mac_count(emu, op, spec: AcceleratorSpec) -> int:
    return layer_compute(emu, op, spec)[1] if op.kind in MAC_OPS else 0
