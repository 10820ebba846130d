"""Misuse of the surface added since the first safety pass (issue #25): report --out, unwritable
destinations, broken result files. Each case through the CLI, in-process; the user's files are
checked byte for byte afterwards."""
from __future__ import annotations

import json

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
