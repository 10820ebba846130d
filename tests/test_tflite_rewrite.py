"""TFLite inputs that converters cannot read as they are: a MediaPipe-style custom op
(Convolution2DTransposeBias) and sparse constants decoded by DENSIFY. Each on a small model made here;
the pre-pass (backends/_tflite_rewrite.py) rewrites a copy, the artifacts are checked against the source."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from clihelp import run_cli
from conftest import tree_digest

STRIDE = 2


def _keras_tflite(layers, input_shape, sparse: bool = False) -> bytes:
    """A Keras model of `layers` with random weights (90% of the kernels zero when sparse) as .tflite;
    sparse: converted with TFLite's sparsity optimisation (weights stored sparse, DENSIFY ops)."""
    import keras
    import tensorflow as tf
    inputs = keras.Input(input_shape, batch_size=1)
    y = inputs
    for layer in layers:
        y = layer(y)
    model = keras.Model(inputs, y)
    rng = np.random.default_rng(0)
    keep = (lambda w: rng.random(w.shape) < 0.1) if sparse else (lambda w: 1)
    model.set_weights([(rng.standard_normal(w.shape) * (keep(w) if w.ndim > 1 else 1)).astype(np.float32)
                       for w in model.get_weights()])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def custom_op_tflite(path, custom_code="Convolution2DTransposeBias"):
    """Conv2D -> Conv2DTranspose (SAME, stride 2, kernel 3x4) from Keras, whose TRANSPOSE_CONV (+bias) is then
    replaced by MediaPipe's custom op: inputs (data, OHWI weights, bias), options TfLiteTransposeConvParams
    {padding=1 (SAME), stride_w, stride_h}. Sizes are even, where MediaPipe's SAME output size equals TF's."""
    import keras
    from edgekit.accel.graph import op_names, read_model, schema, write_model
    fb = schema()
    path.write_bytes(_keras_tflite([keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                                    keras.layers.Conv2DTranspose(2, (3, 4), strides=STRIDE, padding="same")], (6, 4, 3)))
    model = read_model(path)
    graph, names = model.subgraphs[0], op_names()
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
    code.customCode, code.version = custom_code.encode(), 1
    model.operatorCodes.append(code)
    for op in graph.operators:
        if names[model.operatorCodes[op.opcodeIndex].builtinCode] == "TRANSPOSE_CONV":
            _, weights, data, bias = op.inputs
            op.opcodeIndex = len(model.operatorCodes) - 1
            op.inputs = np.array([data, weights, bias], np.int32)
            op.builtinOptionsType, op.builtinOptions = 0, None
            op.customOptions = np.frombuffer(struct.pack("<iii", 1, STRIDE, STRIDE), np.uint8)
            weights_bias = [np.frombuffer(bytes(model.buffers[graph.tensors[i].buffer].data), np.float32)
                            .reshape(graph.tensors[i].shape) for i in (weights, bias)]
    write_model(model, path)
    return path, weights_bias


