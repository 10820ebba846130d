"""Never lose a user's file: where --out may point, what --force may replace, and failed runs.

Each test reproduces a case from issue #11 through the CLI, in-process, and checks the user's
files byte for byte afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli
from conftest import tree_digest
from edgekit import output
import fake_backend as fake

PROFILE = 'name = "plumb"\n[build]\nformats = ["fake"]\n[bench]\nruns = 2\nwarmup = 0\neval_samples = 4\n'


@pytest.fixture
def profiles(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "plumb.toml").write_text(PROFILE)
    return d


@pytest.fixture
def project(tmp_path, make_model):
    """proj/ holding the user's model and notes, as in the issue's reproduction."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(make_model("tflite"), proj / "model.tflite")
    (proj / "notes.txt").write_text("notes\n")
    return proj


def convert(capsys, *args):
    return run_cli(capsys, "convert", *args, "--runs", "1", "--warmup", "0", "--format", "tflite")


def test_out_equal_to_the_inputs_folder_is_refused_even_with_force(project, capsys):
    before = tree_digest(project)
    assert_user_error(convert(capsys, project / "model.tflite", "--out", project, "--force"), "contains the input")
    assert tree_digest(project) == before


def test_out_above_the_input_is_refused(project, capsys, tmp_path):
    before = tree_digest(tmp_path / "proj")
    assert_user_error(convert(capsys, project / "model.tflite", "--out", tmp_path, "--force"), "contains the input")
    assert_user_error(convert(capsys, project / "model.tflite", "--out", "/", "--force"), "contains")
    assert tree_digest(tmp_path / "proj") == before


def test_out_equal_to_the_current_directory_is_refused(project, capsys, monkeypatch, make_model, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    monkeypatch.chdir(work)
    model = project / "model.tflite"
    assert_user_error(convert(capsys, model, "--out", os.getcwd(), "--force"), "is the current directory")
    assert_user_error(convert(capsys, model, "--out", ".", "--force"), "is the current directory")
    assert (work / "precious.txt").read_text() == "keep me" and len(list(work.iterdir())) == 1


def test_out_equal_to_home_or_above_it_is_refused(project, capsys, monkeypatch, tmp_path):
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("HOME", str(home))
    assert_user_error(convert(capsys, project / "model.tflite", "--out", home, "--force"), "home directory")
    assert_user_error(convert(capsys, project / "model.tflite", "--out", home.parent, "--force"), "home directory")
    assert (home / "thesis.tex").read_text() == "years of work"


def test_out_equal_to_the_input_file_is_refused(project, capsys):
    before = tree_digest(project)
    assert_user_error(convert(capsys, project / "model.tflite", "--out", project / "model.tflite", "--force"),
                      "existing file")
    assert tree_digest(project) == before
    assert sorted(p.name for p in project.iterdir()) == ["model.tflite", "notes.txt"]  # no hidden .old copy


def test_out_that_is_a_symlink_is_refused(project, capsys, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert_user_error(convert(capsys, project / "model.tflite", "--out", tmp_path / "link", "--force"), "symbolic link")
    assert list(real.iterdir()) == []


def test_out_inside_a_savedmodel_input_is_refused(make_model, capsys, tmp_path):
    saved = tmp_path / "sm"
    shutil.copytree(make_model("savedmodel"), saved)
    before = tree_digest(saved)
    assert_user_error(convert(capsys, saved, "--out", saved / "variables" / "x"), "inside the input")
    assert tree_digest(saved) == before


def test_an_empty_directory_may_be_used(project, capsys, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert convert(capsys, project / "model.tflite", "--out", out).code == 0
    assert output.owned(out) and (out / "model.tflite").is_file()


def test_forced_run_that_builds_nothing_keeps_the_previous_output(profiles, capsys, tmp_path):
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    out = tmp_path / "keepme"
    common = ["--target", "plumb", "--targets-dir", profiles, "--out", out]
    assert run_cli(capsys, "convert", model, *common).code == 0
    before = tree_digest(out)
    result = run_cli(capsys, "convert", model, *common, "--force", "--format", "onnx")
    assert_user_error(result, "no artifact could be built", "previous output", "kept")
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.npz", "keepme", "profiles"]  # no staging left


def test_tune_force_checks_before_touching_anything(tiny_keras, capsys, tmp_path):
    proj = tmp_path / "t"
    proj.mkdir()
    shutil.copy(tiny_keras, proj / "m.keras")
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((8, 8, 8, 1), np.float32))
    before = tree_digest(proj)
    # The reproduction: --out is the folder holding the model.
    assert_user_error(run_cli(capsys, "tune", proj / "m.keras", "--data", tmp_path / "bad.npz", "--out", proj,
                              "--force"), "contains the input")
    assert tree_digest(proj) == before
    # An earlier tune output of ours, and bad data: refused before anything is removed.
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    output.write_marker(earlier, "tune")
    (earlier / "tune.json").write_text("{}")
    kept = tree_digest(earlier)
    assert_user_error(run_cli(capsys, "tune", proj / "m.keras", "--data", tmp_path / "bad.npz", "--out", earlier,
                              "--force"), "no array named 'x'")
    assert tree_digest(earlier) == kept


@pytest.mark.parametrize("labels, words", [
    (np.array(["a", "b"] * 4), "labels must be numbers"),
    (np.array([0.5] * 8), "non-integer"),
    (np.array([-1] * 8), "negative"),
    (np.array([], np.int64), "no labels"),
])
def test_tune_refuses_bad_labels_and_writes_nothing(labels, words, tiny_keras, capsys, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 8, 8, 1), np.float32), y=labels)
    assert_user_error(run_cli(capsys, "tune", tiny_keras, "--data", tmp_path / "d.npz", "--out", tmp_path / "o"), words)
    assert not (tmp_path / "o").exists()


