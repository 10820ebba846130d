"""edgekit tune: search within a budget, held-out check, resume, a two-worker Optuna cluster on
shared storage, the no-solution path, and the HTML report rendered in a real headless Chromium."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from clihelp import run_cli


@pytest.fixture(scope="module")
def tuned(small_keras, tiny_eval, tmp_path_factory):
    from edgekit import tune
    out = tmp_path_factory.mktemp("tune") / "t"
    storage = f"sqlite:///{out.parent / 'shared.db'}"
    result = tune.tune(small_keras, target="cpu-int8", data=tiny_eval, max_accuracy_drop=5.0, trials=4, workers=2,
                       cluster=storage, out=out)
    return result, out, storage


def test_finds_a_cheaper_artifact_within_budget_checked_on_held_out_data(tuned):
    result, out, _ = tuned
    best = result["best"]
    assert best and best["drop_points"] <= 5.0 and best["holdout_drop_points"] <= 5.0
    # latency is not asserted: a loaded machine decides it. By the recommendation rule a quantized trial is
    # chosen only when stably faster than fp32 in the quiet phase; otherwise fp32 itself is.
    assert best["bytes"] < result["fp32"]["bytes"] or (
        best["key"] == result["fp32"]["key"] and any("recommendation rule" in t["why"] for t in result["trials"]))
    assert Path(result["best_artifact"]).is_file()
    assert len(result["trials"]) + result["trials_pruned"] >= 4 and result["pareto"]
    assert "tuning split" in result["how"] and "held-out split" in result["how"]
    saved = json.loads((out / "tune.json").read_text())
    assert saved["best"]["key"] == best["key"] and (out / "data-holdout.npz").is_file()


def test_quiet_phase_and_why_each_trial_was_not_chosen(tuned):
    result, _, _ = tuned
    fp32, best = result["fp32"], result["best"]
    for t in (fp32, best, *result["pareto"]):  # re-timed together after the search, several processes each
        assert t["quiet"] and t["latency"]["processes"] >= 3 and "latency_ms_search" in t
        assert {"cv", "iqr", "spread", "unstable"} <= set(t["latency"])
    ratio = best["vs_fp32_latency"]
    assert ratio["value"] == pytest.approx(best["latency_ms"] / fp32["latency_ms"])
    whys = [t["why"] for t in result["trials"]]
    assert all(whys) and (whys.count("chosen") >= 1 or best["key"] == fp32["key"])
    assert all(w == "chosen" or w.startswith(("over budget on the tuning split", "over budget on the held-out",
                                              "dominated by", "within budget, but", "failed:", "held-out check",
                                              "not stably faster than fp32"))
               for w in whys)


def test_trials_ran_in_worker_processes_sharing_the_storage(tuned):
    """Which of the two workers takes which trial is up to the scheduler: on a quiet machine one worker
    can drain a 4-trial budget before the other has imported TensorFlow (seen in CI). So: every trial
    ran in a worker process, not in tune's own, and all of them are in the one shared study."""
    result, _, _ = tuned
    import os
    searched = [t for t in result["trials"] if t["recipe"]["precision"] != "fp32"]
    assert searched and all(t["worker_pid"] not in (None, os.getpid()) for t in searched)


def test_rerun_resumes_without_redoing_trials(tuned, small_keras, tiny_eval):
    from edgekit import tune
    result, out, storage = tuned
    cached = sorted((out / "trials").iterdir())
    mtimes = {p.name: (p / "trial.json").stat().st_mtime for p in cached}
    again = tune.tune(small_keras, target="cpu-int8", data=tiny_eval, max_accuracy_drop=5.0, trials=4, workers=2,
                      cluster=storage, out=out)
    assert len(again["trials"]) == len(result["trials"])
    assert {p.name: (p / "trial.json").stat().st_mtime for p in sorted((out / "trials").iterdir())} == mtimes


def test_no_candidate_within_an_impossible_budget(small_keras, tiny_eval, capsys, tmp_path):
    result = run_cli(capsys, "tune", small_keras, "--data", tiny_eval, "--max-accuracy-drop", "-50", "--trials", "2",
                     "--workers", "1", "--out", tmp_path / "t")
    assert result.code == 0, result.err
    saved = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert saved["best"] is None and saved["closest"] and saved["blocking_layers"]
    assert "No candidate met" in result.out and "block it" in result.out


def test_html_report_renders_in_headless_chromium(tuned, capsys, tmp_path):
    _, out, _ = tuned
    page = tmp_path / "report.html"
    result = run_cli(capsys, "report", str(out), "--out", str(page))
    assert result.code == 0, result.err
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by make setup (requirements/apt.txt)"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    html = dom.stdout
    assert html.count("<svg class=\"pareto\"") == 2 and "class=\"trial\"" in html
    assert "CHOSEN" in html and "Per-layer int8 sensitivity" in html
    for label in ("measured on host", "emulated", "estimated", "measured on remote device"):
        assert label in html


@pytest.mark.parametrize("chosen", ["fp32", "quantized"])
def test_html_report_marks_the_chosen_artifact_whichever_it_is(tuned, chosen):
    """The recommendation rule can choose fp32 itself (a tiny model on a quiet host): the chosen row is still
    in the table, whichever candidate it is."""
    from edgekit import html_report
    result = json.loads((tuned[1] / "tune.json").read_text())
    ok = [t for t in result["trials"] if t.get("ok")]
    result["best"] = dict(result["fp32"] if chosen == "fp32" else ok[0], holdout_drop_points=0.0)
    page = html_report._tune(result)
    assert page.count("<td>CHOSEN</td>") == 1 and "Per-layer int8 sensitivity" in page
    assert ("the fp32 baseline itself" in page) == (chosen == "fp32")
