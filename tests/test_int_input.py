"""int8 for models whose input is integer (byte values, token ids) and that build a one-hot inside the graph,
as the corpus's magika does: an int32 byte input -> Equal broadcast against range(257) -> Cast -> Conv1D ->
max pool -> Dense softmax. TFLite fuses the Equal/Cast into ONE_HOT, whose int8 kernel copies its on/off
constants raw (backends/_onehot.py); every tap of `edgekit explain` feeds the input as the artifact declares
it (int32), not as float."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clihelp import run_cli
from edgekit import divergence
from edgekit.tflite_file import load

FILES = {"tflite": "model.tflite", "onnx": "model.onnx", "openvino": "model.xml"}
PAD = 256  # magika's padding token: one past the byte values


def build_byte_model(path: Path) -> Path:
    import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,), dtype="int32", name="bytes")
    onehot = keras.ops.cast(keras.ops.equal(keras.ops.expand_dims(inp, -1), keras.ops.arange(PAD + 1, dtype="int32")),
                            "float32")
    h = keras.layers.Conv1D(16, 5, activation="relu", name="conv")(onehot)
    h = keras.layers.GlobalMaxPooling1D(name="pool")(h)
    keras.Model(inp, keras.layers.Dense(8, activation="softmax", name="head")(h)).save(path)
    return path


def byte_samples(count: int, seed: int) -> np.ndarray:
    """Printable bytes, the tail padded as magika pads a short file."""
    x = np.random.default_rng(seed).integers(32, 127, (count, 64))
    x[:, 48:] = PAD
    return x.astype(np.int32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from edgekit.pipeline import convert
    root = tmp_path_factory.mktemp("intinput")
    model = build_byte_model(root / "m.keras")
    np.savez(root / "data.npz", x=byte_samples(16, 1))
    np.savez(root / "calib.npz", x=byte_samples(16, 2))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EDGEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "edgekit-cache"))
        convert(model, target="cpu-int8", out=str(root / "out"), data=str(root / "data.npz"),
                calib=str(root / "calib.npz"), runs=1, warmup=0, processes=1)
    return root


def test_int8_verified_in_every_format_with_the_one_hot_exact_in_int8(converted):
    report = json.loads((converted / "out" / "report.json").read_text())
    int8 = {a["format"]: a for a in report["artifacts"] if a["role"] == "target" and a["precision"] == "int8"}
    assert sorted(int8) == ["onnx", "openvino", "tflite"]
    for fmt, a in int8.items():
        assert a["status"] == "ok" and a["fidelity"]["verified"], (fmt, a["fidelity"], a.get("reason"))
        assert a["fidelity"]["top1_agreement"] == 1.0
    assert any("ONE_HOT on/off values requantized" in n for n in int8["tflite"]["notes"])
    tensors, ops, _, _ = load(converted / "out" / "model.tflite")
    one_hot, = [op for op in ops if op.kind == "ONE_HOT"]
    assert tensors[one_hot.outputs[0]].dtype == "int8"  # kept int8, not float
    assert {tensors[i].dtype for op in ops if op.kind in ("CONV_2D", "FULLY_CONNECTED") for i in op.inputs[:2]} \
        == {"int8"}


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_layer_divergence_feeds_the_int32_input(converted, fmt):
    out, name = converted / "out", FILES[fmt]
    x = np.load(converted / "data.npz")["x"][:3]
    rows = divergence.layer_divergence(out / name, fmt, out / "fp32" / name, x)
    assert rows[0].op_type == "input" and rows[0].snr_db is not None and rows[0].snr_db > 100  # fed exactly
    assert divergence.first_divergent(rows, divergence.gate_db("int8")) is None, \
        [(r.op_type, r.snr_db) for r in rows]


def test_explain_runs_on_the_int8_artifacts(converted, capsys):
    result = run_cli(capsys, "explain", converted / "out", "--samples", "2", "--json")
    assert result.code == 0, result.err
    entries = json.loads(result.out)["artifacts"]
    assert sorted(e["format"] for e in entries) == ["onnx", "openvino", "tflite"]
    for e in entries:
        assert "error" not in e and e["samples"] == 2 and e["first_divergent"] is None, e.get("error")
