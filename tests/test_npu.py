"""Arm Ethos-U targets through the real Vela compiler (ethos-u-vela): the Vela artifact and its C array,
the NPU/CPU split with Vela's reason for a fallback, SRAM/flash verdicts, Vela's estimate beside
edgekit's cycle model, a Vela crash kept to one line, and Vela missing named with its extra."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli
from edgekit import targets
from edgekit.errors import EdgekitError
from edgekit.passes import _vela as vela
from edgekit.passes import vela as vela_pass
from edgekit.probes import npu
from edgekit.tune.trial import cost, npu_figures


def int8_tflite(path: Path, body, shape=(16, 16, 3)) -> Path:
    """A small full-integer (int8 I/O) TFLite model of `body` applied to an image input."""
    import keras
    from edgekit import zoo
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    data = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    return zoo.full_integer_tflite(keras.Model(inputs, body(inputs)), data, path)


def conv(x):
    import keras
    return keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)


def compiled(model: Path, profile, tmp_path: Path) -> dict:
    """What the probe computes for one artifact, without a pipeline around it."""
    device = profile.device
    figures = vela.compile(model, vela_pass.configure(profile, None), tmp_path / "vela")
    figures["bytes"] = (tmp_path / "vela" / figures["compiled"]).stat().st_size
    figures["c_artifact"] = {"files": ["mcu/model_data.cc", "mcu/model_data.h"]}  # not written here
    figures["verdict"] = npu.verdict(device, figures)
    figures["edgekit_estimate"] = vela.edgekit_estimate(model, figures,
                                                        vela.accel_spec(device, profile.accelerator, figures))
    return figures


def test_convert_writes_the_vela_artifact_and_reports_split_memory_and_cycles(small_keras, tiny_eval, capsys,
                                                                               tmp_path):
    before = hashlib.sha256(small_keras.read_bytes()).hexdigest()
    result = run_cli(capsys, "convert", small_keras, "--target", "ethos-u55-128", "--data", tiny_eval,
                     "--calib-samples", "16", "--runs", "2", "--processes", "1", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    out = tmp_path / "o"
    report = json.loads((out / "report.json").read_text())
    int8 = report["artifacts"][1]
    assert int8["status"] == "ok" and int8["fidelity"]["verified"]  # the plain int8 model, verified in LiteRT
    fig = int8["npu"]
    assert fig["ops"]["cpu"] == 0 and fig["ops"]["npu"] == fig["ops"]["total"] > 0 and fig["fallback"] == []
    assert fig["executed"] is False and fig["how"] == "estimated (Vela)"
    vela_tflite = out / "model_vela.tflite"
    assert vela_tflite.stat().st_size == fig["bytes"] and (out / "model.tflite").is_file()
    assert b"ethos-u" in vela_tflite.read_bytes()  # the NPU part is Vela's custom op
    cc = (out / "mcu" / "model_data.cc").read_text()
    assert f"g_model_data_len = {fig['bytes']};" in cc
    assert fig["memory_used_bytes"]["SRAM"] > 0 and fig["verdict"]["fits"] is True
    assert fig["verdict"]["ram"]["model_bytes"] == fig["memory_used_bytes"]["SRAM"]
    assert fig["cycles"]["total"] > 0 and fig["inference_ms"] > 0
    assert fig["edgekit_estimate"]["ratio_to_vela"] == pytest.approx(
        fig["edgekit_estimate"]["cycles"] / fig["cycles"]["total"])
    md = (out / "report.md").read_text()
    for words in ("operators on the NPU, 0 on the CPU", "NPU VERDICT tflite int8-io: FITS", "NPU ESTIMATED (Vela)",
                  "x Vela's", "compiled and estimated, not executed here"):
        assert words in md, words
    assert hashlib.sha256(small_keras.read_bytes()).hexdigest() == before


def test_an_op_vela_cannot_place_is_named_with_its_reason(tmp_path):
    import tensorflow as tf
    import keras
    model = int8_tflite(tmp_path / "gather.tflite",
                        lambda x: keras.layers.Lambda(lambda t: tf.gather(t, [2, 0, 1], axis=-1))(conv(x)))
    profile = targets.get_target("ethos-u55-128").profile
    fig = compiled(model, profile, tmp_path)
    assert fig["ops"] == {"total": 2, "npu": 1, "cpu": 1}
    (fallback,) = fig["fallback"]
    assert fallback["op"] == "GATHER" and fallback["reason"] == "Unsupported opType"
    fig.update(file="gather_vela.tflite", executed=False, note=npu.NOT_RUN)
    text = "\n".join(npu.artifact_notes("tflite int8-io", fig))
    assert "1 of 2 operators on the NPU, 1 on the CPU; CPU fallback: GATHER" in text and "(Unsupported opType)" in text
    # the cycle model leaves the fallback op out, as Vela does
    assert fig["edgekit_estimate"]["layers"] == 1
    # tune: each fallback op adds the objective's figure once more
    figures = {"latency_ms": 2.0, "bytes": 100, "memory_mib": 1.0, **npu_figures({"npu": fig})}
    assert figures["npu_cpu_ops"] == 1 and cost(figures, "latency") == 4.0 and cost(figures, "size") == 200


def test_a_model_over_the_profiles_sram_does_not_fit_with_the_bytes(tmp_path):
    import keras
    model = int8_tflite(tmp_path / "wide.tflite", lambda x: keras.layers.Conv2D(32, 3, padding="same")(conv(x)),
                        shape=(48, 48, 3))
    text = (Path(targets.builtin_dir()) / "ethos-u55-128.toml").read_text()
    small = tmp_path / "targets" / "tiny-u55.toml"
    small.parent.mkdir()
    small.write_text(text.replace('name = "ethos-u55-128"', 'name = "tiny-u55"').replace("ram_kib = 2048",
                                                                                          "ram_kib = 64"))
    profile = targets.load_profile(small).profile
    fig = compiled(model, profile, tmp_path)
    sram, ram = fig["memory_used_bytes"]["SRAM"], fig["verdict"]["ram"]
    assert sram > 64 * 1024 and ram["fits"] is False and fig["verdict"]["fits"] is False
    total = sram + profile.device.runtime_ram_kib * 1024
    assert ram["needed_bytes"] == total
    assert f"SRAM: {sram:,} B allocated by Vela" in ram["text"] and f"{total - 64 * 1024:,} B over" in ram["text"]
    assert fig["verdict"]["summary"].startswith("DOES NOT FIT")
    with pytest.raises(EdgekitError, match="^NPU: DOES NOT FIT"):  # tune: a failed trial, never chosen
        npu_figures({"npu": fig})


STANDIN = """
import os
if os.environ.get("EDGEKIT_ISOLATE_STATUS") and os.environ.get("EDGEKIT_TEST_VELA_ABORT"):
    import edgekit.passes._vela as vela

    def _abort(*args, **kwargs):
        from edgekit import isolate
        isolate.where("Vela (ethosu.vela.vela.main)")
        os.abort()
    vela.compile_in_child = _abort
