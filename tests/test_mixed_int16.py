"""--mixed auto's 16-bit fixes: on a target whose [mixed] fixes put int16x8 first, ONNX keeps the culprit layer
in int8 weights with 16-bit activations (onnxruntime TensorQuantOverrides: int16 Q/DQ), and TFLite, whose
16x8 exists for a whole model only, falls back to an int16x8 build when per-layer keeping misses the gate
(here: its one round for per-layer keeping used up, --mixed-rounds 2)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from clihelp import run_cli
from test_mixed import plant_channel_zero, three_conv_cnn

PROFILE = (__import__("pathlib").Path(__file__).resolve().parents[1] / "targets" / "cpu-int8.toml").read_text()


@pytest.fixture(scope="module")
def activation_outlier(tmp_path_factory):
    """A small CNN whose conv1 writes a constant 1000 on channel 0 that `wide` ignores (zero weights): no effect
    in float, but that channel sets conv1's output range, so in int8 (step ~4) every other channel rounds to 0
    and `wide` sees nothing; with 16-bit activations (step ~0.015) they survive."""
    model = three_conv_cnn("wide", "mixed16")
    plant_channel_zero(model, 1000.0, "wide", 0.0)
    directory = tmp_path_factory.mktemp("mixed16")
    model.save(directory / "outlier.keras")
    np.savez(directory / "data.npz", x=np.random.default_rng(0).random((48, 8, 8, 1), dtype=np.float32))
    profiles = directory / "targets"
    profiles.mkdir()
    (profiles / "accel-int8.toml").write_text(PROFILE.replace('name = "cpu-int8"', 'name = "accel-int8"').replace(
        "[bench]", '[mixed]\nfixes = ["int16x8", "float"]\n\n[bench]'))
    return directory / "outlier.keras", directory / "data.npz", profiles


def test_int16x8_fix_per_layer_in_onnx_and_whole_model_in_tflite(activation_outlier, capsys, tmp_path):
    model, data, profiles = activation_outlier
    out = tmp_path / "o"
    result = run_cli(capsys, "convert", model, "--target", "accel-int8", "--targets-dir", profiles, "--data", data,
                     "--out", out, "--calib-samples", "16", "--runs", "1", "--warmup", "0", "--processes", "1",
                     "--format", "onnx", "--format", "tflite", "--mixed", "auto", "--mixed-rounds", "2")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    recipe = report["recipe"]["passes"]
    assert recipe["mixed"]["fixes"] == ["int16x8", "float"] and recipe["quantize"]["keep_int16"] == []
    got = {a["format"]: a for a in report["artifacts"] if a["role"] == "target"}
    for fmt, artifact in got.items():  # the tolerance check: plain int8 missed, the fixed build is verified
        m = artifact["mixed"]
        assert not m["history"][0]["verified"] and m["gate_met"], (fmt, m)
        assert artifact["status"] == "ok" and artifact["fidelity"]["verified"], (fmt, artifact.get("reason"))
        assert "latency_ms" in artifact and "latency_ms" in m["plain"] and m["size_vs_plain"] > 0

    onnx_entry = got["onnx"]
    assert onnx_entry["precision"] == "int8" and [(r["layer"], r["fix"]) for r in onnx_entry["mixed"]["kept"]] == \
        [("wide", "int16x8")], onnx_entry["mixed"]
    _assert_16bit_activations_into(out / onnx_entry["file"], "wide")

    lite = got["tflite"]  # per-layer float only: the whole-model 16x8 fallback, said as such
    fallback = lite["mixed"]["fallback"]
    assert lite["precision"] == "int16x8" and fallback["chosen"] and fallback["precision"] == "int16x8"
    assert lite["mixed"]["kept"] == [] and lite["mixed"]["plain"]["precision"] == "int8"
    assert "ran" in fallback["why"] or "round" in fallback["why"]
    from edgekit import tflite_file
    tensors, ops, _, _ = tflite_file.load(out / lite["file"])
    conv = next(o for o in ops if o.kind == "CONV_2D" and "wide" in tensors[o.outputs[0]].name)
    assert [tensors[i].dtype for i in conv.inputs[:2]] + [tensors[conv.outputs[0]].dtype] == ["int16", "int8", "int16"]
    text = (out / "report.md").read_text()
    assert "MIXED tflite int16x8: gate met" in text and "whole model built in int16x8" in text
    assert "| tflite | 2 | (whole model int16x8) |" in text
    assert re.search(r"\| onnx \| 2 \| wide\w* \(int16x8\) \|", text)
    assert (out / "int8-plain" / "model.tflite").is_file()


def _assert_16bit_activations_into(path, layer: str) -> None:
    """The ONNX graph: opset 21; the DequantizeLinear feeding `layer`'s Conv its activations is 16-bit, the one
    feeding it its weights int8, and the first conv's activations stay 8-bit."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    kept = [n for n in convs if layer in n.name]
    assert len(kept) == 1 and kept[0] is not convs[0], [n.name for n in convs]

    def bits(conv, i):
        dq = producer[conv.input[i]]
        assert dq.op_type == "DequantizeLinear", (conv.name, dq.op_type)
        return inits[dq.input[2]].dtype if i == 0 else inits[dq.input[0]].dtype

    assert bits(kept[0], 0) in (np.int16, np.uint16) and bits(kept[0], 1) == np.int8
    assert bits(convs[0], 0) in (np.int8, np.uint8)
