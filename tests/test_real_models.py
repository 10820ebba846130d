"""What real third-party models bring: awkward names, dynamic-shape exports, captured tensors,
broken quantization, and outputs that are not class scores. Each on a tiny model made here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clihelp import run_cli
from conftest import tree_digest


def dynamic_hw_onnx(path, softmax_name="Softmax@0"):
    """Conv over a [1,3,H,W] input (H, W dynamic), then Shape -> Gather -> Concat -> Reshape to [1,4,H*W]
    and a softmax: the shape subgraph a PyTorch export with dynamic axes leaves behind."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.weight"),
             numpy_helper.from_array(np.array([0, 1], np.int64), "idx01"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["onnx::Relu_1"], name="/conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["onnx::Relu_1"], ["y"], name="/relu/Relu"),
             helper.make_node("Shape", ["y"], ["shape"], name="/Shape"),
             helper.make_node("Gather", ["shape", "idx01"], ["nc"], name="/Gather", axis=0),
             helper.make_node("Concat", ["nc", "minus1"], ["newshape"], name="/Concat", axis=0),
             helper.make_node("Reshape", ["y", "newshape"], ["z"], name="/Reshape"),
             helper.make_node("Softmax", ["z"], ["probs"], name=softmax_name, axis=-1)]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_to_tflite_with_rejected_names_and_a_shape_subgraph(tmp_path, capsys):
    model = dynamic_hw_onnx(tmp_path / "dyn.onnx")
    before = tree_digest(model)
    result = run_cli(capsys, "convert", model, "--format", "tflite", "--input-shape", "1,3,16,12",
                     "--runs", "2", "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    artifact = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"][0]
    assert artifact["status"] == "ok", artifact
    assert artifact["fidelity"]["verified"], artifact["fidelity"]
    assert any(n.startswith("onnx2tf recipe 1/") for n in artifact["notes"]), artifact["notes"]
    assert tree_digest(model) == before, "the input model was modified"


def test_onnx2tf_failure_names_the_node_and_op(tmp_path):
    from edgekit.backends import _onnx2tf
    log = "\n".join([
        "ERROR: The trace log is below.", "Traceback (most recent call last):", '  File "x.py", line 1, in f',
        "ValueError: Cannot reshape a tensor with 5248 elements to shape [1,4,16,64] (4096 elements) for "
        "'{{node tf.reshape}} = Reshape[T=DT_FLOAT, Tshape=DT_INT32](x, y)' with input shapes: [1,41,128], [4].",
        "", "ERROR: input_onnx_file_path: /w/model.onnx", "ERROR: onnx_op_name: _Reshape_1",
        "ERROR: Read this and deal with it. https://github.com/PINTO0309/onnx2tf#parameter-replacement",
        'ValueError: Exception encountered when calling layer "tf.reshape" (type TFOpLambda).', ""])
    (tmp_path / "names.json").write_text(json.dumps({"nodes": {"_Reshape_1": ["/Reshape_1", "Reshape"]}}))
    reason = _onnx2tf.explain(log, tmp_path)
    assert reason.startswith("at ONNX node '/Reshape_1' (op Reshape): Cannot reshape a tensor with 5248"), reason


def test_non_standard_onnx_op_fails_at_once_with_its_node(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("Gelu", ["x"], ["y"], name="fused/0", domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "ms.onnx"))
    result = run_cli(capsys, "convert", tmp_path / "ms.onnx", "--format", "tflite", "--runs", "1",
                     "--out", tmp_path / "out")
    artifact = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"][0]
    assert artifact["status"] == "failed"
    assert "'fused/0' (op Gelu, domain com.microsoft)" in artifact["reason"], artifact["reason"]


def _boxes(rng, n=8):
    return [[rng.random((1, 100, 6)).astype(np.float32)] for _ in range(n)]


def test_detector_output_with_good_top1_but_poor_snr_is_a_mismatch():
    from edgekit import measure
    rng = np.random.default_rng(0)
    reference = _boxes(rng)
    for s in reference:
        s[0][0, 0, 0] = 50.0  # a dominant element: the flat argmax ("top-1") survives any noise below
    actual = [[s[0] + rng.normal(0, 0.5, s[0].shape).astype(np.float32)] for s in reference]
    fid = measure.fidelity(reference, actual, "int8")
    assert fid["top1_agreement"] == 1.0
    assert fid["outputs"][0]["kind"] == "values" and fid["outputs"][0]["snr_db"] < 15
    assert not fid["verified"] and fid["judged_by"] == ["SNR"]


