"""int8 TFLite of a model that arrives as .tflite: the TFLite quantizer reads a float graph rebuilt through
tf2onnx and onnx2tf (backends/_tflite_rebuild.py), which names every op anew. Checked on a small model made
here with MediaPipe's pose-detector pattern (Add -> ReLU6 -> DepthToSpace, which onnx2tf 1.29 fed channels-first),
its palm detector's (Add -> PReLU, which it then wrote as RELU/ABS/SUB/MUL/ADD with TRANSPOSEs) and one layer made to break int8: plain int8 builds and misses its gate; --mixed auto keeps that layer out of
int8 under the rebuild's name; --keep-float with the .tflite's own layer name reaches the same op."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import run_cli
from test_mixed import plant_channel_zero
from conftest import tree_digest


@pytest.fixture(scope="module")
def pose_like(tmp_path_factory):
    """Conv -> `outlier` conv (weights of 1000 on an input channel that is always 0: no effect in float, every
    per-channel int8 weight scale of it set by the 1000s) -> + conv -> ReLU6 -> DepthToSpace -> conv -> + conv ->
    PReLU -> pool -> head, as a float .tflite, and 48 random samples."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(0)
    layers = keras.layers
    image = keras.Input((8, 8, 1), batch_size=1, name="image")
    dead = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(image)
    outlier = layers.Conv2D(16, 3, padding="same", activation="relu", name="outlier")(dead)
    y = layers.ReLU(6.0, name="relu6")(layers.Add(name="add")([outlier, layers.Conv2D(16, 3, padding="same",
                                                                                       name="conv3")(outlier)]))
    y = layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2), name="d2sp")(y)
    y = layers.Conv2D(4, 1, name="conv4")(y)
    y = layers.PReLU(shared_axes=[1, 2], name="prelu")(layers.Add(name="add2")([y, layers.Conv2D(4, 1, name="conv5")(y)]))
    model = keras.Model(image, layers.Dense(4, name="head")(layers.GlobalAveragePooling2D(name="pool")(y)))
    model.get_layer("prelu").set_weights([np.full((1, 1, 4), 0.25, np.float32)])
    plant_channel_zero(model, -1.0, "outlier", 1000.0)
    directory = tmp_path_factory.mktemp("rebuild")
    (directory / "pose_like.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    np.savez(directory / "data.npz", x=np.random.default_rng(0).random((48, 8, 8, 1), dtype=np.float32))
    return directory / "pose_like.tflite", directory / "data.npz"


def convert(capsys, model, data, out, *args) -> dict:
    result = run_cli(capsys, "convert", model, "--target", "cpu-int8", "--format", "tflite", "--data", data,
                     "--out", out, "--calib-samples", "16", "--runs", "1", "--warmup", "0", "--processes", "1", *args)
    assert result.code == 0, result.err
    return next(a for a in json.loads((out / "report.json").read_text())["artifacts"] if a["role"] == "target")


def load(path):
    from edgekit.tflite_file import load
    return load(path)


def float_convs(path) -> list[float]:
    """The largest weight of each CONV_2D left in float."""
    tensors, ops, _, _ = load(path)
    return [float(np.max(tensors[op.inputs[1]].data)) for op in ops
            if op.kind == "CONV_2D" and tensors[op.outputs[0]].dtype == "float32"]


def test_mixed_auto_keeps_the_broken_layer_of_a_rebuilt_tflite_under_the_rebuilds_name(pose_like, capsys, tmp_path):
    model, data = pose_like
    before = tree_digest(model)
    artifact = convert(capsys, model, data, tmp_path / "mixed", "--mixed", "auto")
    assert artifact["status"] == "ok" and artifact["fidelity"]["verified"], artifact.get("reason")
    assert any("rebuilt from the .tflite input" in n for n in artifact["notes"]), artifact["notes"]
    m = artifact["mixed"]
    assert not m["history"][0]["verified"] and m["gate_met"] and len(m["kept"]) == 1, m
    assert m["kept"][0]["name"].startswith("tf.") and m["kept"][0]["snr_db"] < 15, m["kept"]  # onnx2tf's scope
    assert float_convs(tmp_path / "mixed" / "model.tflite") == [1000.0]  # exactly the outlier conv is float
    kinds = [op.kind for op in load(tmp_path / "mixed" / "model.tflite")[1]]
    assert "PRELU" in kinds and "ABS" not in kinds and "TRANSPOSE" not in kinds, kinds
    assert tree_digest(model) == before


def test_keep_float_with_the_tflite_sources_own_layer_name(pose_like, capsys, tmp_path):
    model, data = pose_like
    artifact = convert(capsys, model, data, tmp_path / "kept", "--keep-float", "outlier")
    assert artifact["status"] == "ok" and artifact["fidelity"]["verified"], artifact.get("reason")
    assert 1000.0 in float_convs(tmp_path / "kept" / "model.tflite")


def test_outputs_are_put_back_in_order_by_the_saved_models_output_names(tmp_path):
    """Two [1, 1] outputs (their values no help: a scalar has no direction) and a third, in a SavedModel whose
    signature names them output_0..output_2 as onnx2tf does; the TFLite graph's outputs shuffled."""
    import tensorflow as tf
    from edgekit.backends import _onnx2tf
    from edgekit.backends._tflite_rebuild import signature_order
    module = tf.Module()
    module.serve = tf.function(lambda x: {"output_0": x[:, :1] * 2.0, "output_1": x[:, 1:2] + 1.0, "output_2": x * 3.0},
                               input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=module.serve)
    path = tmp_path / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert())
    _onnx2tf._reorder(path, "outputs", signature_order(path, 3))
    _onnx2tf._reorder(path, "outputs", [2, 0, 1])
    assert signature_order(path, 3) == [1, 2, 0]
    _onnx2tf._reorder(path, "outputs", signature_order(path, 3))
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.array([[1, 2, 3, 4]], np.float32))
    interpreter.invoke()
    got = [interpreter.get_tensor(d["index"]).ravel().tolist() for d in interpreter.get_output_details()]
    assert got == [[2.0], [3.0], [3.0, 6.0, 9.0, 12.0]]
    assert signature_order(path, 2) is None  # the names must cover exactly the float model's outputs