"""


def test_a_vela_crash_is_one_line_and_the_other_artifacts_are_written(small_keras, tiny_eval, capsys, tmp_path,
                                                                      monkeypatch):
    site = tmp_path / "standin"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(STANDIN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("EDGEKIT_TEST_VELA_ABORT", "1")
    result = run_cli(capsys, "convert", small_keras, "--target", "ethos-u55-128", "--data", tiny_eval,
                     "--calib-samples", "16", "--runs", "2", "--processes", "1", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    out = tmp_path / "o"
    int8 = json.loads((out / "report.json").read_text())["artifacts"][1]
    assert int8["status"] == "ok" and "latency_ms" in int8 and int8["fidelity"]["verified"]
    assert int8["npu"]["error"] == ("not compiled for ethos-u55-128: Vela compiler aborted in Vela "
                                    "(ethosu.vela.vela.main) (SIGABRT)")
    assert (out / "model.tflite").is_file() and (out / "fp32" / "model.tflite").is_file()
    assert not (out / "model_vela.tflite").exists()
    assert "NPU tflite int8-io: not compiled for ethos-u55-128: Vela compiler aborted" in (out / "report.md").read_text()


def test_vela_missing_is_one_line_naming_the_extra(small_keras, tiny_eval, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ethosu", None)  # as if ethos-u-vela were not installed
    result = run_cli(capsys, "convert", small_keras, "--target", "ethos-u55-128", "--data", tiny_eval,
                     "--out", tmp_path / "o")
    assert_user_error(result, "ethos-u-vela", "edgekit-toolchain[npu]")
    assert not (tmp_path / "o").exists()
