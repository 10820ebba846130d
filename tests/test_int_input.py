"""int8 for models whose input is integer (byte values, token ids) and that build a one-hot inside the graph,
as the corpus's magika does: an int32 byte input -> Equal broadcast against range(257) -> Cast -> Conv1D ->
a LayerNorm written out in elementwise ops (mean, E[x^2] - mean^2, rsqrt; the conv's bias makes the mean
large against the spread, as magika's padded rows do) -> max pool -> Dense softmax. TFLite fuses the
Equal/Cast into ONE_HOT, whose int8 kernel copies its on/off constants raw (backends/_onehot.py); the
normalization's statistics have no int8 form (backends/_norm_stats.py). Before both fixes the int8 artifacts
missed the gate in all three formats (TFLite -18.1 dB at the ONE_HOT; with it fixed, 10.9/10.8/9.7 dB at the
LayerNorm's Sub) and `edgekit explain` failed on the ONNX one (float fed to an int32 input); every tap now
feeds the input as the artifact declares it."""
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
    h = keras.layers.Conv1D(16, 5, name="conv", bias_initializer=keras.initializers.Constant(4.0))(onehot)
    mean = keras.ops.mean(h, -1, keepdims=True)
    var = keras.ops.maximum(keras.ops.mean(h * h, -1, keepdims=True) - mean * mean, 0.0)
    h = (h - mean) * keras.ops.rsqrt(var + 1e-6)
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
    for fmt in int8:
        assert any(n.startswith("normalization statistics kept in float") for n in int8[fmt]["notes"]), fmt


def test_normalization_statistics_found_in_every_format_and_nothing_else(converted):
    import onnx
    import openvino as ov
    from edgekit.backends import _norm_stats
    fp32 = converted / "out" / "fp32"
    found = {"onnx": _norm_stats.onnx_nodes(onnx.load(fp32 / "model.onnx")),
             "tflite": _norm_stats.tflite_nodes(fp32 / "model.tflite"),
             "openvino": _norm_stats.openvino_nodes(ov.Core().read_model(fp32 / "model.xml"))}
    for fmt, (nodes, constants) in found.items():
        kept = set(_norm_stats.float_ops(nodes, constants))
        kinds = {n[1].replace("_", "").lower() for n in nodes if n[0] in kept}
        assert kinds & {"sqrt", "rsqrt"} and kinds & {"reducemean", "mean", "reducesum", "sum"}, (fmt, kinds)
        assert not kinds & {"conv", "conv2d", "convolution", "matmul", "gemm", "fullyconnected", "onehot",
                            "equal", "softmax"}, (fmt, kinds)
        without = [n for n in nodes if n[1].replace("_", "").lower() not in ("sqrt", "rsqrt")]
        assert _norm_stats.float_ops(without, constants) == []  # no square root: no normalization


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_layer_divergence_feeds_the_int32_input(converted, fmt):
    out, name = converted / "out", FILES[fmt]
    x = np.load(converted / "data.npz")["x"][:3]
    rows = divergence.layer_divergence(out / name, fmt, out / "fp32" / name, x)
    assert rows[0].op_type == "input" and rows[0].snr_db is not None and rows[0].snr_db > 100  # fed exactly
    last = [r for r in rows if r.snr_db is not None][-1]  # the output: a verified artifact is above the gate
    assert last.snr_db >= divergence.gate_db("int8"), [(r.op_type, r.snr_db) for r in rows]


def test_explain_runs_on_the_int8_artifacts(converted, capsys):
    result = run_cli(capsys, "explain", converted / "out", "--samples", "2", "--json")
    assert result.code == 0, result.err
    entries = json.loads(result.out)["artifacts"]
    assert sorted(e["format"] for e in entries) == ["onnx", "openvino", "tflite"]
    for e in entries:
        assert "error" not in e and e["samples"] == 2 and e["ops"][0]["snr_db"] > 100, e.get("error")