def test_detector_output_with_poor_top1_but_good_snr_is_verified():
    from edgekit import measure
    rng = np.random.default_rng(1)
    reference = [[np.full((1, 100, 6), 0.5, np.float32)] for _ in range(8)]  # ties everywhere: argmax is fragile
    actual = [[s[0] + rng.normal(0, 1e-3, s[0].shape).astype(np.float32)] for s in reference]
    fid = measure.fidelity(reference, actual, "int8")
    assert fid["top1_agreement"] < 0.5
    assert fid["outputs"][0]["snr_db"] > 40 and fid["verified"]


def test_probability_vectors_are_judged_by_top1_unless_told_otherwise():
    from edgekit import measure
    rng = np.random.default_rng(2)
    logits = [rng.normal(0, 3, (1, 10)) for _ in range(16)]
    reference = [[(np.exp(x) / np.exp(x).sum()).astype(np.float32)] for x in logits]
    actual = [[np.clip(s[0] + rng.normal(0, 0.02, s[0].shape), 0, None).astype(np.float32)] for s in reference]
    auto = measure.fidelity(reference, actual, "int8")
    assert auto["outputs"][0]["kind"] == "classes" and auto["judged_by"] == ["top-1 agreement and cosine"]
    forced = measure.fidelity(reference, actual, "int8", output_kind="values")
    assert forced["outputs"][0]["kind"] == "values" and forced["judged_by"] == ["SNR"]


def test_dynamic_dims_come_from_the_data_when_no_input_shape_is_given(tmp_path, capsys):
    model = dynamic_hw_onnx(tmp_path / "dyn.onnx", softmax_name="softmax")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).random((6, 3, 8, 10), dtype=np.float32))
    result = run_cli(capsys, "convert", model, "--format", "onnx", "--data", tmp_path / "data.npz",
                     "--runs", "1", "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["inputs"][0]["shape"] == [1, 3, 8, 10]
    assert any("fixed to (1, 3, 8, 10) from the sample shape of --data" in w for w in report["warnings"])
    assert report["artifacts"][0]["fidelity"]["verified"]


def test_int8_onnx_retries_when_the_first_quantized_model_does_not_load(make_model, tmp_path, capsys, monkeypatch):
    """The first quantize_static result is made invalid (as onnxruntime's Conv+BN fusion with per-channel
    QDQ does on some real graphs): the artifact is checked, rebuilt with safer settings, and says so."""
    from onnxruntime import quantization
    real, calls = quantization.quantize_static, []

    def first_breaks(model_input, model_output, *args, **kwargs):
        calls.append(kwargs.get("per_channel"))
        real(model_input, model_output, *args, **kwargs)
        if len(calls) == 1:
            Path(model_output).write_bytes(Path(model_output).read_bytes()[:200])

    monkeypatch.setattr(quantization, "quantize_static", first_breaks)
    result = run_cli(capsys, "convert", make_model("onnx"), "--target", "cpu-int8", "--format", "onnx",
                     "--calib", "random", "--runs", "1", "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    artifact = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"][1]
    assert artifact["status"] == "ok" and artifact["precision"] == "int8", artifact
    assert len(calls) == 2
    retried = next(n for n in artifact["notes"] if n.startswith("retried:"))
    assert "onnxruntime cannot load the quantized model" in retried and "without pre-process optimisation" in retried


def test_savedmodel_with_a_captured_tensor_gives_artifacts_with_exactly_its_inputs(tmp_path, capsys):
    import onnx
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
            self.offset = tf.constant(np.arange(3, dtype=np.float32))  # captured by the function, not a variable

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.matmul(x, self.w) + self.offset}

    module = Affine()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.__call__})
    before = tree_digest(tmp_path / "sm")
    result = run_cli(capsys, "convert", tmp_path / "sm", "--runs", "1", "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for artifact in report["artifacts"]:
        assert artifact["status"] == "ok" and artifact["fidelity"]["verified"], artifact
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["x"]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 4]
    assert tree_digest(tmp_path / "sm") == before


def test_erfc_left_by_tf2onnx_is_rewritten_and_unknown_ops_are_named():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from edgekit.backends import _onnx_export as onnx_backend
    from edgekit.errors import ConversionError

    def model(op):
        node = helper.make_node(op, ["x"], ["y"], name=f"gelu/{op}")
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    fixed = onnx_backend._complete(onnx, model("Erfc"))
    x = np.linspace(-2, 2, 5).astype(np.float32)
    y = ort.InferenceSession(fixed.SerializeToString()).run(None, {"x": x})[0]
    from math import erfc
    assert np.allclose(y, [erfc(v) for v in x], atol=1e-6)
    with pytest.raises(ConversionError, match="TensorFlow op Bucketize .node 'gelu/Bucketize'"):
        onnx_backend._complete(onnx, model("Bucketize"))


