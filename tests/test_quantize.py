"""Quantization on every backend: structural asserts (op counts, dtypes) plus a tolerance check
against the float model, written once and run for each backend x precision."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli
from conftest import tree_digest

SUPPORTED = [("tflite", p) for p in ("fp16", "dynamic", "int8", "int8-io", "int16x8")] + \
            [("onnx", p) for p in ("fp16", "dynamic", "int8", "int8-io")] + \
            [("openvino", p) for p in ("fp16", "dynamic", "int8")]


def convert(capsys, model, out, *args):
    result = run_cli(capsys, "convert", model, "--out", out, "--runs", "2", "--warmup", "0", *args)
    assert result.code == 0, result.err
    return json.loads((out / "report.json").read_text())


def target(report, fmt):
    return next(a for a in report["artifacts"] if a["format"] == fmt and a["role"] == "target")


@pytest.fixture(scope="module")
def tiny_onnx_data(tmp_path_factory):
    rng = np.random.default_rng(3)
    x = rng.random((40, 3, 16, 16), dtype=np.float32)
    path = tmp_path_factory.mktemp("onnxdata") / "val.npz"
    np.savez(path, x=x, y=rng.integers(0, 5, 40))
    return path


@pytest.mark.parametrize("fmt, precision", SUPPORTED)
def test_precision_on_backend(fmt, precision, small_keras, tiny_eval, capsys, tmp_path):
    report = convert(capsys, small_keras, tmp_path / "o", "--format", fmt, "--precision", precision,
                     "--data", tiny_eval, "--calib-samples", "16")
    baseline, artifact = report["artifacts"][:2]  # then native rows (test_native.py)
    assert baseline["role"] == "baseline" and baseline["precision"] == "fp32" and baseline["status"] == "ok"
    assert artifact["status"] == "ok", artifact.get("reason")
    assert artifact["fidelity"]["verified"], artifact["fidelity"]
    assert artifact["vs_fp32"]["size"] < MAX_SIZE_RATIO[precision] * (1.25 if fmt == "openvino" else 1)  # IR text
    assert artifact["vs_fp32"]["latency"] > 0
    ops = artifact["ops"]
    assert ops["ops"] > 0
    if precision in ("int8", "int8-io", "int16x8"):
        # onnxruntime's own optimized graph decides for ONNX: with int8 (signed) activations it fuses neither
        # the first Conv (fed by the int8 input) nor Softmax, and runs both in float (its profiler agrees)
        assert ops["float_ops"] <= (2 if fmt == "openvino" or (fmt, precision) == ("onnx", "int8-io") else 0), ops
        assert artifact["calibration"]["samples"] == 16 and artifact["calibration"]["method"] == "minmax"
        assert report["data"]["samples"] == 32  # 48 given, 16 held apart for calibration
    else:
        assert ops["float_ops"] > 0 and artifact["calibration"] is None
    STRUCTURE[fmt](tmp_path / "o" / artifact["file"], precision)


MAX_SIZE_RATIO = {"fp16": 0.6, "dynamic": 0.4, "int8": 0.4, "int8-io": 0.4, "int16x8": 0.4}


def _tflite_structure(path, precision):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    dtypes = {d["name"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
    by_index = {d["index"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
    weights = [by_index[op["inputs"][1]] for op in interpreter._get_ops_details()
               if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    expected_io = {"int8-io": "int8"}.get(precision, "float32")
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]).name == expected_io
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]).name == expected_io
    if precision == "fp16":
        assert "float16" in dtypes.values()
    elif precision == "int16x8":
        assert "int16" in dtypes.values() and set(weights) == {"int8"}
    elif precision == "dynamic":  # the converter leaves tensors under 1024 weights in float
        assert weights.count("int8") == 2, weights
    else:
        assert len(weights) == 4 and set(weights) == {"int8"}, weights


def _onnx_structure(path, precision):
    import onnx
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    init_types = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer}
    if precision == "fp16":
        assert "float16" in init_types and ops.count("Cast") >= 2  # float32 I/O kept
    elif precision == "dynamic":
        assert "DynamicQuantizeLinear" in ops and "int8" in init_types
    else:
        assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= ops.count("QuantizeLinear")
        assert "int8" in init_types
        io_type = model.graph.input[0].type.tensor_type.elem_type
        assert io_type == (onnx.TensorProto.INT8 if precision == "int8-io" else onnx.TensorProto.FLOAT)
        if precision == "int8-io":
            assert {p.key for p in model.metadata_props} >= {"edgekit.input_quant.0", "edgekit.output_quant.0"}


def _openvino_structure(path, precision):
    import openvino as ov
    model = ov.Core().read_model(str(path))
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    const_types = {op.get_output_element_type(0).get_type_name() for op in model.get_ordered_ops()
                   if op.get_type_name() == "Constant"}
    if precision == "fp16":
        assert "f16" in const_types
    elif precision == "dynamic":
        assert "i8" in const_types and "FakeQuantize" not in types
    else:
        assert types.count("FakeQuantize") >= 2 and "i8" in const_types


STRUCTURE = {"tflite": _tflite_structure, "onnx": _onnx_structure, "openvino": _openvino_structure}


@pytest.mark.parametrize("fmt, precision", [("onnx", "int16x8"), ("openvino", "int8-io"), ("openvino", "int16x8")])
def test_unsupported_mode_is_reported_for_that_artifact_only(fmt, precision, tiny_keras, capsys, tmp_path):
    report = convert(capsys, tiny_keras, tmp_path / "o", "--precision", precision, "--calib", "random",
                     "--calib-samples", "4")
    assert target(report, "tflite")["status"] == "ok"
    failed = target(report, fmt)
    assert failed["status"] == "failed" and f"has no {precision} mode" in failed["reason"]


def test_onnx_input_quantized_on_all_backends(make_model, tiny_onnx_data, capsys, tmp_path):
    report = convert(capsys, make_model("onnx"), tmp_path / "o", "--target", "cpu-int8", "--data", tiny_onnx_data,
                     "--calib-samples", "10", "--calib-method", "entropy")
    for fmt in ("tflite", "onnx", "openvino"):
        artifact = target(report, fmt)
        assert artifact["status"] == "ok", artifact.get("reason")
        assert artifact["fidelity"]["cosine"] > 0.99
        expected = "minmax" if fmt == "tflite" else "entropy"
        assert artifact["calibration"]["method"] == expected and artifact["calibration"]["requested"] == "entropy"
    assert any("supports only minmax" in n for n in target(report, "tflite")["notes"])


def test_keep_float_on_every_backend(small_keras, tiny_eval, capsys, tmp_path):
    plain = convert(capsys, small_keras, tmp_path / "a", "--target", "cpu-int8", "--data", tiny_eval, "--calib-samples", "8")
    kept = convert(capsys, small_keras, tmp_path / "b", "--target", "cpu-int8", "--data", tiny_eval, "--calib-samples", "8",
                   "--keep-float", "conv2")
    for fmt in ("tflite", "onnx", "openvino"):
        before, after = target(plain, fmt), target(kept, fmt)
        assert after["status"] == "ok", after.get("reason")
        assert after["ops"]["float_ops"] > before["ops"]["float_ops"], fmt
        assert any("kept in float" in n for n in after["notes"])


def _matmul_add_onnx(path):
    """x -> MatMul 'mm0' -> Add 'add0' -> Relu -> MatMul 'mm1': onnxruntime's pre-processing fuses the first two
    into one Gemm named 'mm0/MatMulAddFusion'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, .3, shape).astype(np.float32), name)
             for name, shape in (("W", (8, 4)), ("B", (4,)), ("W2", (4, 3)))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm0"),
             helper.make_node("Add", ["mm", "B"], ["y"], name="add0"),
             helper.make_node("Relu", ["y"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "W2"], ["out"], name="mm1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("layer", ["add0", "mm0"])
def test_keep_float_reaches_a_node_onnxruntime_fused(layer, capsys, tmp_path):
    """A node kept in float stays float after onnxruntime's pre-processing renamed it in a fusion: its Gemm reads
    float weights and no quantized activation (before, keeping 'add0' of a fused MatMul+Add changed nothing)."""
    import onnx
    report = convert(capsys, _matmul_add_onnx(tmp_path / "m.onnx"), tmp_path / "o", "--target", "cpu-int8",
                     "--format", "onnx", "--calib", "random", "--keep-float", layer)
    assert target(report, "onnx")["status"] == "ok"
    graph = onnx.load(str(tmp_path / "o" / "model.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert [producers.get(i) for i in gemm.input] == [None, None, None], (gemm.name, list(gemm.input))
    assert producers.get(next(n for n in graph.node if n.name == "mm1").input[0]) == "DequantizeLinear"


def test_keep_float_of_a_layer_no_graph_has_is_one_line_and_keeps_the_previous_output(tiny_keras, tiny_eval, capsys,
                                                                                       tmp_path):
    convert(capsys, tiny_keras, tmp_path / "o", "--target", "cpu-int8", "--data", tiny_eval, "--format", "onnx")
    before = tree_digest(tmp_path / "o")
    result = run_cli(capsys, "convert", tiny_keras, "--target", "cpu-int8", "--data", tiny_eval, "--format", "onnx",
                     "--keep-float", "no_such_layer", "--out", tmp_path / "o", "--force")
    assert_user_error(result, "--keep-float no_such_layer", "no layer of that name", "analyze --layers")
    assert tree_digest(tmp_path / "o") == before


def test_quantized_artifacts_are_reproducible(tiny_keras, tiny_eval, capsys, tmp_path):
    for out in ("a", "b"):
        convert(capsys, tiny_keras, tmp_path / out, "--target", "cpu-int8", "--data", tiny_eval, "--calib-samples", "8")
    for name in ("model.tflite", "model.onnx", "model.xml", "model.bin"):
        assert tree_digest(tmp_path / "a" / name) == tree_digest(tmp_path / "b" / name), name


@pytest.fixture(scope="module")
def gates_keras(tmp_path_factory):
    """Recurrent-cell-like gates: SPLITs feeding Add layers (what an unrolled LSTM hands the quantizer; in the first
    step one SPLIT output is unused, like a forget gate on a zero state), and its data."""
    import keras
    keras.utils.set_random_seed(0)
    layers = keras.layers
    x = keras.Input((16,), name="x")
    h = layers.Dense(32, name="h0")(x)
    for step in range(GATE_STEPS):
        z = keras.ops.split(layers.Dense(h.shape[-1], name=f"z{step}")(h), 4, axis=-1)
        r = keras.ops.split(h, 4, axis=-1)
        gates = [layers.Add(name=f"gate{step}_{k}")([z[k], r[k]]) for k in range(4) if (step, k) != UNUSED]
        h = layers.Concatenate(name=f"cat{step}")([layers.Activation("tanh")(g) for g in gates])
    folder = tmp_path_factory.mktemp("gates")
    keras.Model(x, layers.Dense(4, name="out")(h), name="gates").save(folder / "gates.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.standard_normal((40, 16)).astype(np.float32), y=rng.integers(0, 4, 40))
    return folder / "gates.keras", folder / "data.npz"


GATE_STEPS, UNUSED = 4, (0, 1)


def test_quantized_artifacts_with_ops_kept_in_float_are_reproducible(gates_keras, capsys, tmp_path):
    """TF's quantizer orders the DEQUANTIZEs it adds for denylisted ADDs differently per build (3 conversions
    gave 3 different files before the canonical layout: tflite_canonical)."""
    model, data = gates_keras
    keep = [arg for s in range(GATE_STEPS) for k in range(4) if (s, k) != UNUSED
            for arg in ("--keep-float", f"gate{s}_{k}")]
    for out in ("a", "b"):
        report = convert(capsys, model, tmp_path / out, "--target", "cpu-int8", "--format", "tflite", "--data", data,
                         "--calib-samples", "8", *keep)
        assert target(report, "tflite")["fidelity"]["verified"], target(report, "tflite")
    assert tree_digest(tmp_path / "a" / "model.tflite") == tree_digest(tmp_path / "b" / "model.tflite")


def test_canonical_layout_keeps_the_model(gates_keras, tmp_path):
    """The quantizer's own builds with ADD denylisted, canonicalized: one file, with the same tensors, inputs,
    outputs and signature, in an order LiteRT can run, giving bit-identical outputs; canonical again unchanged.
    Builds differ in their Q/DQ order and names, and about 1 in 3 runs the first SPLIT in float after one
    DEQUANTIZE (its unused output): up to 12 builds, until both forms were seen."""
    import keras
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert

    from edgekit import tflite_canonical, tflite_file
    model, data = keras.saving.load_model(gates_keras[0]), np.load(gates_keras[1])["x"][:, None]
    model.export(tmp_path / "saved", verbose=False)  # a SavedModel: the file gets a signature def to keep in step
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter([[s] for s in data[:8]])
    converter.experimental_mlir_quantizer = converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    canonical, forms = set(), set()
    for k in range(12):
        raw, path = tmp_path / f"raw{k}.tflite", tmp_path / f"canonical{k}.tflite"
        raw.write_bytes(tf_convert.mlir_quantize(calibrated, denylisted_ops=["ADD"]))
        path.write_bytes(raw.read_bytes())
        tflite_canonical.canonicalize(path)
        forms.add(_float_splits(raw))
        same_form = not _float_splits(raw)  # else compared without SPLIT/DEQUANTIZE ops, their outputs, counted names
        assert _graph_summary(raw, same_form) == _graph_summary(path, same_form) and not _float_splits(path)
        np.testing.assert_array_equal(_litert_outputs(raw, data[8:16]), _litert_outputs(path, data[8:16]))
        canonical.add(path.read_bytes())
        if k >= 2 and len(forms) > 1:
            break
    again = tmp_path / "again.tflite"
    again.write_bytes(path.read_bytes())
    tflite_canonical.canonicalize(again)
    assert len(canonical) == 1 and again.read_bytes() == path.read_bytes()
    assert tflite_file.read_model(path).signatureDefs


def _float_splits(path) -> int:
    from edgekit import tflite_file
    tensors, ops, _, _ = tflite_file.load(path)
    return sum(op.kind == "SPLIT" and tensors[op.outputs[0]].dtype == "float32" for op in ops)


def _graph_summary(path, forms: bool = True) -> tuple:
    """Op kinds, tensors (name, shape, type, scale), graph inputs/outputs by name, signature: all order-free;
    without `forms`, SPLIT and DEQUANTIZE ops, their outputs and the converter's counted names left out. Asserts the ops are in an
    order that computes each tensor before it is read."""
    import re

    from edgekit import tflite_file
    tensors, ops, inputs, outputs = tflite_file.load(path)
    ready = set(inputs) | {k for k, t in enumerate(tensors) if t.data is not None}
    for op in ops:
        assert all(i in ready for i in op.inputs if i >= 0), (path, op)
        ready |= set(op.outputs)
    signatures = tflite_file.read_model(path).signatureDefs or []
    formed = {i for op in ops if op.kind in ("SPLIT", "DEQUANTIZE") for i in op.outputs}
    named = [t for k, t in enumerate(tensors)
             if forms or not (k in formed or re.fullmatch(r"tfl\.(de)?quantize\d*", t.name))]
    return (sorted(op.kind for op in ops if forms or op.kind not in ("SPLIT", "DEQUANTIZE")),
            sorted((t.name, t.shape, t.dtype, tuple(t.scale)) for t in named),
            [tensors[i].name for i in inputs], [tensors[i].name for i in outputs],
            [(e.name, tensors[e.tensorIndex].name) for s in signatures for e in [*s.inputs, *s.outputs]])


def _litert_outputs(path, samples) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    result = []
    for sample in samples:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample)
        interpreter.invoke()
        result.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return np.stack(result)


def test_random_calibration_must_be_asked_for_and_is_marked(tiny_keras, capsys, tmp_path):
    assert_user_error(run_cli(capsys, "convert", tiny_keras, "--target", "cpu-int8"),
                      "needs calibration data", "--calib random")
    report = convert(capsys, tiny_keras, tmp_path / "o", "--target", "cpu-int8", "--calib", "random",
                     "--calib-samples", "4", "--format", "tflite")
    assert report["calibration"]["uncalibrated"] and any("UNCALIBRATED" in w for w in report["warnings"])
    assert "UNCALIBRATED" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("calib, words", [
    (np.zeros((8, 8, 8), np.float32), ["shape"]),
    (np.full((8, 8, 8, 1), np.nan, np.float32), ["NaN"]),
    (np.array(["a"] * 8), ["dtype"]),
    (np.random.default_rng(0).random((8, 8, 8, 1)).astype(np.float32) * 255, ["calibration values span", "--calib-scale"]),
])
def test_bad_calibration_data(calib, words, tiny_keras, tiny_eval, capsys, tmp_path):
    np.savez(tmp_path / "calib.npz", x=calib)
    result = run_cli(capsys, "convert", tiny_keras, "--target", "cpu-int8", "--data", tiny_eval,
                     "--calib", tmp_path / "calib.npz")
    assert_user_error(result, *words)


def test_calib_with_a_float_precision_is_refused(tiny_keras, tiny_eval, capsys):
    assert_user_error(run_cli(capsys, "convert", tiny_keras, "--calib", tiny_eval), "not calibrated")


def test_image_folder_calibration(tiny_keras, tiny_eval, capsys, tmp_path):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    report = convert(capsys, tiny_keras, tmp_path / "o", "--target", "cpu-int8", "--data", tiny_eval,
                     "--calib", folder, "--format", "tflite")
    assert report["calibration"]["samples"] == 6 and "image" in report["calibration"]["origin"]
    assert target(report, "tflite")["status"] == "ok"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli(capsys, "convert", tiny_keras, "--target", "cpu-int8", "--calib", empty), "no images")


def test_float_tflite_input_is_quantized_through_its_rebuilt_float_graph(make_model, capsys, tmp_path):
    report = convert(capsys, make_model("tflite"), tmp_path / "o", "--target", "cpu-int8", "--calib", "random",
                     "--calib-samples", "4")
    tflite = target(report, "tflite")
    assert tflite["status"] == "ok", tflite
    assert any("rebuilt from the .tflite input" in n for n in tflite["notes"])
    assert target(report, "onnx")["status"] == "ok" and target(report, "openvino")["status"] == "ok"


def test_gpu_profile_never_reports_a_cpu_latency(tiny_keras, capsys, tmp_path):
    report = convert(capsys, tiny_keras, tmp_path / "o", "--target", "gpu", "--format", "onnx")
    artifact = target(report, "onnx")
    assert artifact["precision"] == "fp16" and artifact["status"] == "ok"
    assert artifact["latency_ms"] == {"status": "not measured: no GPU found", "how": "not measured"}
    assert "median" not in json.dumps(artifact["latency_ms"])
    assert any("no GPU found" in w for w in report["warnings"])


def test_layer_sensitivity_from_analyze_and_in_the_report(small_keras, tiny_eval, capsys, tmp_path):
    result = run_cli(capsys, "analyze", small_keras, "--layers", "--data", tiny_eval, "--calib-samples", "8",
                     "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)["sensitivity"]
    assert sorted(r["layer"] for r in rows) == ["conv1", "conv2", "fc", "probs"]
    assert [r["cosine"] for r in rows] == sorted(r["cosine"] for r in rows)
    assert all(0.9 < r["cosine"] <= 1.0 and r["samples"] == 40 for r in rows)
    table = run_cli(capsys, "analyze", small_keras, "--layers", "--data", tiny_eval, "--calib-samples", "8")
    assert "conv1" in table.out and "--keep-float" in table.out
    report = convert(capsys, small_keras, tmp_path / "o", "--target", "cpu-int8", "--data", tiny_eval,
                     "--calib-samples", "8", "--format", "onnx", "--sensitivity")
    assert [r["layer"] for r in report["sensitivity"]] == [r["layer"] for r in rows]
    assert "Per-layer int8 sensitivity" in (tmp_path / "o" / "report.md").read_text()


def test_openvino_minmax_is_the_true_range_and_the_overflow_fix_follows_the_cpu(monkeypatch):
    """NNCF's default activation estimator averages per-sample extremes (it clipped shifted real digits);
    edgekit's minmax asks for the true min/max. The 7-bit first-layer overflow fix is for x86 CPUs
    without VNNI only."""
    import nncf
    from nncf.quantization.advanced_parameters import OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    from edgekit.backends import openvino
    from edgekit.passes.quantize import QuantizeConfig
    params = openvino._advanced(nncf, QuantizeConfig(), "minmax")
    assert params.activations_range_estimator_params == RangeEstimatorParametersSet.MINMAX
    monkeypatch.setattr(openvino, "int16_saturates", lambda: True)
    assert openvino._advanced(nncf, QuantizeConfig(), "minmax").overflow_fix == OverflowFix.FIRST_LAYER
    monkeypatch.setattr(openvino, "int16_saturates", lambda: False)
    assert openvino._advanced(nncf, QuantizeConfig(), "minmax").overflow_fix == OverflowFix.DISABLE


@pytest.mark.parametrize("case", ["shared", "alone", "folded"])
def test_a_node_kept_in_float_reads_its_input_unquantized(case):
    """A kept-float node reads the tensor its quantized producer computed, not its Q/DQ copy (which goes when
    nothing else reads it); not when the quantizer folded a Relu into the QuantizeLinear (the tensor before
    the pair then comes from another producer than the one the node read)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.backends._onnx_rewrite import float_inputs
    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z")
    nodes = [helper.make_node("Add", ["x", "x"], ["t"], name="add"),
             helper.make_node("QuantizeLinear", ["t", "s", "z"], ["tq"], name="q"),
             helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["tdq"], name="dq"),
             helper.make_node("Mul", ["tdq", "tdq"], ["y"], name="kept")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]
    if case == "shared":
        nodes.append(helper.make_node("Neg", ["tdq"], ["z2"], name="other"))
        outputs.append(helper.make_tensor_value_info("z2", TensorProto.FLOAT, [2]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], outputs,
                              [scale, zero])
    model = helper.make_model(graph)
    producer = "relu" if case == "folded" else "add"  # a folded Relu: the node read the Relu's output
    notes = float_inputs(model, {"kept": [("t", producer), ("t", producer)]})
    kept = next(n for n in model.graph.node if n.name == "kept")
    ops = [n.op_type for n in model.graph.node]
    if case == "folded":
        assert not notes and list(kept.input) == ["tdq", "tdq"]
    else:
        assert list(kept.input) == ["t", "t"] and "1 node(s) kept in float" in notes[0]
        assert ops.count("QuantizeLinear") == (case == "shared"), ops
