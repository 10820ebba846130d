"""What an int8 accelerator profile declares (`[accelerator]` in a target's TOML)."""
from __future__ import annotations

from dataclasses import dataclass

from ..schema import option

# Ops the accelerator may be declared to run: each has an integer-only numpy kernel (kernels.py).
EMULATED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MAX_POOL_2D", "AVERAGE_POOL_2D",
                "MEAN", "RESHAPE", "PAD", "CONCATENATION", "SOFTMAX", "QUANTIZE", "DEQUANTIZE")
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class AcceleratorSpec:
    mac_rows: int = option(16, "MAC array rows (output channels computed in parallel).")
    mac_cols: int = option(16, "MAC array columns (input channels / reduction lanes in parallel).")
    clock_mhz: float = option(200.0, "Accelerator clock.")
    accumulator_bits: int = option(32, "Accumulator width; sums saturate at its limits.")
    requant: str = option("fixed-point", "fixed-point (int32 multiplier + shift, as TFLite) or shift (power-of-two "
                                         "scales, shift only).", choices=("fixed-point", "shift"))
    scales: str = option("per-channel", "Weight scales per output channel or one per tensor.",
                         choices=("per-channel", "per-tensor"))
    onchip_kib: int = option(256, "On-chip buffer for weights and activations.")
    dram_gbps: float = option(1.0, "DRAM bandwidth for what does not fit on chip.")
    reduction: str = option("flattened", "What the array's columns reduce over: `flattened` (kernel window x input "
                                         "channels, im2col style) or `channels` (input channels only, one kernel tap "
                                         "per cycle, as Ethos-U does: a depthwise conv then uses one column).",
                            choices=("flattened", "channels"))
    elementwise_per_cycle: float = option(0.0, "Output elements per cycle of elementwise ops (ADD, MUL, activations, "
                                               "copies); 0 = one per column (`mac_cols`).")
    fuse_activations: bool = option(False, "Activation ops (RELU*, HARD_SWISH, LOGISTIC, TANH) run in the output "
                                           "stage of the op before them and PAD folds into the next conv's "
                                           "padding, at no cost of their own (as Ethos-U and Vela do).")
    compute_efficiency: float = option(1.0, "Fraction of the array's peak MAC rate a layer reaches (the cycle model "
                                            "divides its compute cycles by it); 1 = the ideal array. Calibrated "
                                            "for Ethos-U against Vela (docs/ACCELERATOR.md).")
    dram_efficiency: float = option(1.0, "Fraction of `dram_gbps` (and of `onchip_gbps`) a layer's transfers reach; "
                                         "1 = the full bandwidth.")
    onchip_gbps: float = option(0.0, "Bandwidth of the on-chip buffer: a layer's activations held on chip take at "
                                     "least their bytes over it; 0 = not a limit (only DRAM traffic counts).")
    activations_offchip: bool = option(False, "Feature maps live off chip (Vela's Dedicated_Sram modes keep the "
                                              "tensor arena in DRAM): every layer's input and output cross the DRAM "
                                              "bus, not only what does not fit on chip.")
    layer_overhead_cycles: int = option(0, "Fixed cycles per layer on the accelerator (command setup, pipeline fill "
                                           "and drain), added to each layer's compute- or memory-bound cycles.")
    ops: list[str] = option(["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MAX_POOL_2D",
                             "AVERAGE_POOL_2D", "RESHAPE", "PAD", "CONCATENATION"],
                            "Ops the accelerator runs; any other op falls back to the CPU.", choices=EMULATED_OPS)
