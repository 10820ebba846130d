"""ONNX recurrent models to TFLite: an LSTM as PyTorch exports it (optional inputs empty or absent),
and the same after onnxruntime's quantize_dynamic (DynamicQuantizeLSTM, MatMulInteger). Tiny models made here."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import run_cli
from conftest import tree_digest

HIDDEN, FEATURES, STEPS = 6, 8, 5


def lstm_onnx(path):
    """x [1, STEPS, FEATURES] -> bidirectional LSTM (sequence_lens given as '', no initial states) ->
    MatMul to 7 classes per step: the recogniser head of a CRNN."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def weights(*shape):
        return rng.normal(0, 0.4, shape).astype(np.float32)

    inits = [numpy_helper.from_array(weights(2, 4 * HIDDEN, FEATURES), "W"),
             numpy_helper.from_array(weights(2, 4 * HIDDEN, HIDDEN), "R"),
             numpy_helper.from_array(weights(2, 8 * HIDDEN), "B"),
             numpy_helper.from_array(weights(2 * HIDDEN, 7), "head"),
             numpy_helper.from_array(np.array([STEPS, 1, 2 * HIDDEN], np.int64), "steps_shape")]
    nodes = [helper.make_node("Transpose", ["x"], ["time_major"], name="to_time_major", perm=[1, 0, 2]),
             helper.make_node("LSTM", ["time_major", "W", "R", "B", ""], ["y"], name="lstm@0",
                              direction="bidirectional", hidden_size=HIDDEN),
             helper.make_node("Transpose", ["y"], ["y_t"], name="dirs_last", perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["y_t", "steps_shape"], ["features"], name="flatten"),
             helper.make_node("MatMul", ["features", "head"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "crnn_head",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEPS, FEATURES])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [STEPS, 1, 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def dynamic_int8_onnx(tmp_path, per_channel=False):
    from onnxruntime.quantization import quantize_dynamic
    path = tmp_path / "lstm_int8.onnx"
    quantize_dynamic(str(lstm_onnx(tmp_path / "lstm.onnx")), str(path), per_channel=per_channel)
    return path


def _convert_tflite(capsys, model, out, *more):
    result = run_cli(capsys, "convert", model, "--format", "tflite", "--runs", "1", "--warmup", "0",
                     "--out", out, *more)
    assert result.code == 0, result.err
    return json.loads((out / "report.json").read_text())


def test_bidirectional_lstm_with_empty_optional_inputs_converts_to_tflite(tmp_path, capsys):
    model = lstm_onnx(tmp_path / "lstm.onnx")
    before = tree_digest(model)
    report = _convert_tflite(capsys, model, tmp_path / "out", "--target", "cpu-int8", "--calib", "random")
    fp32, int8 = report["artifacts"]
    assert fp32["status"] == "ok" and fp32["fidelity"]["verified"], fp32
    assert any(n.startswith("onnx2tf recipe 1/") for n in fp32["notes"]), fp32["notes"]
    # TF's int8 calibration crashes the process on onnx2tf's rolled loop: the quantizer reads the unrolled graph
    assert int8["status"] == "ok" and int8["precision"] == "int8", int8
    assert any("unrolled over the fixed sequence for the quantizer" in n for n in int8["notes"]), int8["notes"]
    assert tree_digest(model) == before, "the input model was modified"


@pytest.mark.parametrize("per_channel", [False, True])  # LSTM scales per direction [D] or per column [D, 4H]
def test_dynamic_quantization_ops_are_rewritten_to_float_ops(tmp_path, per_channel):
    """Structure (no contrib or integer ops left) and values (the float model's, within int8 weight error)."""
    import onnx
    import onnxruntime as ort
    from edgekit.backends import _onnx_rewrite
    quantized = onnx.load(str(dynamic_int8_onnx(tmp_path, per_channel)))
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= {n.op_type for n in quantized.graph.node}
    notes = _onnx_rewrite.dequantize_dynamic(quantized)
    assert notes and "1 DynamicQuantizeLSTM" in notes[0] and "1 MatMulInteger" in notes[0], notes
    ops = {n.op_type for n in quantized.graph.node}
    assert not ops & {"DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeLinear"}, ops
    assert all(n.domain in ("", "ai.onnx") for n in quantized.graph.node)
    x = np.random.default_rng(1).random((1, STEPS, FEATURES), dtype=np.float32)

    def run(model_bytes):
        return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = run((tmp_path / "lstm.onnx").read_bytes())
    got = run(quantized.SerializeToString())
    snr = 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2))
    assert snr > 30, snr