def transpose_conv_bias_reference(x, weights, bias, stride):
    """MediaPipe's kernel (transpose_conv_bias.cc) in numpy: each input pixel scatters weights x value
    into a full-size output; SAME crops max(0, f - (in-1) % s - 1) rows/columns, half (rounded down) before."""
    n, h, w, _ = x.shape
    out_c, f_h, f_w, _ = weights.shape
    full = np.zeros((n, stride * (h - 1) + f_h, stride * (w - 1) + f_w, out_c), np.float64)
    for fy in range(f_h):
        for fx in range(f_w):
            full[:, fy:fy + stride * h:stride, fx:fx + stride * w:stride] += np.einsum("nhwi,oi->nhwo", x, weights[:, fy, fx])
    pad_h, pad_w = (max(0, f - (size - 1) % stride - 1) for f, size in ((f_h, h), (f_w, w)))
    return full[:, pad_h // 2:full.shape[1] - (pad_h - pad_h // 2), pad_w // 2:full.shape[2] - (pad_w - pad_w // 2)] + bias


def test_rewritten_custom_transpose_conv_computes_mediapipes_op(tmp_path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from edgekit.backends._tflite_rewrite import rewrite
    model, (weights, bias) = custom_op_tflite(tmp_path / "seg.tflite")
    before = tree_digest(model)
    rewritten, notes = rewrite(model, tmp_path / "builtin.tflite")
    assert rewritten != model and "Convolution2DTransposeBias" in notes[0]
    assert tree_digest(model) == before
    # the intermediate (Conv2D + ReLU output) feeds the transposed conv: compare at that op
    interpreter = Interpreter(model_path=str(rewritten), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    x = np.random.default_rng(1).standard_normal((1, 6, 4, 3)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    ops = interpreter._get_ops_details()
    conv = next(op for op in ops if op["op_name"] == "TRANSPOSE_CONV")
    assert [op["op_name"] for op in ops] == ["CONV_2D", "TRANSPOSE_CONV", "ADD"]
    hidden = interpreter.get_tensor(conv["inputs"][2])
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    want = transpose_conv_bias_reference(hidden, weights, bias, STRIDE)
    assert got.shape == want.shape == (1, 12, 8, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_custom_op_model_converts_to_onnx_and_openvino_and_verifies(tmp_path, capsys):
    model, _ = custom_op_tflite(tmp_path / "seg.tflite")
    before = tree_digest(model)
    result = run_cli(capsys, "convert", model, "--format", "onnx", "--format", "openvino", "--runs", "1",
                     "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    artifacts = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"]
    assert {a["format"] for a in artifacts} == {"onnx", "openvino"}
    for artifact in artifacts:
        assert artifact["status"] == "ok", artifact
        assert artifact["fidelity"]["verified"], artifact["fidelity"]
        assert any("Convolution2DTransposeBias" in n for n in artifact["notes"]), artifact["notes"]
    assert tree_digest(model) == before, "the input model was modified"


def test_unknown_custom_op_is_named_with_its_tensor_and_the_fix(tmp_path):
    from edgekit.backends._tflite_rewrite import rewrite
    from edgekit.errors import ConversionError
    model, _ = custom_op_tflite(tmp_path / "odd.tflite", custom_code="MyVendorUpsample")
    with pytest.raises(ConversionError) as caught:
        rewrite(model, tmp_path / "builtin.tflite")
    reason = str(caught.value)
    assert "custom op 'MyVendorUpsample'" in reason and "output tensor '" in reason and "re-export" in reason
    assert "\n" not in reason
    # custom ops tf2onnx reads itself pass through untouched
    kept, _ = custom_op_tflite(tmp_path / "kept.tflite", custom_code="TFLite_Detection_PostProcess")
    assert rewrite(kept, tmp_path / "kept-builtin.tflite") == (kept, [])


def test_unknown_custom_op_the_runtime_cannot_run_is_one_line_naming_it(tmp_path, capsys):
    model, _ = custom_op_tflite(tmp_path / "odd.tflite", custom_code="MyVendorUpsample")
    result = run_cli(capsys, "convert", model, "--format", "onnx", "--runs", "1", "--out", tmp_path / "out")
    assert result.code == 2
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "custom op 'MyVendorUpsample' (node 1)" in lines[0] and "Traceback" not in result.err, result.err


def sparse_tflite(path):
    """A Conv2D + Dense model with 90% zero weights, converted with TFLite's sparsity optimisation:
    the weights are stored sparse (CSR) and decoded by DENSIFY ops at run time."""
    import keras
    path.write_bytes(_keras_tflite([keras.layers.Conv2D(16, 1), keras.layers.Flatten(), keras.layers.Dense(8)],
                                   (4, 4, 24), sparse=True))
    return path


def test_sparse_constants_convert_to_onnx_and_a_tf2onnx_failure_names_the_tensor_and_op(tmp_path, capsys):
    import tf2onnx
    from ai_edge_litert.interpreter import Interpreter
    from edgekit.backends import _onnx_export as onnx_backend
    model = sparse_tflite(tmp_path / "sparse.tflite")
    ops = Interpreter(model_path=str(model))._get_ops_details()
    assert "DENSIFY" in {op["op_name"] for op in ops}, "the converter did not store the weights sparse"
    # tf2onnx alone reads the sparse buffer as dense; the reason says where
    with pytest.raises(Exception) as caught:
        tf2onnx.convert.from_tflite(str(model), opset=onnx_backend.OPSET)
    where = onnx_backend._tf2onnx_where(caught.value, model)
    assert "reading TFLite tensor '" in where and "DENSIFY op #" in where, where
    before = tree_digest(model)
    result = run_cli(capsys, "convert", model, "--format", "onnx", "--format", "openvino", "--runs", "1",
                     "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    for artifact in json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"]:
        assert artifact["status"] == "ok" and artifact["fidelity"]["verified"], artifact
    onnx_artifact = next(a for a in json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"]
                         if a["format"] == "onnx")
    assert any("sparse constants stored dense" in n for n in onnx_artifact["notes"]), onnx_artifact["notes"]
    assert tree_digest(model) == before


def test_block_sparse_constant_decodes_to_its_dense_matrix():
    """A 4x8 matrix in 1x4 blocks (block_map [1]): rows dense, block columns CSR, block inner dense;
    stored values in traversal order (TFLite schema, SparsityParameters)."""
    from types import SimpleNamespace as Obj
    from edgekit.tflite_file import dense as _dense
    dense = np.zeros((4, 8), np.float32)
    blocks = [(0, 0), (2, 1), (3, 0), (3, 1)]
    for n, (row, col) in enumerate(blocks):
        dense[row, col * 4:col * 4 + 4] = np.arange(4) + 10 * n + 1
    levels = [Obj(format=0, denseSize=4), Obj(format=1, denseSize=0, arraySegments=Obj(values=[0, 1, 1, 2, 4]),
                                                arrayIndices=Obj(values=[0, 1, 0, 1])), Obj(format=0, denseSize=4)]
    tensor = Obj(shape=[4, 8], type=0, sparsity=Obj(traversalOrder=[0, 1, 2], blockMap=[1], dimMetadata=levels))
    stored = np.concatenate([dense[r, c * 4:c * 4 + 4] for r, c in blocks])
    np.testing.assert_array_equal(_dense(tensor, stored.view(np.uint8), "w"), dense)


def test_custom_op_model_is_quantized_to_int8_tflite_through_the_rebuilt_float_graph(tmp_path, capsys):
    model, _ = custom_op_tflite(tmp_path / "seg.tflite")
    result = run_cli(capsys, "convert", model, "--target", "cpu-int8", "--format", "tflite", "--calib", "random",
                     "--calib-samples", "8", "--runs", "1", "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    int8 = next(a for a in json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"]
                if a["precision"] == "int8")
    assert int8["status"] == "ok", int8
    assert any("rebuilt from the .tflite input" in n for n in int8["notes"]), int8["notes"]
    assert int8["fidelity"]["snr_db"] > 15, int8["fidelity"]


def test_tflite_op_tf2onnx_copies_through_is_named_as_a_tflite_op():
    import onnx
    from onnx import TensorProto, helper
    from edgekit.backends import _onnx_export as onnx_backend
    from edgekit.errors import ConversionError
    node = helper.make_node("TFL_MaxUnpooling2D", ["x"], ["y"], name="seg/unpool")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])])
    with pytest.raises(ConversionError, match="TFLite op MaxUnpooling2D .node 'seg/unpool'"):
        onnx_backend._complete(onnx, helper.make_model(graph))


