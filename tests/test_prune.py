"""Pruning: exactness of structured pruning on dead channels (BN, residual, depthwise, flatten),
magnitude sparsity, the ONNX graph rewrite, and the CLI on Keras and ONNX inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli
from edgekit.passes import prune_keras, prune_onnx
from edgekit.passes.prune import PruneConfig

CHANNELS = PruneConfig(method="channels", amount=0.5)


def _kill(layer, dead):
    """Zero the filters `dead` of a conv layer: their outputs are exactly zero."""
    kernel, *rest = layer.get_weights()
    kernel[..., dead] = 0
    layer.set_weights([kernel, *[np.where(np.isin(np.arange(len(r)), dead), 0, r) for r in rest]])


def _same_outputs(a, b, shape):
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def _sequential_with_bn_and_flatten():
    import keras
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(8, 3, padding="same", use_bias=False, name="c1"),
                              L.BatchNormalization(name="bn"), L.ReLU(name="r"),
                              L.Conv2D(6, 3, padding="same", name="c2"), L.Flatten(name="f"),
                              L.Dense(5, name="d")])
    dead = [0, 2, 5, 7]
    _kill(model.get_layer("c1"), dead)
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    beta[dead], mean[dead] = 0, 0  # dead channels stay zero through BN
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    return model


def test_channel_pruning_removes_dead_channels_exactly_through_bn_and_flatten():
    model = _sequential_with_bn_and_flatten()
    config = PruneConfig(method="channels", amount=0.5, skip=["c2"])
    smaller, plan = prune_keras.channels(model, config)
    assert smaller.get_layer("c1").filters == 4 and smaller.get_layer("c2").filters == 6
    assert smaller.get_layer("bn").get_weights()[0].shape == (4,)
    assert smaller.get_layer("d").get_weights()[0].shape == (6 * 6 * 6, 5)
    _same_outputs(model, smaller, (6, 6, 2))
    assert smaller.count_params() < model.count_params()


def test_residual_add_group_is_pruned_together():
    import keras
    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((6, 6, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(8, 1, name="b")(inputs)
    x = L.ReLU(name="r")(L.Add(name="add")([a, b]))
    out = L.Dense(3, name="d")(L.GlobalAveragePooling2D(name="gap")(x))
    model = keras.Model(inputs, out)
    for name in ("a", "b"):
        _kill(model.get_layer(name), [1, 3, 4, 6])
    smaller, plan = prune_keras.channels(model, CHANNELS)
    assert smaller.get_layer("a").filters == smaller.get_layer("b").filters == 4
    assert plan.space["a"] == plan.space["b"]  # one group
    _same_outputs(model, smaller, (6, 6, 3))


def test_depthwise_follows_the_conv_before_it():
    import keras
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(8, 3, padding="same", name="c"),
                              L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw"),
                              L.Conv2D(4, 1, name="pw"), L.GlobalAveragePooling2D(), L.Dense(3, name="d")])
    _kill(model.get_layer("c"), [0, 1, 2, 3])
    smaller, _ = prune_keras.channels(model, PruneConfig(method="channels", amount=0.5, skip=["pw"]))
    assert smaller.get_layer("dw").get_weights()[0].shape == (3, 3, 4, 1)
    _same_outputs(model, smaller, (6, 6, 2))


def test_onnx_graph_pruning_matches_the_keras_model(tmp_path):
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    model = _sequential_with_bn_and_flatten()
    fn = tf.function(lambda x: model(x, training=False))
    onnx_model, _ = tf2onnx.convert.from_function(fn, input_signature=[tf.TensorSpec((1, 6, 6, 2), tf.float32, "x")])
    pruned, plan = prune_onnx.channels(onnx_model, PruneConfig(method="channels", amount=0.5))
    x = np.random.default_rng(0).random((4, 6, 6, 2), dtype=np.float32)
    run = lambda m, v: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": v})[0]
    assert sum(t.ByteSize() for t in pruned.graph.initializer) < sum(t.ByteSize() for t in onnx_model.graph.initializer)
    # The same weights rank the same channels in both frameworks: the pruned ONNX graph computes what
    # the pruned Keras model computes (live channels are removed too, so not what the original did).
    keras_pruned, keras_plan = prune_keras.channels(model, PruneConfig(method="channels", amount=0.5))
    assert sorted(len(k) for k in plan.keep.values()) == sorted(len(k) for k in keras_plan.keep.values())
    expected = keras_pruned(x, training=False).numpy()
    got = np.concatenate([run(pruned, x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_onnx_pruning_names_the_blocking_node():
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
             helper.make_node("LRN", ["a"], ["b"], size=3, name="norm"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from edgekit.errors import EdgekitError
    with pytest.raises(EdgekitError, match=r"norm \(LRN\)"):
        prune_onnx.channels(model, CHANNELS)


def test_magnitude_sparsity_per_layer_and_global():
    from edgekit import zoo
    model = zoo.build("resnet8")
    per_layer, _, rows = prune_keras.magnitude(model, PruneConfig(method="magnitude", amount=0.8))
    sparsity = {r["layer"]: r["sparsity"] for r in rows}
    assert sparsity["conv0"] == 0 and sparsity["probs"] == 0  # first and last are skipped
    assert all(abs(v - 0.8) < 0.01 for k, v in sparsity.items() if k not in ("conv0", "probs"))
    _, _, rows = prune_keras.magnitude(model, PruneConfig(method="magnitude", amount=0.8, scope="global",
                                                          skip=["Dense"], skip_first_last=False))
    by_layer = {r["layer"]: r for r in rows}
    pruned = [r for k, r in by_layer.items() if k != "probs"]
    overall = sum(r["zeros"] for r in pruned) / sum(r["params"] for r in pruned)
    assert abs(overall - 0.8) < 0.01 and by_layer["probs"]["sparsity"] == 0
    assert len({round(r["sparsity"], 2) for r in pruned}) > 2  # global ranking: layers differ


def convert(capsys, *args):
    result = run_cli(capsys, "convert", *args, "--runs", "2", "--warmup", "0")
    assert result.code == 0, result.err
    return result


def test_cli_magnitude_then_int8_shrinks_gzip(small_keras, tiny_eval, capsys, tmp_path):
    common = (small_keras, "--target", "cpu-int8", "--data", tiny_eval, "--calib-samples", "8", "--format", "tflite")
    convert(capsys, *common, "--out", tmp_path / "plain")
    convert(capsys, *common, "--out", tmp_path / "pruned", "--prune", "magnitude:0.8")
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    pruned = json.loads((tmp_path / "pruned" / "report.json").read_text())
    gzip = lambda r: next(a for a in r["artifacts"] if a["role"] == "target")["size"]["gzip_bytes"]
    assert gzip(pruned) < 0.7 * gzip(plain)
    layers = {r["layer"]: r["sparsity"] for r in pruned["pruning"]["layers"]}
    assert layers["conv2"] > 0.79 and layers["conv1"] == 0
    assert [s["stage"] for s in pruned["pruning"]["stages"]] == ["original", "pruned (magnitude:0.8)",
                                                                  "pruned (magnitude:0.8) + int8"]
    assert "Pruning stages" in (tmp_path / "pruned" / "report.md").read_text()


@pytest.mark.parametrize("kind", ["keras", "onnx"])
def test_cli_channels_on_every_format(kind, small_keras, make_model, capsys, tmp_path):
    model = small_keras if kind == "keras" else make_model("onnx")
    convert(capsys, model, "--prune", "channels:0.5", "--out", tmp_path / "o")
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    original, pruned = report["pruning"]["stages"][:2]
    assert pruned["params"] < original["params"] and pruned["macs"] < 0.6 * original["macs"]
    assert pruned["size"]["bytes"] < original["size"]["bytes"]
    for artifact in report["artifacts"]:
        assert artifact["status"] == "ok" and artifact["fidelity"]["verified"], artifact


def test_cli_finetune_recovers_and_is_reported(small_keras, tiny_eval, capsys, tmp_path):
    convert(capsys, small_keras, "--prune", "channels:0.5", "--finetune-epochs", "2", "--data", tiny_eval,
            "--format", "onnx", "--out", tmp_path / "o")
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    stages = [s["stage"] for s in report["pruning"]["stages"]]
    assert stages == ["original", "pruned (channels:0.5)", "fine-tuned (2 epochs)"]
    assert report["pruning"]["finetune"]["samples"] == 24 and "held apart" in report["pruning"]["finetune"]["data"]
    assert report["data"]["samples"] == 24  # the other half is scored


def test_cli_pruning_errors(make_model, small_keras, capsys):
    assert_user_error(run_cli(capsys, "convert", small_keras, "--prune", "magnitude:1.5"), "--prune")
    assert_user_error(run_cli(capsys, "convert", small_keras, "--prune", "random:0.5"), "METHOD:AMOUNT")
    assert_user_error(run_cli(capsys, "convert", make_model("tflite"), "--prune", "channels:0.5"),
                      "pruning needs a Keras or ONNX model")
    assert_user_error(run_cli(capsys, "convert", make_model("onnx"), "--prune", "channels:0.5",
                              "--finetune-epochs", "1"), "fine-tuning needs labelled data")
