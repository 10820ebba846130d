"""An int8 accelerator emulator: runs a full-integer .tflite graph with integer-only numpy
arithmetic, per an accelerator profile's rules, and a cycle model for the same graph.

Arithmetic (what the profile's `[accelerator]` table declares):
* products of int8 values accumulate in `accumulator_bits`-wide registers, saturating;
* requantization is either TFLite's fixed-point multiplier + rounding shift
  (`requant = "fixed-point"`, gemmlowp's SaturatingRoundingDoublingHighMul then
  RoundingDivideByPOT: bit-exact with TFLite's reference kernels) or a plain arithmetic shift
  with round-half-up (`requant = "shift"`, for power-of-two scales);
* the fused activation clamps to the quantized range.
Ops outside the profile's `ops` list run as a CPU fallback partition with TFLite's arithmetic
(numpy fixed-point kernels, or LiteRT's own kernel for the op alone), and are listed in the report.

Modules: spec (the profile table), fixedpoint (TFLite's integer arithmetic), graph (.tflite
reading and single-op cuts, no TensorFlow), kernels (one numpy kernel per op), emulator,
cycles (the cycle model), reference (op-by-op check with LiteRT's reference kernels),
figures (the report entry, run in an isolated child). The power-of-two scale rewrite is a pass:
passes/pow2.py. Only numpy is imported here: targets.py reads AcceleratorSpec.
"""
from .cycles import cycles, layer_compute, mac_count
from .emulator import Emulator, dequantize_output, emulate_samples, quantize_input
from .fixedpoint import quantize_multiplier, requantize
from .graph import Op, Tensor, load
from .kernels import KERNELS
from .reference import compare as compare_with_reference
from .spec import EMULATED_OPS, MAC_OPS, AcceleratorSpec

__all__ = ["AcceleratorSpec", "EMULATED_OPS", "MAC_OPS", "Emulator", "KERNELS", "Op", "Tensor", "compare_with_reference",
           "cycles", "dequantize_output", "emulate_samples", "layer_compute", "load", "mac_count", "quantize_input",
           "quantize_multiplier", "requantize"]