def test_json_output_never_overwrites_the_input(make_model, capsys, tmp_path):
    model = tmp_path / "m.tflite"
    shutil.copy(make_model("tflite"), model)
    before = model.read_bytes()
    result = run_cli(capsys, "bench", model, "--runs", "1", "--json", model)  # --json is a flag: JSON goes to stdout
    assert result.code == 2 and "Traceback" not in result.err
    assert model.read_bytes() == before
    printed = run_cli(capsys, "bench", model, "--runs", "1", "--processes", "1", "--json")
    assert printed.code == 0 and '"latency_ms"' in printed.out and model.read_bytes() == before


def test_every_output_carries_the_marker(project, capsys, tmp_path):
    out = tmp_path / "o"
    assert convert(capsys, project / "model.tflite", "--out", out).code == 0
    marker = (out / output.MARKER).read_text()
    assert output.MARKER_SCHEMA in marker and '"command": "convert"' in marker


def test_staging_and_swap_leave_nothing_beside_the_output(project, capsys, tmp_path):
    out = tmp_path / "runs" / "o"
    for extra in ([], ["--force"]):
        assert convert(capsys, project / "model.tflite", "--out", out, *extra).code == 0
    assert [p.name for p in out.parent.iterdir()] == ["o"]


def _scratch(path, **fields):
    """A directory carrying a scratch marker as a (dead or live) edgekit process writes it."""
    path.mkdir()
    info = {"schema": output.SCRATCH_SCHEMA, "host": socket.gethostname(), "pid": os.getpid(),
            "start": output.process_start(os.getpid()), "uid": os.getuid(), **fields}
    (path / output.SCRATCH).write_text(json.dumps(info))
    return path


def test_only_marked_leftovers_of_a_dead_process_are_swept(tmp_path):
    dead = 2 ** 22 + 17  # above the kernel's default pid_max: never a running process
    leftover = _scratch(tmp_path / f".o.edgekit-partial-{socket.gethostname()}-{dead}-1", pid=dead)
    scratch = _scratch(tmp_path / f"edgekit-{dead}-1-isolate-x", pid=dead)
    reused = _scratch(tmp_path / "edgekit-1-1-reused", pid=1, start=1.0)  # pid 1 started after "1.0": pid reused
    alive = _scratch(tmp_path / f".o.edgekit-partial-{socket.gethostname()}-{os.getpid()}-{int(time.time())}")
    other_host = _scratch(tmp_path / f".o.edgekit-partial-elsewhere-{dead}-1", pid=dead, host="elsewhere")
    other_user = _scratch(tmp_path / f"edgekit-{dead}-2-u", pid=dead, uid=os.getuid() + 1)
    # a process in another PID namespace (a container sharing /tmp and the host name): its pid is not ours
    other_namespace = _scratch(tmp_path / f"edgekit-{dead}-5-ns", pid=dead, pidns="pid:[1]")
    bad_marker = tmp_path / f"edgekit-{dead}-3-bad"
    bad_marker.mkdir()
    (bad_marker / output.SCRATCH).write_text("not json")
    link_marker = tmp_path / f"edgekit-{dead}-4-link"
    link_marker.mkdir()
    (link_marker / output.SCRATCH).symlink_to(leftover / output.SCRATCH)
    # A user's folders whose names look like ours (the reproduction): no marker, never touched.
    users = [tmp_path / n for n in ("edgekit-2024-06-results", "edgekit-1-1-keep", f"edgekit-{dead}-1-mine",
                                    ".o.partial-123", f".x.edgekit-partial-{socket.gethostname()}-{dead}-1")]
    for d in users:
        d.mkdir()
        (d / "data.csv").write_text("mine")
    (tmp_path / f"edgekit-{dead}-9-file").write_text("a user's file, named like scratch")
    assert sorted(output.sweep(tmp_path)) == sorted([leftover, scratch, reused])
    assert {p.name for p in tmp_path.iterdir()} == {
        alive.name, other_host.name, other_user.name, other_namespace.name, bad_marker.name, link_marker.name, f"edgekit-{dead}-9-file",
        *(d.name for d in users)}
    assert all((d / "data.csv").read_text() == "mine" for d in users)


def test_scratch_and_staging_carry_the_marker_and_outputs_do_not(project, capsys, tmp_path):
    with output.tempdir("t-") as scratch:
        assert output.scratch_owner(scratch)["pid"] == os.getpid()
    out = tmp_path / "o"
    with output.staging(out) as stage:
        assert output.scratch_owner(stage)
        (stage / "x").write_text("x")
        output.commit(stage, out, "convert")
    assert output.owned(out) and not (out / output.SCRATCH).exists()
