"""Target profiles: built-ins load, bad profiles name file and field, user directories extend and override."""
from __future__ import annotations

import json

import pytest

from clihelp import assert_user_error, run_cli
from edgekit import targets
from edgekit.errors import EdgekitError
from edgekit.schema import describe

GOOD = """name = "{name}"
description = "test profile"
[build]
formats = ["onnx"]
[bench]
runs = 7
"""


def write_profile(directory, name, text=None):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text if text is not None else GOOD.format(name=name))
    return path


def test_every_builtin_profile_is_valid():
    found = targets.all_targets()
    assert "cpu" in found
    cpu = found["cpu"].profile
    assert cpu.quantize.precision == "fp32" and cpu.build.formats == ["tflite", "onnx", "openvino"]
    assert cpu.bench.threads >= 1 and cpu.bench.runs >= 1


@pytest.mark.parametrize("text, words", [
    ('name = "p"\nspeed = 3\n', ["field 'speed'", "unknown field"]),
    ('name = "p"\n[bench]\nruns = "many"\n', ["field 'bench.runs'", "expected int"]),
    ('name = "p"\n[quantize]\nprecision = "fp8"\n', ["field 'quantize.precision'", "fp8"]),
    ('name = "p"\n[build]\nformats = ["coreml"]\n', ["field 'build.formats'", "coreml"]),
    ('name = "p"\n[bench]\nthreads = 0\n', ["field 'bench.threads'", "out of range"]),
    ('name = "other"\n', ["field 'name'", "p.toml"]),
    ('description = "no name"\n', ["field 'name'", "missing"]),
    ('name = "p"\n[build\n', ["invalid TOML"]),
])
def test_bad_profiles_name_the_file_and_field(tmp_path, text, words):
    path = write_profile(tmp_path, "p", text)
    with pytest.raises(EdgekitError) as err:
        targets.load_profile(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_user_directory_adds_profiles_and_never_silently_shadows_a_builtin(tmp_path, monkeypatch):
    write_profile(tmp_path / "mine", "edge-box")
    write_profile(tmp_path / "mine", "cpu")  # the built-in's name (issue #25): only by its explicit path
    problems: list[str] = []
    found = targets.all_targets(extra_dirs=(str(tmp_path / "mine"),), problems=problems)
    assert found["edge-box"].profile.bench.runs == 7
    assert found["cpu"].path == targets.builtin_dir() / "cpu.toml"
    assert len(problems) == 1 and "name of the built-in target 'cpu'" in problems[0]
    with pytest.raises(EdgekitError, match="replace the built-in silently"):
        targets.get_target("cpu", (str(tmp_path / "mine"),))
    assert targets.get_target(str(tmp_path / "mine" / "cpu.toml")).path == tmp_path / "mine" / "cpu.toml"
    monkeypatch.setenv(targets.ENV_VAR, str(tmp_path / "mine"))
    assert targets.get_target("edge-box").profile.build.formats == ["onnx"]


def test_missing_targets_dir_is_a_user_error(capsys, tmp_path):
    assert_user_error(run_cli(capsys, "targets", "--targets-dir", tmp_path / "nowhere"), "not found")


def test_targets_cli_lists_and_shows(capsys, tmp_path):
    write_profile(tmp_path / "mine", "edge-box")
    listing = run_cli(capsys, "targets", "--targets-dir", tmp_path / "mine")
    assert listing.code == 0 and "cpu" in listing.out and "edge-box" in listing.out
    rows = [ln.split()[0] for ln in listing.out.splitlines()]
    assert "arm-int8" in rows and "edge-box" in rows  # one plain row per profile when piped
    listed = json.loads(run_cli(capsys, "targets", "--json", "--targets-dir", tmp_path / "mine").out)
    assert {"cpu", "arm-int8", "edge-box"} <= {t["name"] for t in listed}
    shown = run_cli(capsys, "targets", "show", "cpu")
    assert shown.code == 0
    profile = json.loads(shown.out.split("\n", 1)[1])
    assert profile["name"] == "cpu" and profile["bench"]["warmup"] >= 0
    assert_user_error(run_cli(capsys, "targets", "show", "nope"), "unknown target")


def test_targets_readme_documents_the_current_schema(monkeypatch):
    """targets/README.md carries the table generated from the Profile fields (python -m edgekit.targets)."""
    monkeypatch.delenv("EDGEKIT_BACKENDS")  # the table lists the built-in backends
    readme = (targets.builtin_dir() / "README.md").read_text()
    assert targets.schema_markdown() in readme
    assert len(describe(targets.Profile)) == targets.schema_markdown().count("\n| `")


def test_what_host_timing_means_is_profile_data_for_every_kind():
    """pipeline and the report ask the device, never its kind: every kind has a HOST_TIMING entry."""
    kinds = {f.name: f for f in __import__("dataclasses").fields(targets.DeviceSpec)}["kind"].metadata["choices"]
    assert set(kinds) == set(targets.HOST_TIMING)
    assert targets.DeviceSpec(kind="cpu", arch="x86_64").host_is_device("x86_64")
    assert not targets.DeviceSpec(kind="cpu", arch="aarch64").host_is_device("x86_64")
    assert not targets.DeviceSpec(kind="arm", arch="aarch64").host_is_device("aarch64")
    assert not targets.DeviceSpec(kind="gpu").timed_on_host() and targets.DeviceSpec(kind="mcu").timed_on_host()
