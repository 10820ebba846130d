"""The backend contract (backends/base.py) against every backend, and the pipeline paths the fake
backend's quantize hook lets us test in seconds."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import fake_backend as fake
from edgekit import backends, convert_report, pipeline, runner
from edgekit.backends.base import MEMBERS, Backend
from edgekit.errors import EdgekitError
from edgekit.passes import quantize

PROFILE = """name = "plumb"
[build]
formats = ["fake"]
[quantize]
precision = "{precision}"
calib_samples = 4
[bench]
runs = 3
warmup = 1
eval_samples = 5
"""


@pytest.mark.parametrize("name", backends.available())
def test_every_backend_follows_the_contract(name):
    backend = backends.get(name)
    assert isinstance(backend, Backend)
    assert backend.FORMAT == name and backend.SUFFIX.startswith(".")
    assert set(backend.PRECISIONS) <= set(quantize.PRECISIONS) - {"fp32"}
    assert set(backend.CALIB_METHODS) <= set(quantize.CALIB_METHODS)
    assert (backend.quantize is None) == (not backend.PRECISIONS)
    for hook in ("files", "runtime_version", "export", "Session"):
        assert callable(getattr(backend, hook)), hook
    for hook in ("quantize", "op_summary", "gpu_name", "load_source", "detect"):
        assert getattr(backend, hook) is None or callable(getattr(backend, hook)), hook


def test_a_plugin_that_breaks_the_contract_is_one_line(monkeypatch):
    broken = types.ModuleType("broken_backend")
    broken.FORMAT = "broken"
    monkeypatch.setitem(sys.modules, "broken_backend", broken)
    monkeypatch.setenv("EDGEKIT_BACKENDS", "fake_backend,broken_backend")
    with pytest.raises(EdgekitError, match="does not follow the backend contract") as exc:
        backends.available()
    assert all(m in str(exc.value) for m in MEMBERS if m != "FORMAT")


def test_format_names_are_backends_only():
    with pytest.raises(EdgekitError, match="unknown artifact format '__init__'"):
        backends.get("__init__")
    with pytest.raises(EdgekitError, match="unknown artifact format 'base'"):
        backends.get("base")


@pytest.fixture
def plumb(tmp_path):
    def make(precision="int8", **model):
        d = tmp_path / "profiles"
        d.mkdir(exist_ok=True)
        (d / "plumb.toml").write_text(PROFILE.format(precision=precision))
        return fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4, **model), str(d)
    return make


def test_quantize_pass_runs_the_backend_hook_and_compares_with_fp32(plumb, tmp_path):
    model, profiles = plumb()
    result = pipeline.convert(model, target="plumb", targets_dirs=[profiles], out=tmp_path / "o", calib="random")
    baseline, quantized = result["artifacts"]
    assert (baseline["role"], baseline["status"], quantized["status"]) == ("baseline", "ok", "ok")
    assert quantized["calibration"] == {**quantized["calibration"], "method": "minmax", "samples": 4, "uncalibrated": True}
    assert "weights on 255 levels" in quantized["notes"][0]
    assert {"size", "latency"} <= set(quantized["vs_fp32"])
    assert (tmp_path / "o" / "fp32" / "model.npz").is_file() and (tmp_path / "o" / "model.npz").is_file()


def test_an_unsupported_precision_fails_that_artifact_with_what_the_backend_has(plumb, tmp_path):
    model, profiles = plumb(precision="fp16")
    result = pipeline.convert(model, target="plumb", targets_dirs=[profiles], out=tmp_path / "o")
    assert result["artifacts"][1]["reason"] == "fake has no fp16 mode (it has: int8)"


def _build(model, profiles, tmp_path, **options) -> list[dict]:
    """One format's artifacts, built and measured as convert() does, without writing an output."""
    from edgekit import targets
    from edgekit.options import ConvertOptions
    target = targets.get_target("plumb", (profiles,))
    ctx = pipeline.prepare(model, "fake", target, ConvertOptions(target="plumb", **options), tmp_path, lambda m: None)
    ctx.stage = tmp_path / "stage"
    ctx.stage.mkdir()
    return pipeline._build_format(ctx, "fake")


