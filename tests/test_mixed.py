"""--mixed auto: a model with one layer made to break int8 misses the gate as plain int8 in every format and
passes with --mixed auto, keeping exactly that layer out of int8 (TFLite denylist, onnxruntime
nodes_to_exclude, NNCF ignored_scope)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli

FORMATS = ("tflite", "onnx", "openvino")


def three_conv_cnn(middle: str, name: str):
    """conv1 -> `middle` -> conv3 -> pool -> head on 8x8x1 inputs, seeded (the fixtures then break one layer)."""
    import keras
    keras.utils.set_random_seed(0)
    layers = keras.layers
    return keras.Sequential([keras.Input((8, 8, 1), name="image"),
                             layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
                             layers.Conv2D(16, 3, padding="same", activation="relu", name=middle),
                             layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3"),
                             layers.GlobalAveragePooling2D(name="pool"),
                             layers.Dense(4, name="head")], name=name)


def plant_channel_zero(model, conv1_bias: float, layer: str, weight: float) -> None:
    """conv1's channel 0 made constant (zero kernel, `conv1_bias`: -1 is a dead ReLU unit, 1000 an activation
    outlier) and `layer`'s weights reading that channel set to `weight`: no effect in float either way."""
    kernel, bias = model.get_layer("conv1").get_weights()
    kernel[..., 0], bias[0] = 0.0, conv1_bias
    model.get_layer("conv1").set_weights([kernel, bias])
    kernel, bias = model.get_layer(layer).get_weights()
    kernel[:, :, 0, :] = weight
    model.get_layer(layer).set_weights([kernel, bias])


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    """A small CNN whose `outlier` conv has weights of 1000 on an input channel that is always 0 (a dead ReLU
    unit of conv1): no effect in float, but every per-channel int8 weight scale of that conv is set by the
    1000s, so its other weights round to 0 in int8."""
    model = three_conv_cnn("outlier", "mixed")
    plant_channel_zero(model, -1.0, "outlier", 1000.0)
    directory = tmp_path_factory.mktemp("mixed")
    model.save(directory / "outlier.keras")
    np.savez(directory / "data.npz", x=np.random.default_rng(0).random((48, 8, 8, 1), dtype=np.float32))
    return directory / "outlier.keras", directory / "data.npz"


def convert(capsys, model, data, out, *args):
    result = run_cli(capsys, "convert", model, "--target", "cpu-int8", "--data", data, "--out", out, "--calib-samples",
                     "16", "--runs", "1", "--warmup", "0", "--processes", "1", *args)
    assert result.code == 0, result.err
    return {a["format"]: a for a in json.loads((out / "report.json").read_text())["artifacts"] if a["role"] == "target"}


def test_mixed_auto_keeps_exactly_the_broken_layer_out_of_int8(outlier_model, capsys, tmp_path):
    model, data = outlier_model
    plain = convert(capsys, model, data, tmp_path / "plain")
    mixed = convert(capsys, model, data, tmp_path / "mixed", "--mixed", "auto")
    for fmt in FORMATS:
        assert plain[fmt]["status"] == "ok" and not plain[fmt]["fidelity"]["verified"], (fmt, plain[fmt]["fidelity"])
        assert "mixed" not in plain[fmt]
        artifact = mixed[fmt]
        assert artifact["status"] == "ok" and artifact["fidelity"]["verified"], (fmt, artifact.get("reason"))
        m = artifact["mixed"]
        assert m["gate_met"] and [r["layer"] for r in m["kept"]] == ["outlier"], (fmt, m)
        assert m["kept"][0]["fix"] == "float" and m["kept"][0]["snr_db"] < 15
        assert 2 <= m["rounds"] <= m["max_rounds"] == 20 and not m["history"][0]["verified"]
        assert m["plain"]["size_bytes"] == plain[fmt]["size"]["bytes"] and m["size_vs_plain"] > 1
        assert "latency_ms" in m["plain"] and "latency_vs_plain" in m
        scored = m["plain"]["scored"]  # the same convert's plain build on the scored samples: the plain run's verdict
        assert not scored["verified"] and scored["verified"] == plain[fmt]["fidelity"]["verified"], (fmt, scored)
        assert artifact["ops"]["float_ops"] > plain[fmt]["ops"]["float_ops"], fmt
        assert len(artifact["notes"]) == len(set(artifact["notes"])), artifact["notes"]  # a rebuild's notes once
        share, plain_share = m["int8_share"], m["plain"]["int8_share"]  # the outlier conv: 73,728 of 225,856 MACs
        assert share["macs"] == plain_share["macs"] == 225856 and plain_share["int8_share"] == 1.0, (fmt, share)
        assert share["int8_macs"] == 225856 - 73728, (fmt, share)
    report = (tmp_path / "mixed" / "report.md").read_text()
    assert "## Mixed precision (--mixed auto)" in report and "MIXED onnx int8: gate met" in report
    assert "67% of MACs still int8 (plain int8 build: 100%)" in report and "int8 mixed, 67% int8 MACs" in report
    assert (tmp_path / "mixed" / "int8-plain" / "model.tflite").is_file()


def test_mixed_rounds_out_of_range_is_one_line(outlier_model, capsys, tmp_path):
    model, data = outlier_model
    result = run_cli(capsys, "convert", model, "--data", data, "--out", tmp_path / "o", "--mixed-rounds", "1000")
    assert result.code == 2 and "--mixed-rounds" in result.err


@pytest.mark.parametrize("mixed_section, expected", [("", "auto"), ('[mixed]\nmode = "auto"\n', "auto"),
                                                      ('[mixed]\nmode = "off"\n', None)])
def test_the_issue_spelling_quantize_mixed_is_an_alias_of_mixed_mode(tmp_path, mixed_section, expected):
    from edgekit import targets
    from edgekit.errors import EdgekitError
    path = tmp_path / "p.toml"
    path.write_text(f'name = "p"\n[quantize]\nprecision = "int8"\nmixed = "auto"\n{mixed_section}')
    if expected:
        assert targets.load_profile(path).profile.mixed.mode == expected
        return
    with pytest.raises(EdgekitError) as err:
        targets.load_profile(path)
    assert "quantize.mixed = 'auto'" in str(err.value) and "mixed.mode = 'off'" in str(err.value)
    assert "\n" not in str(err.value)