def test_dynamically_quantized_lstm_converts_to_tflite(tmp_path, capsys):
    model = dynamic_int8_onnx(tmp_path)
    before = tree_digest(model)
    report = _convert_tflite(capsys, model, tmp_path / "out")
    artifact = report["artifacts"][0]
    assert artifact["status"] == "ok", artifact
    assert any("quantizes activations at run time" in w for w in report["warnings"]), report["warnings"]
    assert any("dynamic-quantization ops replaced by float ops" in n for n in artifact["notes"]), artifact["notes"]
    # compared with onnxruntime running the quantized model, which also quantizes activations per run
    assert artifact["fidelity"]["outputs"][0]["snr_db"] > 25, artifact["fidelity"]
    # the source's own run-time quantization noise sets the bar: the 'dynamic' tolerance, not fp32's
    assert artifact["fidelity"]["tolerance"]["min_snr_db"] == 20.0 and artifact["fidelity"]["verified"]
    assert tree_digest(model) == before, "the input model was modified"


def test_an_artifact_is_judged_at_the_looser_of_its_own_and_its_sources_tolerance():
    from edgekit import measure
    assert measure.judged_as("fp32") == "fp32"
    assert measure.judged_as("fp32", "dynamic") == measure.judged_as("fp16", "dynamic") == "dynamic"
    assert measure.judged_as("int8", "dynamic") == "int8"


def test_contrib_matmuls_become_matmul_and_add_on_dequantized_weights():
    """DynamicQuantizeMatMul and MatMulIntegerToFloat (what onnxruntime's optimizer fuses MatMulInteger
    into) with per-column int8 weights: float MatMul + Add computing the dequantized product exactly."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from edgekit.backends import _onnx_rewrite
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 127, (4, 3)).astype(np.int8)
    scale, zero, bias = np.array([0.01, 0.02, 0.03], np.float32), np.array([1, 0, -2], np.int8), np.float32([.5, -1, 2])
    inits = [numpy_helper.from_array(a, n) for a, n in ((weight, "w"), (scale, "ws"), (zero, "wz"), (bias, "bias"))]
    nodes = [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "ws", "wz", "bias"], ["y1"], name="dqmm",
                              domain="com.microsoft"),
             helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
             helper.make_node("MatMulIntegerToFloat", ["xq", "w", "xs", "ws", "xz", "wz", "bias"], ["y2"],
                              name="mitf", domain="com.microsoft")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("y1", "y2")]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x_info], outputs, inits),
                              opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    notes = _onnx_rewrite.dequantize_dynamic(model)
    assert "1 DynamicQuantizeMatMul, 1 MatMulIntegerToFloat" in notes[0], notes
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add", "MatMul", "Add"]
    x = rng.random((2, 4), dtype=np.float32)
    want = x @ ((weight.astype(np.float32) - zero) * scale) + bias
    for got in ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x}):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_onnx2tf_child_stops_at_the_float16_copy_nobody_reads():
    """onnx2tf converts to TFLite twice, float32 then float16 (14-15 s of each ~50 s recipe run on ddddocr's
    CRNN, its unrolled copy for the quantizer included): in the child, the float32 conversion runs, the
    float16 one raises at once, and TF's converter factories are put back afterwards."""
    import tensorflow as tf
    from edgekit.backends import _onnx2tf
    before = {name: vars(tf.lite.TFLiteConverter).get(name) for name in ("from_keras_model", "from_concrete_functions")}
    fn = tf.function(lambda x: tf.nn.relu(x) * 2.0, input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    with _onnx2tf._float32_only():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
        assert converter.convert()[4:8] == b"TFL3"
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        with pytest.raises(_onnx2tf._Float32Written):
            converter.convert()
    assert {name: vars(tf.lite.TFLiteConverter).get(name) for name in before} == before


def test_an_int8_target_on_a_model_already_quantized_names_the_sources_own_integer_ops(tmp_path, capsys):
    """A dynamic-int8 source (DynamicQuantizeLSTM, MatMulInteger): the static quantizer adds QDQ only around the
    float ops left, and the notes name the integer ops that were the source's own; a graph the quantizer adds
    nothing to is named as the source graph (ddddocr_crnn_int8), not as QDQ."""
    import onnx

    from edgekit.backends import _onnx_quantize
    model = dynamic_int8_onnx(tmp_path)
    result = run_cli(capsys, "convert", model, "--target", "cpu-int8", "--format", "onnx", "--calib", "random",
                     "--runs", "1", "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    notes = next(a for a in report["artifacts"] if a["precision"] != "fp32")["notes"]
    assert any("own integer ops" in n and "DynamicQuantizeLSTM, DynamicQuantizeLinear, MatMulInteger" in n
               for n in notes), notes
    source = onnx.load(str(model))
    assert not _onnx_quantize._added_quantization(source, source)
    assert _onnx_quantize._added_quantization(source, onnx.load(str(tmp_path / "out" / "model.onnx")))
