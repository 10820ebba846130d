"""Layer-wise int8 divergence (edgekit.divergence, `edgekit explain`) on a model made to break int8 at a
known layer: `bad` reads one input that is always zero through a weight of 1000, so per-channel int8
weights keep only that weight and the layer's real output is lost; the layers before it stay close."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli
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
    with pytest.MonkeyPatch.context() as env:  # this session's cache and timing lock, as `isolated` sets them
        env.setenv("EDGEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "edgekit-cache"))
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


def test_convert_names_the_op_in_mismatch_rows(broken):
    for target, formats in (("cpu-int8", ("tflite", "onnx", "openvino")), ("fpga-int8", ("tflite",))):
        report = json.loads((broken / target / "report.json").read_text())
        quantized = [a for a in report["artifacts"] if a["role"] == "target"]
        assert sorted(a["format"] for a in quantized) == sorted(formats)
        markdown = (broken / target / "report.md").read_text()
        for a in quantized:
            assert a["status"] == "ok" and not a["fidelity"]["verified"]
            assert a["reason"].startswith("first op below 15 dB: ") and "(layer bad)" in a["reason"], a["reason"]
            assert a["divergence"]["first_divergent"]["layer"] == "bad"
            assert f"MISMATCH {a['format']} {a['precision']}: {a['reason']}" in markdown
        fp32 = [a for a in report["artifacts"] if a["role"] == "baseline"]
        assert all(a["fidelity"]["verified"] and "reason" not in a for a in fp32)


def test_explain_cli_on_an_output_directory(broken, capsys):
    result = run_cli(capsys, "explain", broken / "cpu-int8", "--samples", "3")
    assert result.code == 0, result.err
    blocks = [b for b in result.out.split("\n\n") if b.strip()]
    assert [b.split()[0] for b in blocks] == ["tflite", "onnx", "openvino"]
    for block in blocks:
        first = next(ln for ln in block.splitlines() if "first op below 15 dB" in ln)
        assert "(layer bad)" in first and "SNR 0.0 dB" in first and "input scale" in first and "output scale" in first
        assert block.count("\n    #") == 5  # the 5 worst
        assert "3 samples of" in block and "(the data convert scored on)" in block
    result = run_cli(capsys, "explain", broken / "cpu-int8" / "model.onnx", "--json", "--data", broken / "data.npz")
    assert result.code == 0, result.err
    entry, = json.loads(result.out)["artifacts"]
    assert entry["first_divergent"]["layer"] == "bad" and entry["first_divergent"]["op_type"] == "Gemm"
    assert entry["samples"] == 8 and len(entry["worst"]) == 5 and entry["gate_db"] == 15.0
    assert [r["index"] for r in entry["ops"]] == list(range(len(entry["ops"])))


def test_explain_cli_fpga_artifact_alone(broken, capsys, tmp_path):
    result = run_cli(capsys, "explain", broken / "fpga-int8" / "model.tflite", "--target", "fpga-int8", "--json",
                     "--samples", "2", "--data", broken / "data.npz")
    assert result.code == 0, result.err
    entry, = json.loads(result.out)["artifacts"]
    assert entry["format"] == "fpga" and entry["how"].startswith("emulated") and entry["precision"] == "int8-io"
    assert entry["first_divergent"]["layer"] == "bad"


def test_explain_user_errors(broken, capsys, tmp_path):
    assert_user_error(run_cli(capsys, "explain", tmp_path / "nothing"), "not found")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli(capsys, "explain", tmp_path / "empty"), "not an edgekit convert output")
    lone = tmp_path / "lone.tflite"
    lone.write_bytes((broken / "cpu-int8" / "model.tflite").read_bytes())
    assert_user_error(run_cli(capsys, "explain", lone), "no float model", "--reference")
    assert_user_error(run_cli(capsys, "explain", lone, "--reference", broken / "cpu-int8" / "fp32" / "model.onnx"),
                      "not a tflite model")
    assert_user_error(run_cli(capsys, "explain", broken / "cpu-int8" / "fp32"), "not an edgekit convert output")
    (tmp_path / "fp32").mkdir()
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes((broken / "cpu-int8" / "model.onnx").read_bytes()[:1000])  # truncated
    (tmp_path / "fp32" / "model.onnx").write_bytes((broken / "cpu-int8" / "fp32" / "model.onnx").read_bytes())
    assert_user_error(run_cli(capsys, "explain", corrupt, "--samples", "1"), "1 of 1 artifact(s) not explained",
                      "intact artifact")


def test_matching_positional_names_fusions_and_look_alikes():
    """match() on hand-made graphs: what onnxruntime's and OpenVINO's rewrites of a float graph look like."""
    from edgekit.divergence.base import Node
    rng = np.random.default_rng(0)
    x, conv, bn = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    hswish = np.maximum(bn, 0) * 0.5

    def node(key, name, kind, family=None, named=True):
        return Node(key, name, kind, key, {name} if named else set(), family=family)

    ref = [node("x", "x", "input"), node("c", "a/Conv#1", "Conv", "a/Conv|Conv", named=False),
           node("b", "a/BatchNormalization", "BatchNormalization"), node("h", "a/HardSwish", "HardSwish"),
           node("o", "Add_7", "Add", "Add", named=False)]
    want = {"x": x, "c": conv, "b": bn, "h": hswish, "o": hswish + 1}
    # int8: BatchNormalization folded into the Conv (which keeps the Conv's name, renumbered), HardSwish split
    # into HardSigmoid + Mul, OpenVINO-style positional Add renumbered
    art = [node("x", "x", "input"), node("c", "a/Conv#4", "Conv", "a/Conv|Conv", named=False),
           node("s", "HardSigmoid", "HardSigmoid", "HardSigmoid|HardSigmoid", named=False),
           node("m", "Mul", "Mul", "Mul|Mul", named=False), node("o", "Add_9", "Add", "Add", named=False)]
    got = {"x": x, "c": bn + 0.01, "s": np.clip(bn / 6 + 0.5, 0, 1), "m": hswish + 0.01, "o": hswish + 1.01}
    pairs = divergence.match(art, ref, got, want)
    assert pairs["x"][:2] == (0, "name")
    assert pairs["c"][:2] == (2, "name family + order, fused chain") and pairs["c"][2] == 1
    assert pairs["m"] == (3, "shape+order") and "s" not in pairs  # the look-alike has no float twin
    assert pairs["o"] == (4, "name family + order")
