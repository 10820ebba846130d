"""Per-op time (issue 27): `edgekit bench ARTIFACT --ops` in one format for LiteRT, onnxruntime and OpenVINO;
op counts per type against each model's own op list (as its runtime runs it)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from clihelp import run_cli


def _onnx_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(8, 8, 3, 3)).astype(np.float32) * 0.1, "w2"),
             numpy_helper.from_array(rng.normal(size=(8, 5)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Sigmoid", ["c2"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=1)]
    graph = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _ops(capsys, artifact, table=False):
    result = run_cli(capsys, "bench", artifact, "--ops", "--runs", "3", "--warmup", "1", "--json")
    assert result.code == 0, result.err
    prof = json.loads(result.out)["op_profile"]
    assert prof["total_ms"] > 0 and abs(sum(r["share"] for r in prof["by_type"]) - 1) < 1e-6
    assert len(prof["slowest"]) == min(10, len(prof["ops"])) and all(o["name"] for o in prof["slowest"])
    if table:
        shown = run_cli(capsys, "bench", artifact, "--ops", "--runs", "2", "--warmup", "0")
        assert shown.code == 0 and "time per op type" in shown.out and "slowest ops" in shown.out
    return {r["type"]: r["count"] for r in prof["by_type"]}


def test_tflite_op_counts(make_model, capsys):
    from edgekit.accel import graph
    path = make_model("tflite")
    assert _ops(capsys, path) == Counter(op.kind for op in graph.load(path)[1])


def test_onnx_op_counts_as_onnxruntime_runs_it(tmp_path, capsys):
    import onnx
    import onnxruntime as ort
    path = _onnx_model(tmp_path / "m.onnx")
    options = ort.SessionOptions()  # the graph onnxruntime runs: its own optimized copy, at the default level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    expected = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert _ops(capsys, path, table=True) == expected


def test_openvino_op_counts_of_the_runtime_model(tmp_path, capsys):
    import openvino as ov
    xml = tmp_path / "m.xml"
    ov.save_model(ov.convert_model(str(_onnx_model(tmp_path / "m.onnx"))), str(xml))
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    runtime_ops = {op.get_friendly_name() for op in compiled.get_runtime_model().get_ordered_ops()
                   if op.get_rt_info()["layerType"].astype(str) not in ("Input", "Output", "Const")}
    counts = _ops(capsys, xml)  # the performance counters name types their own way (ReduceMean for Reduce)
    assert sum(counts.values()) == len(runtime_ops) and "Convolution" in counts
    result = run_cli(capsys, "bench", xml, "--ops", "--runs", "2", "--warmup", "0", "--json")
    assert {o["name"] for o in json.loads(result.out)["op_profile"]["ops"]} == runtime_ops


def test_a_pair_side_by_side():
    from edgekit import opprofile
    fp32 = opprofile.summarize([{"name": "c", "type": "Conv", "ms": 2.0, "precision": "float"}], "t", 1)
    int8 = opprofile.summarize([{"name": "q", "type": "QuantizeLinear", "ms": 0.5, "precision": "float"},
                                {"name": "c", "type": "QLinearConv", "ms": 0.5, "precision": "uint8"},
                                {"name": "s", "type": "Softmax", "ms": 0.2, "precision": "float"}], "t", 1)
    cmp = opprofile.compare(fp32, int8)
    assert set(cmp["added"]) == {"QuantizeLinear", "QLinearConv", "Softmax"} and cmp["layout_or_quantize_ms"] == 0.5
    assert cmp["stayed_float"] == [{"type": "Softmax", "count": 1, "ms": 0.2}]
    assert cmp["total_ms"] == [2.0, pytest.approx(1.2)]


def test_bench_a_pair_interleaved_and_per_op(tmp_path, capsys):
    """bench A B: one interleaved timing phase with B's latency as a ratio of A's; with --ops, op types side by
    side (MatMul gone, DynamicQuantizeMatMul added: onnxruntime fuses a dynamic-range copy's MatMulInteger)."""
    from onnxruntime.quantization import quantize_dynamic
    fp32 = _onnx_model(tmp_path / "fp32.onnx")
    quantize_dynamic(str(fp32), str(tmp_path / "dyn.onnx"), op_types_to_quantize=["MatMul"])
    pair = run_cli(capsys, "bench", fp32, tmp_path / "dyn.onnx", "--runs", "5", "--warmup", "1", "--processes", "2",
                   "--json")
    assert pair.code == 0, pair.err
    result = json.loads(pair.out)
    assert len(result["artifacts"]) == 2 and result["ratio"]["value"] > 0 and len(result["ratio"]["range"]) == 2
    shown = run_cli(capsys, "bench", fp32, tmp_path / "dyn.onnx", "--runs", "3", "--warmup", "0", "--processes", "1")
    assert "dyn.onnx / fp32.onnx:" in shown.out and "interleaved" in shown.out
    ops = run_cli(capsys, "bench", fp32, tmp_path / "dyn.onnx", "--ops", "--runs", "2", "--warmup", "0", "--json")
    cmp = json.loads(ops.out)["op_compare"]
    assert cmp["added"] == ["DynamicQuantizeMatMul"] and {r["type"]: r["verdict"] for r in cmp["by_type"]}["MatMul"] == "gone"
    three = run_cli(capsys, "bench", fp32, fp32, fp32)
    assert three.code == 2 and "one or two artifacts" in three.err