def test_openvino_failure_reason_is_the_line_that_names_the_op(tmp_path):
    """OpenVINO leads with a source location ("Check 'false' failed at src/...cpp:151:"); the reason
    edgekit reports is the line after it that names the op."""
    import onnx
    from onnx import TensorProto, helper
    import openvino as ov
    from edgekit.backends.openvino import _reason
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Erfc", ["x"], ["y"], name="gelu/Erfc")], "g", [x], [y])
    onnx.save(helper.make_model(graph), tmp_path / "erfc.onnx")
    with pytest.raises(Exception) as caught:
        ov.convert_model(str(tmp_path / "erfc.onnx"))
    assert "cpp:" in str(caught.value).splitlines()[0]
    assert "cpp" not in _reason(caught.value) and "Erfc" in _reason(caught.value)


def test_int8_onnx_of_an_opset11_export_with_weights_in_constant_nodes(tmp_path, capsys):
    """paddle2onnx-style export: opset 11, every weight a Constant node. The int8 artifact has int8
    weights (not float weights wrapped in Q/DQ), loads at the first attempt (per-channel needs opset 13:
    the copy handed to the quantizer is lifted), and is smaller than the float model."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    nodes = [_constant("w1", rng.standard_normal((16, 3, 3, 3))), _constant("b1", rng.standard_normal(16)),
             _constant("w2", rng.standard_normal((16, 16, 3, 3)) * 0.1),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    model = _paddle_export(tmp_path / "paddle.onnx", nodes, 16)
    before = tree_digest(model)
    fp32, int8 = _int8_pair(capsys, model, "onnx", tmp_path / "out")
    assert int8["precision"] == "int8" and int8["status"] == "ok", int8
    assert not any(n.startswith("retried:") for n in int8["notes"]), int8["notes"]
    import onnx
    quantized = onnx.load(str(tmp_path / "out" / "model.onnx"))
    weights = {t.name: t.data_type for t in quantized.graph.initializer}
    conv_weights = [n.input[1] for n in quantized.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in quantized.graph.node for o in n.output}
    assert all(producers[w].op_type == "DequantizeLinear" for w in conv_weights)
    assert all(weights[producers[w].input[0]] == TensorProto.INT8 for w in conv_weights)
    assert int8["size"]["bytes"] < fp32["size"]["bytes"] / 2
    assert tree_digest(model) == before


def _constant(name: str, array):
    from onnx import helper, numpy_helper
    value = numpy_helper.from_array(np.asarray(array, np.float32), name)
    return helper.make_node("Constant", [], [name], name=f"p2o.helper.{name}", value=value)


def _paddle_export(path, nodes, channels: int):
    """Opset 11, [1,3,16,16] in, [1,channels,16,16] out: how paddle2onnx writes small CNNs."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph(nodes, "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 16, 16])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


def _int8_pair(capsys, model, fmt: str, out) -> tuple[dict, dict]:
    result = run_cli(capsys, "convert", model, "--format", fmt, "--target", "cpu-int8", "--calib", "random",
                     "--runs", "1", "--warmup", "0", "--out", out)
    assert result.code == 0, result.err
    return tuple(json.loads((out / "report.json").read_text())["artifacts"][:2])


