"""Native steps in isolated children: a crash becomes a one-line failure naming the step and the
signal; the artifact's other figures, the other artifacts and the other targets are kept."""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from clihelp import run_cli
from edgekit import isolate
from edgekit.errors import ConversionError, EdgekitError


def test_result_and_errors_come_back():
    assert isolate.run("math:gcd", 12, 18, step="gcd") == 6
    with pytest.raises(ConversionError, match=r"^json loads failed: JSONDecodeError"):
        isolate.run("json:loads", "{", step="json loads")
    with pytest.raises(EdgekitError, match="targets"):
        isolate.run("edgekit.targets:get_target", "no-such-target", step="profile")


def test_a_signal_death_names_the_step_and_the_signal():
    with pytest.raises(isolate.StepCrashed, match=r"^stand-in aborted \(SIGABRT\)$") as info:
        isolate.run("os:abort", step="stand-in")
    assert info.value.signal_name == "SIGABRT"
    with pytest.raises(isolate.StepCrashed, match=r"crashed \(SIGSEGV\)"):
        isolate.run("ctypes:string_at", 0, step="stand-in")  # reads address 0


STANDIN = """
import os
if os.environ.get("EDGEKIT_ISOLATE_STATUS") and os.environ.get("EDGEKIT_TEST_ABORT"):
    from edgekit import isolate

    def _abort(*args, **kwargs):
        isolate.where("allocate_tensors")
        os.abort()

    what = os.environ["EDGEKIT_TEST_ABORT"]
    if what == "emulator":
        import edgekit.accel.figures as figures
        figures.emulate_file = _abort
    elif what.startswith("target:"):
        import edgekit.pipeline as pipeline
        real = pipeline.convert

        def convert(model, progress=None, **kwargs):
            if kwargs.get("target") == what.split(":", 1)[1]:
                _abort()
            return real(model, progress, **kwargs)
        pipeline.convert = convert
"""


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """A sitecustomize that makes a chosen step call abort() inside its isolated child."""
    site = tmp_path / "standin"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(STANDIN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return lambda what: monkeypatch.setenv("EDGEKIT_TEST_ABORT", what)


def test_an_aborting_emulator_marks_the_figure_failed_and_keeps_the_run(standin, small_keras, tiny_eval, capsys,
                                                                        tmp_path):
    standin("emulator")
    result = run_cli(capsys, "convert", small_keras, "--target", "fpga-int8", "--data", tiny_eval,
                     "--calib-samples", "8", "--runs", "2", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    fp32, int8 = report["artifacts"]
    assert fp32["status"] == int8["status"] == "ok" and "latency_ms" in int8 and "fidelity" in int8
    assert int8["accelerator"]["error"] == "not emulated: accelerator emulator aborted in allocate_tensors (SIGABRT)"
    assert (tmp_path / "o" / "model.tflite").is_file() and (tmp_path / "o" / "fp32" / "model.tflite").is_file()
    assert "ACCELERATOR: not emulated: accelerator emulator aborted" in (tmp_path / "o" / "report.md").read_text()


def test_an_aborting_target_is_reported_and_the_others_are_written(standin, small_keras, tiny_eval, capsys, tmp_path):
    standin("target:arm-m-int8")
    result = run_cli(capsys, "convert", small_keras, "--target", "cpu,arm-m-int8", "--data", tiny_eval,
                     "--calib", "random", "--runs", "2", "--out", tmp_path / "o")  # --calib: not for fp32 cpu
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    failed = {t["target"]["name"]: t.get("error") for t in summary["targets"]}
    assert failed["arm-m-int8"] == "target arm-m-int8 aborted in allocate_tensors (SIGABRT)"
    assert failed["cpu"] is None and (tmp_path / "o" / "cpu" / "report.json").is_file()
    failed_report = json.loads((tmp_path / "o" / "arm-m-int8" / "report.json").read_text())
    assert failed_report["status"] == "failed" and "SIGABRT" in failed_report["error"]
    assert not list((tmp_path / "o").glob(".*partial*"))
    assert result.code in (0, 1), result.err
