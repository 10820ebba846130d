"""The int8 accelerator emulator: bit-exact with LiteRT's reference kernels op by op on tiny
models covering every op, its arithmetic rules, power-of-two scales, and the cycle model by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import run_cli
from edgekit import accel, zoo
from edgekit.accel import reference
from edgekit.passes import pow2

ALL_OPS = accel.AcceleratorSpec(ops=list(accel.EMULATED_OPS))


def int8_tflite(build, path, shape=(8, 8, 3), per_channel=True, whole=None):
    """Full-integer (int8 I/O) TFLite of a Keras model built by `build(keras, layers, input)`
    (or `whole(keras)` for a complete model)."""
    import keras
    keras.utils.set_random_seed(0)
    if whole is None:
        inputs = keras.Input(shape)
        model = keras.Model(inputs, build(keras.layers, inputs))
    else:
        model = whole(keras)
    data = np.random.default_rng(0).random((32, *shape), dtype=np.float32) * 2 - 0.5
    zoo.full_integer_tflite(model, data, path, per_channel)
    return path, [data[i:i + 1] for i in range(8)]


MODELS = {
    "conv_fc": lambda L, x: L.Dense(5)(L.Flatten()(L.Conv2D(4, 3, strides=2)(L.Conv2D(6, 3, padding="same",
                                                                                      activation="relu")(x)))),
    "depthwise": lambda L, x: L.DepthwiseConv2D(3, strides=2, depth_multiplier=2)(
        L.DepthwiseConv2D(3, padding="same", activation="relu6")(L.Conv2D(6, 1)(x))),
    "add": lambda L, x: L.ReLU()(L.Add()([L.Conv2D(4, 3, padding="same")(x), L.Conv2D(4, 1)(x)])),
    "pools_concat": lambda L, x: L.Concatenate()([L.MaxPooling2D()(c := L.Conv2D(4, 3, padding="same")(x)),
                                                  L.AveragePooling2D(3, strides=2, padding="same")(c)]),
    "mean": lambda L, x: L.GlobalAveragePooling2D()(L.Conv2D(4, 3, padding="same")(x)),
    # SPLIT (two outputs) and MUL have no numpy kernel: CPU fallback in LiteRT, the rest compared
    "split_mul_fallback": lambda L, x: L.Multiply()(__import__("keras").ops.split(L.Conv2D(4, 3, padding="same")(x), 2,
                                                                                 axis=-1)),
    "pad_reshape_softmax": lambda L, x: L.Softmax()(L.Dense(3)(L.Reshape((4 * 5 * 5,))(
        L.MaxPooling2D()(L.ZeroPadding2D(1)(L.Conv2D(4, 3, padding="same")(x)))))),
}


@pytest.mark.parametrize("name", MODELS)
def test_bit_exact_with_tflite_reference_kernels(name, tmp_path):
    path, samples = int8_tflite(MODELS[name], tmp_path / f"{name}.tflite")
    emu = accel.Emulator(path, ALL_OPS)
    result = accel.compare_with_reference(emu, samples)
    assert result["bit_exact"], result["mismatched_ops"]
    assert result["ops_compared"] >= (1 if "fallback" in name else 2)


FPGA_INT8 = accel.AcceleratorSpec(ops=["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MAX_POOL_2D",
                                        "AVERAGE_POOL_2D", "MEAN", "RESHAPE", "PAD", "CONCATENATION"])
ARCHITECTURES = {  # real architectures (random weights) at reduced resolution and width
    # ReLU6, depthwise convs, inverted residual ADDs, global mean pooling
    "mobilenet_v2": (lambda keras: keras.applications.MobileNetV2(
        input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=10), {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN"},
        {"SOFTMAX"}),
    # hard-swish, squeeze-excite (MEAN with keepdims, MUL), residual ADDs
    "mobilenet_v3_small": (lambda keras: keras.applications.MobileNetV3Small(
        input_shape=(64, 64, 3), alpha=0.75, weights=None, classes=10), {"CONV_2D", "DEPTHWISE_CONV_2D", "MEAN"},
        {"HARD_SWISH", "MUL", "SOFTMAX"}),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_real_architectures_bit_exact_op_by_op(name, tmp_path):
    """Every op the emulator computes itself matches the reference kernel on the same inputs; ops it
    has no kernel for run in LiteRT as CPU fallback; the whole graph agrees with LiteRT bit for bit."""
    from ai_edge_litert.interpreter import Interpreter
    whole, accelerated, fallback = ARCHITECTURES[name]
    path, samples = int8_tflite(None, tmp_path / f"{name}.tflite", shape=(64, 64, 3), whole=whole)
    emu = accel.Emulator(path, FPGA_INT8)
    placement = emu.placement()
    assert accelerated <= {op.kind for op, where in placement if where == "accelerator"}
    assert {op.kind for op, where in placement if where == "cpu"} == fallback
    result = accel.compare_with_reference(emu, samples[:2])
    assert result["bit_exact"], result["mismatched_ops"]
    assert result["ops_compared"] >= 50 and not result["not_compared"]
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    x = accel.quantize_input(emu, emu.inputs[0], samples[2])
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    assert np.array_equal(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), emu.run([x])[0])
    estimate = accel.cycles(emu, FPGA_INT8)
    assert estimate["latency_ms"] > 0 and 0 < estimate["mac_utilisation"] <= 1


def test_a_crashing_reference_kernel_is_left_out_by_name(tmp_path, monkeypatch):
    """The reference check runs in a child; an op whose reference kernel aborts it is named and skipped,
    and the other ops are still compared."""
    path, _ = int8_tflite(MODELS["add"], tmp_path / "m.tflite")
    samples = tmp_path / "in.npz"
    np.savez(samples, in0=np.random.default_rng(1).random((3, 1, 8, 8, 3), dtype=np.float32))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('EDGEKIT_ISOLATE_STATUS'):\n"
        "    from ai_edge_litert import interpreter\n"
        "    real = interpreter.Interpreter.allocate_tensors\n"
        "    def allocate(self):\n"
        "        if [op['op_name'] for op in self._get_ops_details()] == ['ADD']:  # the single-op cut\n"
        "            os.abort()\n"
        "        return real(self)\n"
        "    interpreter.Interpreter.allocate_tensors = allocate\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    result = reference.check(path, FPGA_INT8, samples, 3)
    assert result["bit_exact"] and result["ops_compared"] >= 2
    [(op, why)] = result["not_compared"].items()
    assert op.startswith("ADD ") and why == "the reference kernel aborted in allocate_tensors (SIGABRT)"


def test_every_listed_op_is_covered_by_the_models(tmp_path):
    kinds = set()
    for name, build in MODELS.items():
        kinds |= {op.kind for op in accel.Emulator(int8_tflite(build, tmp_path / f"{name}.tflite")[0], ALL_OPS).ops}
    assert set(accel.EMULATED_OPS) - {"QUANTIZE", "DEQUANTIZE"} <= kinds


def test_tflite_fixed_point_arithmetic():
    assert accel.quantize_multiplier(0.5) == (1 << 30, 0)
    assert accel.quantize_multiplier(0.25) == (1 << 30, -1)
    significand, shift = accel.quantize_multiplier(0.0123)
    assert significand / (1 << 31) * 2 ** shift == pytest.approx(0.0123, rel=1e-9)
    # x * 0.5 exactly: gemmlowp's doubling high-mul nudges, then C division truncates: ties go up
    assert accel.requantize(np.array([3, -3, 5, -5]), 1 << 30, 0).tolist() == [2, -1, 3, -2]
    # x * 0.25 (multiplier 0.5, shift -1): RoundingDivideByPOT rounds ties away from zero
    assert accel.requantize(np.array([6, -6, 2, -2]), 1 << 30, -1).tolist() == [2, -2, 1, -1]
    # shift-only hardware rounds half up
    assert accel.requantize(np.array([3, -3]), 1 << 30, 0, "shift").tolist() == [2, -1]


def test_narrow_accumulators_saturate(tmp_path):
    path, samples = int8_tflite(MODELS["conv_fc"], tmp_path / "m.tflite")
    wide = accel.Emulator(path, ALL_OPS).run([accel.quantize_input(accel.Emulator(path, ALL_OPS), 0, samples[0])])
    narrow_spec = accel.AcceleratorSpec(ops=list(accel.EMULATED_OPS), accumulator_bits=10)
    narrow = accel.Emulator(path, narrow_spec)
    assert not np.array_equal(wide[0], narrow.run([accel.quantize_input(narrow, narrow.inputs[0], samples[0])])[0])


def test_power_of_two_scales_and_shift_requantization(tmp_path):
    path, samples = int8_tflite(MODELS["conv_fc"], tmp_path / "m.tflite", per_channel=False)
    shift_spec = accel.AcceleratorSpec(ops=list(accel.EMULATED_OPS), requant="shift", scales="per-tensor")
    emu = accel.Emulator(path, shift_spec)
    from edgekit.errors import ConversionError
    with pytest.raises(ConversionError, match="power-of-two"):
        emu.run([accel.quantize_input(emu, emu.inputs[0], samples[0])])
    assert pow2.rewrite(path, path) > 0
    emu = accel.Emulator(path, shift_spec)
    for t in emu.tensors:
        if t.scale.size and t.scale[0] > 0:
            assert np.all(np.log2(t.scale) == np.round(np.log2(t.scale))), t.name
    out = emu.run([accel.quantize_input(emu, emu.inputs[0], samples[0])])[0]
    assert out.dtype == np.int8 and out.shape == (1, 5)


def test_cycle_model_worked_example(tmp_path):
    """conv 3x3, 16 -> 32 channels, 8x8, same padding, on a 16x16 array at 100 MHz:
    64 output pixels x ceil(32/16) row passes x ceil(3*3*16/16) = 9 reduction passes = 1152 cycles;
    MACs = 64 x 32 x 144 = 294,912 = 1152 cycles x 256 lanes, so utilisation is 100%.
    Weights 32*3*3*16 = 4608 bytes + bias 128 bytes; DRAM at 0.8 GB/s = 8 bytes/cycle: 592 cycles < 1152."""
    path, _ = int8_tflite(lambda L, x: L.Conv2D(32, 3, padding="same")(x), tmp_path / "c.tflite", shape=(8, 8, 16))
    spec = accel.AcceleratorSpec(mac_rows=16, mac_cols=16, clock_mhz=100, onchip_kib=64, dram_gbps=0.8)
    estimate = accel.cycles(accel.Emulator(path, spec), spec)
    conv = estimate["layers"][0]
    assert conv["op"] == "CONV_2D" and conv["macs"] == 294_912 and conv["compute_cycles"] == 1152
    assert conv["dram_bytes"] == 4608 + 128 and conv["memory_cycles"] == 592 and conv["bound"] == "compute"
    assert estimate["mac_utilisation"] == pytest.approx(1.0)
    assert estimate["latency_ms"] == pytest.approx(1152 / 100e3)


@pytest.mark.parametrize("target", ["fpga-int8", "fpga-int8-pot"])
def test_fpga_report(target, small_keras, tiny_eval, capsys, tmp_path):
    result = run_cli(capsys, "convert", small_keras, "--target", target, "--data", tiny_eval, "--calib-samples", "8",
                     "--runs", "2", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    artifact = json.loads((tmp_path / "o" / "report.json").read_text())["artifacts"][1]
    acc = artifact["accelerator"]
    assert acc["coverage_macs"] == 1.0 and acc["fallback_ops"] == ["SOFTMAX"]
    assert acc["fidelity_vs_float"]["cosine"] > 0.99 and acc["fidelity_vs_tflite"]["top1_agreement"] > 0.9
    assert acc["estimate"]["latency_ms"] > 0 and 0 < acc["estimate"]["mac_utilisation"] <= 1
    assert acc["weights_fit_onchip"] and "accuracy" in acc
    assert acc["vs_tflite_reference"]["exact_by_design"] == (target == "fpga-int8")
    if target == "fpga-int8":
        assert acc["vs_tflite_reference"]["bit_exact"]
    else:
        assert any("powers of two" in n for n in artifact["notes"])
    assert "ACCELERATOR ESTIMATED" in result.out and "of MACs on the accelerator" in result.out