def test_int8_tflite_whose_divisor_quantizes_to_zero_keeps_that_op_in_float(tmp_path, capsys):
    """x@W1 / (relu(x@W2) + 0.001): in int8 the divisor's 0.001 lands on the zero point and LiteRT's DIV
    aborts the invoke (`data[i] != zero_point`), as in a real byte classifier. The artifact is run
    once after quantization; the op and its inputs' producers are kept in float and the model rebuilt."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    w1, w2 = (tf.constant(rng.standard_normal((8, 8)).astype(np.float32)) for _ in range(2))
    module = tf.Module()
    module.serve = tf.function(lambda x: (x @ w1) / (tf.nn.relu(x @ w2) + 0.001),
                               input_signature=[tf.TensorSpec([1, 8], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "ratio"), signatures=module.serve)
    before = tree_digest(tmp_path / "ratio")
    result = run_cli(capsys, "convert", tmp_path / "ratio", "--target", "cpu-int8", "--format", "tflite",
                     "--calib", "random", "--runs", "1", "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    int8 = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"][1]
    assert int8["status"] == "ok" and int8["fidelity"]["verified"], int8
    kept = next(n for n in int8["notes"] if n.startswith("kept in float after the int8 model failed"))
    assert "DIV" in kept and "zero_point" in kept, kept
    assert tree_digest(tmp_path / "ratio") == before


def test_onnx_to_tflite_with_scalars_in_constant_nodes(tmp_path, capsys):
    """paddle2onnx's hard-swish: x * Clip(x + Constant(3.0), Constant(0), Constant(6)) / Constant(6),
    every scalar a Constant node: onnx2tf made `x + 3.0` a bare Python float before the pre-pass."""
    from onnx import helper
    rng = np.random.default_rng(0)
    nodes = [_constant("w", rng.standard_normal((8, 3, 3, 3))), _constant("scale", [1.5]), _constant("three", 3.0),
             _constant("zero", 0.0), _constant("six", 6.0),
             helper.make_node("Conv", ["x", "w"], ["c"], name="p2o.Conv.0", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["scale", "c"], ["m"], name="p2o.Mul.1"),
             helper.make_node("Add", ["m", "three"], ["a"], name="p2o.Add.4"),
             helper.make_node("Clip", ["a", "zero", "six"], ["k"], name="p2o.Clip.0"),
             helper.make_node("Mul", ["m", "k"], ["h"], name="p2o.Mul.2"),
             helper.make_node("Div", ["h", "six"], ["y"], name="p2o.Div.0")]
    model = _paddle_export(tmp_path / "hardswish.onnx", nodes, 8)
    before = tree_digest(model)
    fp32, int8 = _int8_pair(capsys, model, "tflite", tmp_path / "out")
    assert fp32["status"] == "ok" and fp32["fidelity"]["verified"], fp32
    assert int8["status"] == "ok" and int8["fidelity"]["verified"], int8
    # onnx2tf leaves the 4-D output NHWC; both artifacts give it back in the ONNX model's NCHW layout
    from ai_edge_litert.interpreter import Interpreter
    for artifact in (fp32, int8):
        details = Interpreter(model_path=str(tmp_path / "out" / artifact["file"])).get_output_details()
        assert [list(d["shape"]) for d in details] == [[1, 8, 16, 16]]
    assert tree_digest(model) == before


def test_onnx_to_tflite_with_a_slice_that_keeps_everything_after_a_conv(tmp_path, capsys):
    """tf2onnx's export of `conv(x)[..., :1]` (jax2tf/TF models, e.g. a byte classifier): a Slice over the
    size-1 W axis of a Conv output keeps every element, and onnx2tf sliced the channels instead."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    big = np.iinfo(np.int32).max
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4, 3, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "starts"),
             numpy_helper.from_array(np.array([big, big, big, 1], np.int64), "ends"),
             numpy_helper.from_array(np.array([0, 1, 2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([3], np.int64), "last"),
             numpy_helper.from_array(rng.standard_normal((1, 6, 1)).astype(np.float32), "bias")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="Conv_0/Conv2D", kernel_shape=[3, 1]),
             helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["s"], name="Conv_0/strided_slice_2"),
             helper.make_node("Squeeze", ["s", "last"], ["q"], name="Conv_0/squeeze"),
             helper.make_node("Add", ["q", "bias"], ["y"], name="Conv_0/AddV2")]
    graph = helper.make_graph(nodes, "jax2tf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 14])], inits)
    model = tmp_path / "slice.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    result = run_cli(capsys, "convert", model, "--format", "tflite", "--runs", "1", "--warmup", "0",
                     "--out", tmp_path / "out")
    assert result.code == 0, result.err
    artifact = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"][0]
    assert artifact["status"] == "ok" and artifact["fidelity"]["verified"], artifact


def test_int8_onnx_of_convs_that_share_one_bias_tensor(tmp_path, capsys):
    """tf2onnx names tensors t0, t1, ... and gives equal constants one tensor (a zero bias read by many
    Convs). onnxruntime's quantizer copies a shared bias as `t2` -> `t20`/`t21`, a name an activation
    already has: "shared mode is not supported for weight" or "Duplicate definition of name". Each
    Conv gets its own copy first, and the per-channel int8 model loads at the first attempt."""
    from onnx import helper
    rng = np.random.default_rng(0)
    nodes = [_constant("w1", rng.standard_normal((16, 3, 3, 3))), _constant("w2", rng.standard_normal((16, 16, 3, 3)) * 0.1),
             _constant("w3", rng.standard_normal((16, 16, 3, 3)) * 0.1), _constant("t2", np.zeros(16)),
             helper.make_node("Conv", ["x", "w1", "t2"], ["t20"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["t20"], ["t21"], name="relu1"),
             helper.make_node("Conv", ["t21", "w2", "t2"], ["t22"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["t22"], ["t23"], name="relu2"),
             helper.make_node("Conv", ["t23", "w3", "t2"], ["y"], name="conv3", pads=[1, 1, 1, 1])]
    model = _paddle_export(tmp_path / "shared.onnx", nodes, 16)
    before = tree_digest(model)
    _, int8 = _int8_pair(capsys, model, "onnx", tmp_path / "out")
    assert int8["precision"] == "int8" and int8["status"] == "ok", int8
    assert not any(n.startswith("retried:") for n in int8["notes"]), int8["notes"]
    assert tree_digest(model) == before
