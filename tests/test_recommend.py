"""One recommendation per target (issue 27, issue 23 item 4): the fastest verified artifact within budget,
never an int8 that is slower than its fp32, and only on figures that hold (timing.ratio, not unstable)."""
from __future__ import annotations

import json

from clihelp import run_cli
from edgekit import recommend


def test_int8_slower_than_fp32_is_not_recommended(tmp_path, capsys):
    """A model that is one ReLU over a 64x64x8 tensor: int8 adds a QUANTIZE and a DEQUANTIZE of the whole
    tensor around it (about 30x the fp32 latency here). fp32 must be recommended: int8 could only be
    promoted by every interleaved process pair running it faster, on stable figures."""
    import keras
    model = keras.Sequential([keras.Input((64, 64, 8), name="x"), keras.layers.ReLU(name="relu")])
    model.save(tmp_path / "relu.keras")
    result = run_cli(capsys, "convert", tmp_path / "relu.keras", "--target", "cpu-int8", "--format", "tflite",
                     "--calib", "random", "--calib-samples", "8", "--runs", "30", "--warmup", "3", "--out",
                     tmp_path / "o", "--json", "--ops")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    fp32, int8 = report["artifacts"]
    assert int8["status"] == "ok" and int8["fidelity"]["verified"]  # a candidate, yet not the pick
    rec = report["recommended"]
    assert rec["artifact"] == {"format": "tflite", "precision": "fp32", "role": "baseline", "file": fp32["file"]}
    assert rec["reason"].startswith("fp32 TFLite: ") and "int8" in rec["reason"]
    assert "Recommended: fp32/model.tflite (fp32 TFLite" in (tmp_path / "o" / "report.md").read_text()
    # convert --ops: where the time goes, side by side
    assert [r["type"] for r in fp32["op_profile"]["by_type"]] == ["RELU"]
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(int8["op_compare"]["added"])
    assert "## Per-op time" in (tmp_path / "o" / "report.md").read_text()


def _row(fmt, precision, medians, unstable=False, verified=True, delta=0.0, base=None):
    median = sorted(medians)[len(medians) // 2]
    row = {"format": fmt, "precision": precision, "role": "target", "file": f"{fmt}-{precision}", "status": "ok",
           "fidelity": {"verified": verified}, "accuracy": {"delta": delta},
           "latency_ms": {"median": median, "process_medians": medians, "unstable": unstable}}
    if base:
        row["vs_fp32"] = {"latency": median / base["latency_ms"]["median"], "latency_unstable": unstable}
    return row


def test_the_rule_acts_only_on_figures_that_hold():
    fp32 = _row("tflite", "fp32", [10.0, 10.2, 9.9])
    fast = _row("tflite", "int8", [4.0, 4.1, 3.9], base=fp32)
    assert recommend.choose([fp32, fast], 1.0)["artifact"]["precision"] == "int8"
    assert "0.40x fp32 latency, +0.0 pt" in recommend.choose([fp32, fast], 1.0)["reason"]
    unsteady = _row("tflite", "int8", [4.0, 4.1, 3.9], unstable=True, base=fp32)
    assert recommend.choose([fp32, unsteady], 1.0)["artifact"]["precision"] == "fp32"
    one_pair_slower = _row("tflite", "int8", [4.0, 11.0, 3.9], base=fp32)
    assert recommend.choose([fp32, one_pair_slower], 1.0)["artifact"]["precision"] == "fp32"
    over_budget = _row("tflite", "int8", [4.0, 4.1, 3.9], delta=-0.02, base=fp32)
    assert recommend.choose([fp32, over_budget], 1.0)["artifact"]["precision"] == "fp32"
    assert recommend.choose([fp32, over_budget], 5.0)["artifact"]["precision"] == "int8"
    mismatch = _row("tflite", "int8", [4.0, 4.1, 3.9], verified=False, base=fp32)
    assert recommend.choose([fp32, mismatch], 1.0)["artifact"]["precision"] == "fp32"


def test_bf16_beats_a_slower_int8_and_formats_must_be_clearly_apart():
    fp32 = _row("openvino", "fp32", [20.0, 20.1, 19.8])
    bf16 = _row("openvino", "bf16", [11.0, 11.2, 10.9], base=fp32)
    int8 = _row("openvino", "int8", [13.0, 13.1, 12.9], base=fp32)
    rec = recommend.choose([fp32, int8, bf16], 1.0, ["openvino"])
    assert rec["artifact"]["precision"] == "bf16" and "faster than int8 here" in rec["reason"]
    tflite = _row("tflite", "fp32", [10.5, 12.0, 9.0])  # overlaps bf16's process medians: not clearly faster
    assert recommend.choose([tflite, fp32, bf16], 1.0, ["openvino", "tflite"])["artifact"]["format"] == "openvino"
    quick = _row("tflite", "fp32", [5.0, 5.1, 4.9])
    assert recommend.choose([quick, fp32, bf16], 1.0, ["openvino", "tflite"])["artifact"]["format"] == "tflite"
    assert recommend.choose([], 1.0)["artifact"] is None


def test_one_recommendation_per_target(tmp_path, capsys):
    import fake_backend as fake
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in ("a", "b"):
        (profiles / f"{name}.toml").write_text(f'name = "{name}"\n[build]\nformats = ["fake"]\n'
                                               "[bench]\nruns = 2\nwarmup = 0\neval_samples = 8\n")
    result = run_cli(capsys, "convert", model, "--target", "a,b", "--targets-dir", profiles, "--out", tmp_path / "o",
                     "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert set(summary["recommended"]) == {"a", "b"}
    assert all(r["artifact"]["format"] == "fake" and r["reason"] for r in summary["recommended"].values())
    text = (tmp_path / "o" / "summary.md").read_text()
    assert "- a: Recommended: model.npz" in text and "- b: Recommended: model.npz" in text
