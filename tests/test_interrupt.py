"""Signals at several points of a real `edgekit` process: while the runner runs, while a converter
subprocess runs, inside a per-target worker, and SIGKILL. Afterwards: no staging or scratch
directory left, no child process still running, and the input byte-identical."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fake_backend as fake
from conftest import USER_SCRATCH_LOOKALIKES, default_signals, lookalikes_digest, tree_digest, user_lookalikes
from edgekit import output

PROFILE = 'name = "{name}"\n[build]\nformats = ["fake"]\n[bench]\nruns = 100000\nwarmup = 0\neval_samples = 4\n'


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can see."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                table[int(entry.name)] = (ppid, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, IndexError, ValueError):
                continue
    return table


def descendants(pid: int) -> dict[int, str]:
    table, found, frontier = processes(), {}, {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in table.items() if ppid in frontier and p not in found}
        found.update({p: table[p][1] for p in frontier})
    return found


def wait_for_descendant(proc: subprocess.Popen, needle: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for pid, cmdline in descendants(proc.pid).items():
            if needle in cmdline:
                time.sleep(0.3)  # let it get going
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no {needle} child appeared")


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or " Z " in Path(f"/proc/{pid}/stat").read_text():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def env(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    user_lookalikes(scratch)  # a user's folders named like edgekit scratch: never swept (issue #25)
    return {**os.environ, "TMPDIR": str(scratch)}


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """A failed assertion must not leave an edgekit (and its runner, holding the host timing lock)
    running into the next tests."""
    yield
    while STARTED:
        proc = STARTED.pop()
        for pid in [*descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate()


def start(args, env, cwd) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    STARTED.append(proc)
    return proc


def leftovers(tmp_path: Path) -> list[str]:
    """Anything of ours that should not outlive the run."""
    # .ses: a session-id file a TensorFlow-side library keeps in $TMPDIR (a run that completes leaves it too)
    scratch = tmp_path / "scratch"
    (tmp_path / "reference").mkdir(exist_ok=True)
    assert lookalikes_digest(scratch) == user_lookalikes(tmp_path / "reference"), "a user's folder was swept"
    found = [p.name for p in scratch.iterdir() if p.name not in (".ses", *USER_SCRATCH_LOOKALIKES)]
    found += [p.name for p in tmp_path.rglob(".*edgekit-*") if p.name != output.MARKER]
    return found


def slow_fake(tmp_path: Path, *names: str):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in names:
        (profiles / f"{name}.toml").write_text(PROFILE.format(name=name))
    model = fake.save_model(tmp_path / "model.npz", (1, 4, 4), classes=3, sleep_s=0.05)
    return model, profiles


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_the_runner(sig, tmp_path, env):
    model, profiles = slow_fake(tmp_path, "slow")
    before = tree_digest(model)
    proc = start(["convert", model, "--target", "slow", "--targets-dir", profiles, "--out", tmp_path / "out" / "o"],
                 env, tmp_path)
    runner = wait_for_descendant(proc, "edgekit.runner")
    code, err = stop(proc, sig)
    assert code == 128 + sig, err
    assert err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err
    assert gone(runner), "the runner outlived edgekit"
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()
    assert tree_digest(model) == before


def test_signal_keeps_the_previous_output(tmp_path, env):
    model, profiles = slow_fake(tmp_path, "slow")
    out = tmp_path / "o"
    quick = ["--target", "slow", "--targets-dir", profiles, "--out", out]
    assert subprocess.run([sys.executable, "-m", "edgekit", "convert", model, *quick, "--runs", "1"], env=env,
                          cwd=tmp_path, capture_output=True).returncode == 0
    previous = tree_digest(out)
    proc = start(["convert", model, *quick, "--force"], env, tmp_path)
    wait_for_descendant(proc, "edgekit.runner")
    assert stop(proc, signal.SIGTERM)[0] == 128 + signal.SIGTERM
    assert tree_digest(out) == previous and leftovers(tmp_path) == []


def test_signal_inside_a_per_target_worker(tmp_path, env):
    model, profiles = slow_fake(tmp_path, "slow", "slower")
    proc = start(["convert", model, "--target", "slow,slower", "--targets-dir", profiles, "--out", tmp_path / "o"],
                 env, tmp_path)
    runner = wait_for_descendant(proc, "edgekit.runner")
    code, err = stop(proc, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert gone(runner) and leftovers(tmp_path) == [] and not (tmp_path / "o").exists()


def test_signal_during_a_converter_subprocess(make_model, tmp_path, env):
    model = tmp_path / "m.onnx"
    model.write_bytes(make_model("onnx").read_bytes())
    proc = start(["convert", model, "--format", "tflite", "--out", tmp_path / "o"], env, tmp_path)
    converter = wait_for_descendant(proc, "onnx2tf")
    code, err = stop(proc, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert gone(converter), "onnx2tf outlived edgekit"
    assert leftovers(tmp_path) == [] and not (tmp_path / "o").exists()
    assert model.read_bytes() == make_model("onnx").read_bytes()


def test_leftovers_of_sigkill_are_removed_by_the_next_run(tmp_path, env):
    model, profiles = slow_fake(tmp_path, "slow")
    args = ["convert", model, "--target", "slow", "--targets-dir", profiles]
    proc = start([*args, "--out", tmp_path / "out" / "a"], env, tmp_path)
    runner = wait_for_descendant(proc, "edgekit.runner")
    proc.kill()
    proc.communicate(timeout=60)
    assert gone(runner), "the runner outlived a SIGKILLed edgekit"
    assert leftovers(tmp_path), "expected debris from SIGKILL"
    done = subprocess.run([sys.executable, "-m", "edgekit", *map(str, args), "--out", tmp_path / "out" / "b",
                           "--runs", "1"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]


def test_signal_during_a_tune_trial_leaves_no_debris(tiny_keras, tmp_path, env):
    """Issue #25: an interrupted tune on a new --out, stopped in its first trial (nothing to resume):
    no half-made --out, no scratch, no trial process; the user's look-alike folders in $TMPDIR stay."""
    import numpy as np
    from conftest import tiny_data
    x, y = tiny_data(48)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    proc = start(["tune", tiny_keras, "--data", tmp_path / "d.npz", "--out", tmp_path / "t", "--trials", "2"], env,
                 tmp_path)
    trial = wait_for_descendant(proc, "-m edgekit.tune", timeout=300)
    code, err = stop(proc, signal.SIGINT)
    assert code == 128 + signal.SIGINT, err
    assert err.strip().splitlines()[-1] == "interrupted; no partial output was kept" and "Traceback" not in err
    assert gone(trial), "the trial outlived tune"
    assert leftovers(tmp_path) == [] and not (tmp_path / "t").exists()
