"""Misuse of the surface added since the first safety pass (issue #25): report --out, unwritable
destinations, broken result files. Each case through the CLI, in-process; the user's files are
checked byte for byte afterwards."""
from __future__ import annotations

import json
import os
import sys

import pytest

import fake_backend as fake
from clihelp import assert_user_error, run_cli
from conftest import tree_digest

PROFILE = 'name = "plumb"\n[build]\nformats = ["fake"]\n[bench]\nruns = 1\nwarmup = 0\neval_samples = 4\n'


@pytest.fixture
def converted(tmp_path, capsys):
    """A convert output directory (numpy-only fake backend: fast)."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "plumb.toml").write_text(PROFILE)
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    out = tmp_path / "o"
    result = run_cli(capsys, "convert", model, "--target", "plumb", "--targets-dir", profiles, "--out", out)
    assert result.code == 0, result.err
    return out


def test_report_out_replaces_an_existing_file_only_with_force(converted, capsys, tmp_path):
    model = tmp_path / "model.tflite"  # the case: a user's model where the page would go
    model.write_bytes(b"TFL3 a user's model")
    assert_user_error(run_cli(capsys, "report", converted, "--out", model), "already exists", "--force")
    assert model.read_bytes() == b"TFL3 a user's model"
    assert run_cli(capsys, "report", converted, "--out", tmp_path / "page.html").code == 0
    assert_user_error(run_cli(capsys, "report", converted, "--out", tmp_path / "page.html"), "already exists")
    assert run_cli(capsys, "report", converted, "--out", tmp_path / "page.html", "--force").code == 0
    assert "<html>" in (tmp_path / "page.html").read_text()


def test_report_never_writes_over_what_it_reads(converted, capsys):
    before = tree_digest(converted)
    for target in (converted / "report.json", converted):
        result = run_cli(capsys, "report", converted, "--out", target, "--force")
        assert result.code == 2 and "Traceback" not in result.err
    assert tree_digest(converted) == before


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"artifacts": 3}', "", "\xff\xfe"])
def test_a_broken_report_json_is_one_line(content, capsys, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "report.json").write_text(content, encoding="latin-1")
    assert_user_error(run_cli(capsys, "report", tmp_path / "o", "--out", tmp_path / "p.html"), "report.json",
                      "not a result edgekit can read")
    assert not (tmp_path / "p.html").exists()


def test_an_unwritable_out_parent_is_one_line(converted, capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a user's file")
    assert_user_error(run_cli(capsys, "report", converted, "--out", blocker / "p.html"), "cannot write", "file.txt")
    model = fake.save_model(tmp_path / "m.npz", (1, 2, 3), classes=4)
    for out in (blocker / "o", "/proc/edgekit-nowhere/o", "/sys/edgekit-nowhere"):
        result = run_cli(capsys, "convert", model, "--format", "fake", "--runs", "1", "--out", out)
        assert_user_error(result, "cannot write")
    assert blocker.read_text() == "a user's file"


SHADOW = "import pathlib\npathlib.Path({sentinel!r}).write_text('ran')\nraise SystemExit(97)\n"


@pytest.fixture
def shadowing_cwd(tmp_path, monkeypatch):
    """A downloaded-model folder as the cwd, holding numpy.py and edgekit.py (and an empty PYTHONPATH
    entry, which means the cwd): none of it may ever run."""
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for name in ("numpy", "edgekit", "onnx", "tensorflow"):
        (folder / f"{name}.py").write_text(SHADOW.format(sentinel=str(tmp_path / f"{name}-ran")))
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PYTHONPATH", os.pathsep + os.environ.get("PYTHONPATH", ""))
    yield folder
    assert sorted(p.name for p in tmp_path.glob("*-ran")) == []


def test_python_children_never_import_from_the_cwd(shadowing_cwd, capsys, tmp_path):
    from edgekit import children, isolate
    proc = children.run([sys.executable, "-c", "import numpy, edgekit; print(numpy.__file__)"], 60)
    assert proc.returncode == 0 and "downloaded" not in proc.stdout, proc
    assert isolate.run("os.path:abspath", "x", step="probe") == str(shadowing_cwd / "x")  # started, ran, answered
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in ("a", "b"):
        (profiles / f"{name}.toml").write_text(PROFILE.replace("plumb", name))
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    # the runner (numpy + the fake backend) in a child, and each target in an isolate worker
    result = run_cli(capsys, "convert", model, "--target", "a,b", "--targets-dir", profiles, "--out", tmp_path / "o")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "o" / "a" / "report.json").read_text())["artifacts"][0]["status"] == "ok"


MCU = 'name = "{name}"\ndescription = "{description}"\n[device]\nkind = "mcu"\narch = "armv6m"\n{device}\n'


@pytest.mark.parametrize("flag", ["-wrapper", "-B/tmp/evil", "@/etc/flags", "-specs=/tmp/x.specs", "-fplugin=x",
                                  "-fplugin=/tmp/evil.so", "-fprofile-generate", "-fdump-tree-all", "-include",
                                  "-o/etc/passwd", "-mcpu=../../x", "-fx=/abs", "-O2 -wrapper", ""])
def test_compiler_flags_outside_the_allow_list_are_refused(flag, capsys, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "m.toml").write_text(MCU.format(name="m", description="", device=f"gcc_flags = ['-mthumb', {flag!r}]"))
    result = run_cli(capsys, "targets", "--targets-dir", d, "show", "m")
    assert_user_error(result, "m.toml", "device.gcc_flags", repr(flag), "not allowed")


def test_allowed_compiler_flags_load(capsys, tmp_path):
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2", "-Os", "-ffast-math",
             "-fno-exceptions", "-fstack-protector-strong"]
    (tmp_path / "m.toml").write_text(MCU.format(name="m", description="", device=f"gcc_flags = {flags!r}"))
    shown = run_cli(capsys, "targets", "--json", "show", tmp_path / "m.toml")
    assert shown.code == 0 and json.loads(shown.out)["device"]["gcc_flags"] == flags  # pure JSON


def test_a_profile_cannot_shadow_a_builtin_silently(capsys, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "cpu.toml").write_text('name = "cpu"\n[build]\nformats = ["fake"]\n')
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    assert_user_error(run_cli(capsys, "convert", model, "--target", "cpu", "--targets-dir", d),
                      "built-in target 'cpu'", "--target")
    shown = run_cli(capsys, "targets", "--targets-dir", d, "--json", "show", d / "cpu.toml")
    assert shown.code == 0 and json.loads(shown.out)["path"] == str(d / "cpu.toml")


def test_a_device_model_without_memory_bandwidth_is_refused_at_load(capsys, tmp_path):
    (tmp_path / "d.toml").write_text('name = "d"\n[device]\nclock_ghz = 1.0\nfp32_macs_per_cycle = 4\n')
    assert_user_error(run_cli(capsys, "targets", "show", tmp_path / "d.toml"), "d.toml", "memory_gbps")


def test_targets_json_show_is_pure_json_and_markup_is_text(capsys, tmp_path, monkeypatch):
    shown = run_cli(capsys, "targets", "--json", "show", "cpu")
    assert shown.code == 0 and json.loads(shown.out)["name"] == "cpu"
    d = tmp_path / "p"
    d.mkdir()
    text = "[bold red]loud[/] [/oops] [link=file:///etc/passwd]x[/link]"
    (d / "rich.toml").write_text(MCU.format(name="rich", description=text, device=""))
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich renders as on a terminal
    monkeypatch.setenv("COLUMNS", "400")
    listing = run_cli(capsys, "targets", "--targets-dir", d)
    assert listing.code == 0 and "Traceback" not in listing.err, listing.err
    assert "[bold red]loud[/] [/oops]" in listing.out


def test_bench_takes_a_file_named_like_an_option(make_model, capsys, tmp_path):
    (tmp_path / "-x.tflite").write_bytes(make_model("tflite").read_bytes())
    result = run_cli(capsys, "bench", "--runs", "1", "--warmup", "0", "--processes", "1", "--json", "--", "-x.tflite")
    assert result.code == 0, result.err
    assert json.loads(result.out)["latency_ms"]["median"] > 0


@pytest.mark.parametrize("args, words", [(["--runs", "0"], "--runs: 0 is below 1"),
                                         (["--threads", "x"], "'x' is not a whole number"),
                                         (["--warmup", "-1"], "--warmup"), ([], "required")])
def test_the_runner_refuses_bad_arguments_in_one_line(args, words, tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "edgekit.runner", *args, *(["m.tflite"] if args else [])],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