def test_a_failed_baseline_leaves_nothing_to_quantize(plumb, tmp_path, monkeypatch):
    model, profiles = plumb()

    def refuse(source, out_path, ctx):
        from edgekit.errors import ConversionError
        raise ConversionError("fake exporter refused")

    monkeypatch.setattr(fake, "export", refuse)
    baseline, quantized = _build(model, profiles, tmp_path, calib="random")
    assert (baseline["status"], baseline["reason"]) == ("failed", "fake exporter refused")
    assert quantized["reason"] == "the fp32 fake baseline failed, so there is nothing to quantize"


def test_slower_than_fp32_is_a_warning():
    artifacts = [{"format": "onnx", "precision": "int8", "vs_fp32": {"latency": 1.2}, "file": "model.onnx"},
                 {"format": "tflite", "precision": "int8", "vs_fp32": {"latency": 0.5}},
                 {"format": "tflite", "precision": "int8", "vs_fp32": {"latency": 1.5}, "file": "model.tflite",
                  "ops": {"outside_int8": {"RELU_0_TO_1": 9, "ABS": 2}, "outside_int8_why": "no XNNPACK kernel"}}]
    assert convert_report.slower_than_fp32(artifacts) == [
        "onnx int8 runs 1.20x the fp32 latency on this host; the fp32 artifact is faster here; "
        "per-op time: edgekit bench model.onnx --ops",
        "tflite int8 runs 1.50x the fp32 latency on this host; the fp32 artifact is faster here; outside the int8 "
        "path: RELU_0_TO_1 x9, ABS x2 (no XNNPACK kernel); per-op time: edgekit bench model.tflite --ops"]


def test_a_stuck_runner_fails_its_artifact_after_the_timeout(plumb, tmp_path, monkeypatch):
    model, profiles = plumb(precision="fp32", sleep_s=60.0)
    monkeypatch.setattr(runner, "TIMEOUT_S", 3)
    [artifact] = _build(model, profiles, tmp_path, data=_data(tmp_path))
    assert artifact["status"] == "failed" and "timed out" in artifact["reason"]


def _data(tmp_path):
    np.savez(tmp_path / "val.npz", x=np.random.default_rng(0).random((5, 2, 3), dtype=np.float32))
    return tmp_path / "val.npz"


# --- probes -----------------------------------------------------------------------------------

def test_every_probe_follows_the_contract():
    from edgekit import probes
    from edgekit.probes.base import Probe
    found = probes.all_probes()
    assert {p.NAME for p in found} >= {"gpu", "aarch64", "remote", "accelerator"}
    assert all(isinstance(p, Probe) for p in found)


def test_a_new_kind_of_device_is_one_probe_module(plumb, tmp_path, monkeypatch):
    """tests/command_probe.py, named in $EDGEKIT_PROBES, adds its figures and report lines."""
    script = tmp_path / "twice.py"  # "the device": the fake model's outputs, computed by another process
    script.write_text("import sys, numpy as np\nsys.path.insert(0, %r)\nimport fake_backend\nfrom edgekit import runner\n"
                      "s = fake_backend.Session(sys.argv[1])\n"
                      "runner.save_stacked(sys.argv[3], 'out', [s.run(x) for x in runner.load_stacked(sys.argv[2], 'in')])\n"
                      % str(Path(__file__).parent))
    monkeypatch.setenv("EDGEKIT_PROBES", "command_probe")
    monkeypatch.setenv("EDGEKIT_PROBE_COMMAND", f"{sys.executable} {script}")
    model, profiles = plumb(precision="fp32")
    result = pipeline.convert(model, target="plumb", targets_dirs=[profiles], out=tmp_path / "o", data=_data(tmp_path))
    [artifact] = result["artifacts"]
    assert artifact["command"]["max_abs_diff_vs_host"] == 0.0 and artifact["command"]["samples"] == 5
    assert "COMMAND (run by" in (tmp_path / "o" / "report.md").read_text()