def test_a_sparse_tflite_loads_with_its_constants_dense(tmp_path):
    """tflite_file.load on a model whose weights are stored sparse (MediaPipe's pose detector) read the stored
    values in the dense shape ('cannot reshape array of size 96'): constants now come back densified."""
    from edgekit import tflite_file
    from edgekit.tflite_file import dense
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(4, 6)).astype(np.float32) * (rng.random((4, 6)) > 0.6)

    class Level:
        def __init__(self, fmt, size=0, segments=None, indices=None):
            self.format, self.denseSize = fmt, size
            self.arraySegments = type("V", (), {"values": segments})()
            self.arrayIndices = type("V", (), {"values": indices})()
    rows = [np.flatnonzero(r) for r in matrix]
    segments = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    sparsity = type("S", (), {"traversalOrder": [0, 1], "blockMap": None,
                              "dimMetadata": [Level(0, 4), Level(1, 0, segments, np.concatenate(rows))]})()
    tensor = type("T", (), {"sparsity": sparsity, "shape": [4, 6], "type": 0, "name": "w"})()
    np.testing.assert_array_equal(dense(tensor, matrix[matrix != 0].view(np.uint8), "w"), matrix)
    assert tflite_file.constant(type("M", (), {"buffers": [type("B", (), {"data": matrix[matrix != 0].view(np.uint8)})()]})(),
                                type("T2", (), {**vars(tensor), "buffer": 0, "sparsity": sparsity,
                                                "shape": [4, 6], "type": 0, "name": "w"})()).shape == (4, 6)
