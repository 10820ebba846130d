"""int8 that is not slower than it must be, structurally (no timing here: benchmarks/precisions.py has it):
- TFLite for CPU targets keeps in float the ops XNNPACK has no int8 kernel for (backends/_xnnpack.py), on a
  small model built here (HARD_SWISH and PRELU, which XNNPACK refuses in int8);
- the ops a runtime leaves outside its int8 path are named by the op summary (the slower-than-fp32 note)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import run_cli


@pytest.fixture(scope="module")
def swish_model(tmp_path_factory):
    import keras
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([keras.Input((12, 12, 3), name="image"),
                              layers.Conv2D(8, 3, padding="same", name="conv1"),
                              layers.Activation("hard_swish", name="hswish"),
                              layers.DepthwiseConv2D(3, padding="same", name="dw"),
                              layers.PReLU(shared_axes=[1, 2], name="prelu"),
                              layers.Conv2D(8, 1, name="conv2"),
                              layers.GlobalAveragePooling2D(name="gap"),
                              layers.Dense(4, name="logits")], name="swish")
    folder = tmp_path_factory.mktemp("xnnpack")
    model.save(folder / "swish.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.normal(0, 1, (24, 12, 12, 3)).astype(np.float32))
    return folder


def _ops(path):
    from edgekit import tflite_file
    tensors, ops, _, _ = tflite_file.load(path)
    return [(op.kind, tensors[[i for i in op.inputs if i >= 0][0]].dtype) for op in ops], ops, tensors


def _convert(capsys, folder, out, *args):
    result = run_cli(capsys, "convert", folder / "swish.keras", "--format", "tflite", "--data", folder / "data.npz",
                     "--out", out, "--runs", "2", "--warmup", "0", *args)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    return next(a for a in report["artifacts"] if a["role"] == "target"), out / "model.tflite"


def test_cpu_int8_keeps_xnnpack_refused_ops_in_float_and_is_fully_delegated(swish_model, capsys, tmp_path):
    from edgekit.backends import _xnnpack
    artifact, path = _convert(capsys, swish_model, tmp_path / "cpu", "--target", "cpu-int8")
    kinds, ops, tensors = _ops(path)
    assert ("HARD_SWISH", "float32") in kinds and ("PRELU", "float32") in kinds
    assert {k for k, dtype in kinds if k in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")} and \
        all(dtype == "int8" for k, dtype in kinds if k in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    assert _xnnpack.refused(path) == {}  # every op, the QUANTIZE/DEQUANTIZE around the float ones too
    # A float op sits only between a DEQUANTIZE and a QUANTIZE (or the model's float edges): no float
    # compute op is fed by another float compute op that could have stayed int8.
    producer = {o: op for op in ops for o in op.outputs}
    for op in ops:
        if op.kind in ("HARD_SWISH", "PRELU"):
            assert producer[op.inputs[0]].kind == "DEQUANTIZE"
    assert any("kept in float for XNNPACK" in n and "HARD_SWISH x1" in n and "PRELU x1" in n
               for n in artifact["notes"]), artifact["notes"]
    assert artifact["fidelity"]["verified"], artifact["fidelity"]


def test_int8_io_stays_integer_only(swish_model, capsys, tmp_path):
    """int8-io targets integer-only runtimes (TFLite Micro, NPUs): nothing is moved to float there."""
    artifact, path = _convert(capsys, swish_model, tmp_path / "io", "--target", "cpu-int8", "--precision", "int8-io")
    kinds, _, _ = _ops(path)
    assert ("HARD_SWISH", "int8") in kinds and ("PRELU", "int8") in kinds
    assert not any(k in ("QUANTIZE", "DEQUANTIZE") for k, _ in kinds)
    assert not any("kept in float for XNNPACK" in n for n in artifact["notes"])


def test_onnx_ops_onnxruntime_runs_in_float_are_named(tmp_path):
    """PRelu has no QDQ fusion in onnxruntime: it runs in float between DequantizeLinear and QuantizeLinear."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime import quantization as q

    from edgekit.backends import onnx as onnx_backend
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.full((1, 8, 1, 1), 0.1, np.float32), "slope"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("PRelu", ["c1", "slope"], ["p"], name="prelu"),
             helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "f.onnx")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)
    q.quantize_static(tmp_path / "f.onnx", tmp_path / "q.onnx", Reader(), quant_format=q.QuantFormat.QDQ)
    summary = onnx_backend.op_summary(tmp_path / "q.onnx")
    assert summary["outside_int8"] == {"PRelu": 1}
    assert summary["float_ops"] == 1 and summary["ops"] == 3
    assert onnx_backend.op_summary(tmp_path / "f.onnx")["outside_int8"] == {}


def test_cpu_int8_calibrates_once_for_its_xnnpack_rebuild(swish_model, capsys, tmp_path, monkeypatch):
    """The plain build and the rebuild that keeps XNNPACK's refused ops in float re-quantize one calibrated
    model: TF's calibration runs once per conversion (it ran twice: 37 s of ddddocr's unrolled CRNN, loaded)."""
    from tensorflow.lite.python.optimize import calibrator
    calls, real = [], calibrator.Calibrator.calibrate
    monkeypatch.setattr(calibrator.Calibrator, "calibrate", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    artifact, _ = _convert(capsys, swish_model, tmp_path / "once", "--target", "cpu-int8")
    assert any("kept in float for XNNPACK" in n for n in artifact["notes"]) and artifact["fidelity"]["verified"]
    assert len(calls) == 1, calls
