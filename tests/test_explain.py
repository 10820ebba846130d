"""Layer-wise int8 divergence (edgekit.divergence, `edgekit explain`) on a model made to break int8 at a
known layer: `bad` reads one input that is always zero through a weight of 1000, so per-channel int8
weights keep only that weight and the layer's real output is lost; the layers before it stay close."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit import divergence
from edgekit.targets import get_target

FORMATS = {"tflite": "model.tflite", "onnx": "model.onnx", "openvino": "model.xml"}


def build_broken_layer_model(path: Path) -> Path:
    import keras
    rng = np.random.default_rng(0)
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(32, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(32, activation="relu", name="d2")(h)
    h = keras.layers.Dense(32, activation="relu", name="bad")(h)
    model = keras.Model(inp, keras.layers.Dense(8, name="head")(h))
    for layer in model.layers[1:]:
        w, b = layer.get_weights()
        layer.set_weights([rng.normal(0, 0.4, w.shape).astype("float32"), rng.normal(0, 0.1, b.shape).astype("float32")])
    w, b = model.get_layer("d2").get_weights()
    w[:, 0], b[0] = 0.0, -1000.0  # unit 0 of d2 is never active
    model.get_layer("d2").set_weights([w, b])
    w, b = model.get_layer("bad").get_weights()
    w[0, :] = 1000.0  # ... and `bad` reads it with a weight that swallows every other weight's int8 step
    model.get_layer("bad").set_weights([w, b])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The model converted for cpu-int8 (three formats) and fpga-int8, with its data."""
    from edgekit.pipeline import convert
    root = tmp_path_factory.mktemp("explain")
    model = build_broken_layer_model(root / "m.keras")
    x = np.random.default_rng(1).normal(0, 1, (40, 16)).astype(np.float32)
    np.savez(root / "data.npz", x=x)
    common = dict(data=str(root / "data.npz"), calib_samples=16, runs=1, warmup=0, processes=1)
    for target in ("cpu-int8", "fpga-int8"):
        convert(model, target=target, out=str(root / target), **common)
    return root


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "openvino", "fpga"])
def test_layer_divergence_names_the_broken_layer_first(broken, fmt):
    out = broken / ("fpga-int8" if fmt == "fpga" else "cpu-int8")
    name = FORMATS.get(fmt, "model.tflite")
    spec = get_target("fpga-int8").profile.accelerator if fmt == "fpga" else None
    x = np.load(broken / "data.npz")["x"][:6]
    rows = divergence.layer_divergence(out / name, fmt, out / "fp32" / name, x, spec)
    assert [r.index for r in rows] == list(range(len(rows)))
    first = divergence.first_divergent(rows, divergence.gate_db("int8"))
    assert first is not None and first.layer == "bad", [(r.layer, r.snr_db) for r in rows]
    assert first.snr_db < 5 and first.matched_by == "name" and first.samples == 6
    assert first.op_type in ("FULLY_CONNECTED", "Gemm", "MatMul")
    assert first.output_scale is None or first.output_scale > 0
    assert any(s is not None and s > 0 for s in first.input_scales)
    before = [r for r in rows if r.index < first.index and r.snr_db is not None and r.op_type != "input"]
    assert before and all(r.snr_db >= divergence.gate_db("int8") for r in before)
    assert {r.layer for r in before} >= {"d1", "d2"}
    assert divergence.worst(rows, 5)[0].snr_db == min(r.snr_db for r in rows if r.snr_db is not None)
    json.dumps([r.as_dict() for r in rows])
