"""edgekit tune past one machine: participants with separate --out directories (no shared disk) on
one real PostgreSQL study, timing every trial on a pool of two SSH devices; one participant is
SIGKILLed mid-trial and Optuna's heartbeat hands its trial to the other; a lost database stops a
participant with one line."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRIALS = 4


def _tune(url: str, out: Path, *extra: str) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "a")
    return subprocess.Popen([sys.executable, "-m", "edgekit", "tune", "--cluster", url, "--out", str(out),
                             "--trials", str(TRIALS), "--workers", "1", "--heartbeat", "2",
                             "--max-accuracy-drop", "2", *extra], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


_STORAGES: dict = {}


def _study(url: str):
    """The study of this database (each test database holds one), or None before a participant made it."""
    import optuna

    from edgekit import tune
    if url not in _STORAGES:  # one engine (connection pool) per database
        _STORAGES[url] = tune.storage(url, heartbeat_s=2)
    names = optuna.study.get_all_study_names(_STORAGES[url])
    return optuna.load_study(study_name=names[0], storage=_STORAGES[url]) if names else None


def _running(url: str) -> bool:
    study = _study(url)
    return bool(study) and any(t.state.name == "RUNNING" for t in study.trials)


def _kill_everything(pid: int) -> None:
    """SIGKILL the participant and everything it started, as if its machine went away."""
    import psutil
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _wait(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(postgres, sshd, tmp_path_factory):
    """Participants A and B tune the default model on one study. A is SIGKILLed during its second trial,
    B goes on; A is then started again with the same command and finishes from the study."""
    from edgekit import pipeline
    pipeline.default_model()  # trained once, before the participants start
    env = {"EDGEKIT_SSH_KEY": str(sshd["dir"] / "client_key"), "EDGEKIT_SSH_KNOWN_HOSTS": str(sshd["dir"] / "known_hosts"),
           "EDGEKIT_REMOTE_PYTHON": sys.executable}
    os.environ.update(env)
    url = postgres.create_database("tune")
    root = tmp_path_factory.mktemp("cluster")
    pool = ("--device", sshd["url"], "--device", sshd["url_b"])
    started = time.time()
    b = _tune(url, root / "b", *pool)
    a = _tune(url, root / "a", *pool)
    mine = f"{socket.gethostname()}/{a.pid}"

    def a_mid_second_trial():
        if a.poll() is not None:
            raise AssertionError(f"A ended early: {(root / 'a.log').read_text()[-2000:]}")
        study = _study(url)
        trials = [t for t in study.trials if t.user_attrs.get("participant") == mine] if study else []
        converting = [t for t in trials if t.state.name == "RUNNING" and "figures" not in t.user_attrs]
        return converting[0] if converting and any(t.state.name == "COMPLETE" for t in trials) else None

    killed = _wait(a_mid_second_trial, 600, "A to run its second trial")
    _kill_everything(a.pid)
    a.wait()
    assert b.wait(timeout=600) == 0, (root / "b.log").read_text()[-3000:]
    again = _tune(url, root / "a", *pool)
    assert again.wait(timeout=600) == 0, (root / "a.log").read_text()[-3000:]
    for k in env:
        os.environ.pop(k)
    return {"url": url, "a": root / "a", "b": root / "b", "killed": killed.number, "a_pid": mine,
            "seconds": time.time() - started}


def test_trials_from_both_participants_in_both_results(cluster):
    a, b = (json.loads((cluster[p] / "tune.json").read_text()) for p in ("a", "b"))
    assert cluster["a_pid"] in a["study"]["participants"] and len(a["study"]["participants"]) >= 2
    assert a["study"]["participants"] == b["study"]["participants"]
    assert sorted(t["key"] for t in a["trials"]) == sorted(t["key"] for t in b["trials"])
    assert len(a["trials"]) + a["trials_pruned"] >= TRIALS
    assert a["study"]["identity"] == b["study"]["identity"] and "holdout_split_sha256" in a["study"]["identity"]
    print(f"\ncluster scenario: {cluster['seconds']:.0f} s wall, {len(a['trials'])} trials from "
          f"{len(a['study']['participants'])} participants")


def test_best_artifact_of_either_participant_has_the_stored_hash(cluster):
    from edgekit import tune
    stored = {t.user_attrs["figures"]["key"]: t.user_attrs["figures"]["sha256"]
              for t in _study(cluster["url"]).trials if t.user_attrs.get("figures", {}).get("ok")}
    for participant in ("a", "b"):
        result = json.loads((cluster[participant] / "tune.json").read_text())
        assert result["best"], f"{participant} chose nothing"
        assert tune.artifact_hash(Path(result["best_artifact"])) == stored[result["best"]["key"]]
        assert Path(result["best_artifact"]).is_relative_to(cluster[participant])


def test_killed_trial_failed_by_heartbeat_and_retried(cluster):
    import optuna
    trials = _study(cluster["url"]).trials
    assert trials[cluster["killed"]].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == cluster["killed"]]
    assert retries and retries[0].params == trials[cluster["killed"]].params


def test_every_trial_timed_on_the_device_pool_one_job_per_device(cluster, sshd):
    result = json.loads((cluster["b"] / "tune.json").read_text())
    assert "remote device pool" in result["how"]
    timed = [t for t in result["trials"] if t["ok"]]
    assert timed and all(t["latency_how"].startswith("measured on remote device") for t in timed)
    assert {t["device"] for t in timed} <= {sshd["url"], sshd["url_b"]}
    for device in {t["device"] for t in timed}:
        # a set: two trials of the same recipe (e.g. a killed trial and its retry) share one measurement
        windows = sorted({(t["timed_at"]["start"], t["timed_at"]["end"]) for t in timed if t["device"] == device})
        assert all(end <= start for (_, end), (start, _) in zip(windows, windows[1:])), windows


def test_lost_database_stops_with_one_line(postgres, small_keras, tiny_eval, tmp_path):
    """A second server is stopped while a participant runs: it stops with one line and keeps its trials."""
    from conftest import PostgresServer
    server = PostgresServer(postgres.bin)
    try:
        server.start()
        url = server.create_database("doomed")
        out = tmp_path / "t"
        proc = subprocess.Popen([sys.executable, "-m", "edgekit", "tune", str(small_keras), "--data", str(tiny_eval),
                                 "--cluster", url, "--out", str(out), "--trials", "8", "--workers", "1",
                                 "--heartbeat", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait(lambda: proc.poll() is not None or _running(url), 600, "a running trial")
        server.stop("immediate")  # while the trial converts: its worker finds the database gone when it reports
        _, err = proc.communicate(timeout=300)
    finally:
        server.remove()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2, err[-2000:]
    assert lines[-1].startswith("error: lost the study database postgresql://edgekit@127.0.0.1:"), err[-2000:]
    assert "rerun the same command to resume" in lines[-1] and "Traceback" not in err
    kept = len(list((out / "trials").glob("*/trial.json")))  # the fp32 baseline at least
    assert kept >= 1 and f"kept the {kept} trial(s) run here" in lines[-1]
