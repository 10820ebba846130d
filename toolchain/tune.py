"""`edgekit tune`: the cheapest artifact within an accuracy budget, and the whole trade-off.

1. `--data` is split in two, once: a *tuning* half that trials are scored on (convert holds its
   own calibration slice apart from it), and a *held-out* half that only the final choice is
   checked on. Nothing is returned that misses the budget on the held-out half.
2. Per-layer sensitivity (passes/sensitivity.py) ranks the layers; "keep in float" candidates are
   the top of that ranking, never a blind guess.
3. Optuna's multi-objective sampler (NSGA-II) searches precision, per-channel/per-tensor,
   calibration method and samples, layers kept in float, pruning (kind, level, fine-tuning) and
   distillation into a narrower student (width, temperature; Keras models);
   objectives: accuracy drop and the cost (`--objective` latency, size or memory).
   Trials cannot leave the budget by keeping *fewer* layers in float than one that already
   missed it by far (monotone in keep-float): those are pruned without running.
4. Every trial is cached by the content hash of model, data and recipe in <out>/trials/<hash>/,
   and the study lives in <out>/study.db, so an interrupted `tune` resumes where it stopped.
   Trials run in parallel worker processes sharing that storage (`--workers`), or on any Optuna
   storage URL given with `--cluster` (docs/SCALING.md).
5. Nothing but the study is shared: every trial's recipe, figures and artifact hash live in it
   (trial user attributes), so participants on other machines, each with its own --out, see
   everything; the one that finishes rebuilds the chosen artifact from its recipe and checks its
   hash. Participants must agree on model, data split, target and objective: the study keeps
   their hashes and refuses a participant that differs. Workers that die are Optuna's business:
   a heartbeat marks their trials failed and RetryHeartbeatStaleTrialCallback queues them again.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import children, interrupt, output
from .errors import EdgekitError, RunnerError
from .runner import failure_reason

STUDY = "edgekit-tune"
TRIAL_TIMEOUT_S = 1800
PRUNE_CHOICES = ("none", "magnitude:0.5", "channels:0.25", "channels:0.5")
DISTILL_CHOICES = ("none", "width:0.5", "width:0.25")  # Keras models: a narrower student, distilled
DISTILL_EPOCHS = 15  # per trial, with early stopping
HEARTBEAT_S = 15  # a running trial's heartbeat; after 4 missed beats the other participants retry it
LOST_STORAGE = 75  # a worker's exit code when the study's database went away


@dataclass
class TuneSetup:
    model: Path
    target: str
    fmt: str
    tune_data: Path
    holdout_data: Path
    out: Path
    budget_points: float
    objective: str
    candidates: list[str]  # layers, most sensitive first
    keras: bool
    source_accuracy: float
    trials_budget: int
    storage: str
    targets_dirs: list[str]
    deadline_s: float | None = None  # --budget-minutes: workers stop starting trials after this
    devices: list[str] = field(default_factory=list)  # ssh:// pool that times every trial instead of this host
    study: str = STUDY
    participant: str = ""  # host/pid of the tune process, recorded with every trial it runs
    heartbeat_s: int = HEARTBEAT_S
    data_sha256: str = ""  # of --data, before the split


def recipe_space(trial, setup: TuneSetup) -> dict:
    precision = trial.suggest_categorical("precision", ["int8", "dynamic", "fp16"])
    calibrated = precision == "int8"  # the other modes have no calibration or per-layer float choice
    recipe = {
        "precision": precision,
        "per_channel": trial.suggest_categorical("per_channel", [True, False]) if calibrated else True,
        "calib_method": trial.suggest_categorical("calib_method", ["minmax", "percentile", "entropy"])
        if calibrated else "minmax",
        "calib_samples": trial.suggest_categorical("calib_samples", [32, 100]) if calibrated else 100,
        "keep_float": trial.suggest_int("keep_float", 0, min(2, len(setup.candidates))) if calibrated else 0,
        "prune": trial.suggest_categorical("prune", PRUNE_CHOICES if setup.keras else ("none", "magnitude:0.5")),
    }
    recipe["finetune_epochs"] = trial.suggest_categorical("finetune_epochs", [0, 2]) if recipe["prune"] != "none" \
        and setup.keras else 0
    recipe["distill"] = trial.suggest_categorical("distill", DISTILL_CHOICES) if setup.keras else "none"
    recipe["temperature"] = trial.suggest_categorical("temperature", [2.0, 4.0]) if recipe["distill"] != "none" else 0
    recipe["keep_float_layers"] = setup.candidates[:recipe["keep_float"]]  # the recipe alone rebuilds the artifact
    return recipe


def trial_key(setup: TuneSetup, recipe: dict) -> str:
    digest = hashlib.sha256()
    for path in (setup.model, setup.tune_data):
        digest.update(content_hash(path).encode())
    digest.update(json.dumps([setup.target, setup.fmt, setup.devices, recipe], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def content_hash(path: Path) -> str:
    """sha256 of a model or data set by content, the same on every machine: arrays of an .npz (not the
    zip container), relative names and bytes of a directory's files, bytes of any other file."""
    digest = hashlib.sha256()
    if path.suffix == ".npz":
        with np.load(path) as npz:
            for name in sorted(npz.files):
                array = np.ascontiguousarray(npz[name])
                digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
                digest.update(array.tobytes())
        return digest.hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
        digest.update(f.read_bytes())
    return digest.hexdigest()


def artifact_hash(path: Path) -> str:
    """sha256 over every file of an artifact (names and bytes), e.g. an OpenVINO .xml and its .bin."""
    from . import backends
    digest = hashlib.sha256()
    for f in backends.for_artifact(path).files(path):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def run_trial(setup: TuneSetup, recipe: dict) -> dict:
    """Convert with one recipe (cached by content hash) and return its figures.

    The conversion runs in its own process: a converter that crashes fails that trial only.
    """
    key = trial_key(setup, recipe)
    cached = setup.out / "trials" / key / "trial.json"
    if not cached.is_file():
        payload = json.dumps({"setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(setup).items()},
                              "recipe": recipe})
        try:
            proc = children.run([sys.executable, "-m", "edgekit.tune"], TRIAL_TIMEOUT_S, input=payload)
            why = f"the conversion crashed (exit {proc.returncode}): {failure_reason(proc.returncode, proc.stderr)}"
        except subprocess.TimeoutExpired:
            why = f"the conversion timed out after {TRIAL_TIMEOUT_S} s"
        if not cached.is_file():
            _save(cached, {"key": key, "recipe": recipe, "ok": False, "worker_pid": os.getpid(), "error": why})
    return json.loads(cached.read_text())


def _save(path: Path, figures: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(figures, indent=2))
    tmp.replace(path)


def _convert_trial(setup: TuneSetup, recipe: dict) -> None:
    """One trial's conversion (in the trial's own process); writes trial.json."""
    from . import pipeline
    key = trial_key(setup, recipe)
    cached = setup.out / "trials" / key / "trial.json"
    options = dict(target=setup.target, formats=[setup.fmt], data=setup.tune_data, precision=recipe["precision"],
                   per_tensor=not recipe["per_channel"], calib_method=recipe["calib_method"],
                   calib_samples=recipe["calib_samples"],
                   keep_float=recipe.get("keep_float_layers", setup.candidates[:recipe["keep_float"]]),
                   runs=50, warmup=5, out=setup.out / "trials" / key / "artifact", force=True,
                   targets_dirs=setup.targets_dirs, emulate=False)
    if recipe["prune"] != "none":
        options.update(prune=recipe["prune"], finetune_epochs=recipe["finetune_epochs"] or None)
    if recipe.get("distill", "none") != "none":
        options.update(distill=recipe["distill"], distill_temperature=recipe["temperature"], distill_epochs=DISTILL_EPOCHS)
    try:
        report = pipeline.convert(setup.model, **options)
        artifact = next(a for a in report["artifacts"] if a["role"] == "target")
        if artifact["status"] != "ok":
            raise EdgekitError(artifact["reason"])
        figures = {"key": key, "recipe": recipe, "ok": True, "accuracy": artifact["accuracy"]["value"],
                   "drop_points": (report["source_accuracy"] - artifact["accuracy"]["value"]) * 100,
                   "bytes": artifact["size"]["bytes"], "latency_ms": artifact["latency_ms"]["median"],
                   "memory_mib": artifact["memory"]["peak_rss_mib"] - artifact["memory"]["baseline_rss_mib"],
                   "latency_how": f"{artifact['latency_ms']['how']} on {socket.gethostname()}",
                   "file": str(Path(report["out_dir"]).relative_to(setup.out) / artifact["file"])}  # moves with out
        figures["sha256"] = artifact_hash(setup.out / figures["file"])
        if setup.devices:
            figures.update(_pool_figures(setup, setup.out / figures["file"], artifact["latency_ms"]))
    except EdgekitError as exc:
        figures = {"key": key, "recipe": recipe, "ok": False, "error": exc.one_line()}
    figures["worker_pid"] = os.getppid()  # the worker that ran this trial
    figures["participant"] = setup.participant
    _save(cached, figures)


def _pool_figures(setup: TuneSetup, artifact: Path, host_latency: dict) -> dict:
    """Latency and memory of the artifact on whichever device of the pool is free (device lock held)."""
    from . import backends, remote
    result = remote.bench_pool(setup.devices, backends.for_artifact(artifact).files(artifact), None,
                               host_latency["threads"], host_latency["warmup"], host_latency["runs"])
    return {"latency_ms": result["latency_ms"]["median"], "latency_how": result["how"], "device": result["device"],
            "memory_mib": result["memory"]["peak_rss_mib"] - result["memory"]["baseline_rss_mib"],
            "timed_at": result["timed_at"], "device_lock": result["device_lock"]}


def cost(figures: dict, objective: str) -> float:
    return {"latency": figures["latency_ms"], "size": figures["bytes"], "memory": figures["memory_mib"]}[objective]


def objective_fn(setup: TuneSetup):
    import optuna

    def objective(trial):
        trial.set_user_attr("worker", os.getpid())
        trial.set_user_attr("participant", setup.participant)
        recipe = recipe_space(trial, setup)
        if _hopeless(setup, trial, recipe):
            raise optuna.TrialPruned("a trial with more layers in float already missed the budget by far")
        figures = run_trial(setup, recipe)
        trial.set_user_attr("figures", figures)
        if not figures["ok"]:
            return float("inf"), float("inf")
        return figures["drop_points"], cost(figures, setup.objective)
    return objective


def _hopeless(setup: TuneSetup, trial, recipe: dict) -> bool:
    """Keeping fewer layers in float than a same-recipe trial that missed the budget by 2x cannot meet it."""
    for past in trial.study.get_trials(deepcopy=False):
        figures = past.user_attrs.get("figures")
        if not figures or not figures.get("ok"):
            continue
        same = {k: v for k, v in figures["recipe"].items() if not k.startswith("keep_float")} == \
            {k: v for k, v in recipe.items() if not k.startswith("keep_float")}
        if same and figures["recipe"]["keep_float"] >= recipe["keep_float"] and \
                figures["drop_points"] > 2 * setup.budget_points + 1:
            return True
    return False


def storage(url: str, heartbeat_s: int = HEARTBEAT_S):
    """An Optuna RDB storage with its heartbeat: a trial whose participant stops beating (killed, machine
    gone) is marked failed by the others and queued once more. SQLite waits for write locks instead of failing."""
    import warnings

    import optuna
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    import sqlalchemy
    url = driver_url(url)
    engine = {"connect_args": {"timeout": 300}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat_s, grace_period=4 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 4:  # participants that start together on a fresh database race to create its tables
                raise
            time.sleep(0.5 * (attempt + 1))


def driver_url(url: str) -> str:
    """postgresql:// means psycopg 3 (the [cluster] extra), not SQLAlchemy's default psycopg2."""
    scheme = url.split("://", 1)[0]
    if scheme in ("postgresql", "postgres"):
        import importlib.util
        if importlib.util.find_spec("psycopg") is None:
            raise EdgekitError("the PostgreSQL driver (psycopg) is not installed",
                               "pip install 'edgekit-toolchain[cluster]'")
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def redacted(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def storage_error(exc: BaseException) -> bool:
    """True for a database that cannot be reached or went away (not for a bug of ours)."""
    import optuna
    import sqlalchemy
    return isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError))


class StudyLost(EdgekitError):
    """The study's database went away: one line, and the trials run here stay for a rerun."""


def _lost(setup: TuneSetup, reason: str) -> EdgekitError:
    kept = len(list((setup.out / "trials").glob("*/trial.json")))
    return StudyLost(f"lost the study database {redacted(setup.storage)} ({reason[:200]})",
                        f"kept the {kept} trial(s) run here in {setup.out}/trials; rerun the same command to resume")


def study_identity(setup: TuneSetup) -> dict:
    """What participants must agree on; the held-out split is part of it, by content hash."""
    return {"model_sha256": content_hash(setup.model), "data_sha256": setup.data_sha256,
            "tune_split_sha256": content_hash(setup.tune_data),
            "holdout_split_sha256": content_hash(setup.holdout_data), "target": setup.target, "format": setup.fmt,
            "objective": setup.objective, "devices": sorted(setup.devices)}


def open_study(setup: TuneSetup, seed: int = 0):
    """Create or join the study; refuse to join one that tunes another model, split, target or objective."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    try:
        study = optuna.create_study(study_name=setup.study, storage=storage(setup.storage, setup.heartbeat_s),
                                    load_if_exists=True, directions=["minimize", "minimize"], sampler=sampler)
        mine, theirs = study_identity(setup), study.user_attrs.get("identity")
        if theirs is None:
            study.set_user_attr("identity", mine)
        elif theirs != mine:
            differ = ", ".join(k for k in mine if theirs.get(k) != mine[k])
            raise EdgekitError(f"study '{setup.study}' in {redacted(setup.storage)} was started with a different "
                               f"{differ}", "give every participant the same model, --data, --target, --objective "
                               "and --device; or use another --out (or database) for a new study")
        for precision in ("int8", "dynamic", "fp16"):  # start from the recipes people reach for first
            study.enqueue_trial({"precision": precision, "per_channel": True, "calib_method": "minmax",
                                 "calib_samples": 100, "keep_float": 0, "prune": "none", "distill": "none"},
                                skip_if_exists=True)
    except Exception as exc:
        if storage_error(exc):
            raise EdgekitError(f"cannot use the study database {redacted(setup.storage)} "
                               f"({str(exc).splitlines()[0][:200]})",
                               "check the URL, that the server runs and this machine may connect") from None
        raise
    return study


def _worker(setup: TuneSetup, trials: int) -> None:
    import traceback

    import optuna
    interrupt.install()  # SIGTERM from the parent: the running trial's process group goes with us
    log = setup.out / f"worker-{os.getpid()}.log"
    with open(log, "a") as stream:  # the heartbeat thread's and Optuna's complaints go here, not in front of results
        os.dup2(stream.fileno(), 2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=setup.study, storage=storage(setup.storage, setup.heartbeat_s))
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        study.optimize(objective_fn(setup), n_trials=trials, timeout=setup.deadline_s, catch=(Exception,),
                       callbacks=[optuna.study.MaxTrialsCallback(setup.trials_budget, states=done)])
    except Exception as exc:  # outside a trial: keep the trace; the parent decides
        with open(log, "a") as stream:
            stream.write(traceback.format_exc())
        if storage_error(exc):
            (setup.out / f"worker-{os.getpid()}.lost").write_text(str(exc).splitlines()[0] if str(exc) else repr(exc))
            sys.exit(LOST_STORAGE)
        raise


def _counted(study) -> int:
    """Trials that count towards the budget (as MaxTrialsCallback counts them): finished, or pruned."""
    import optuna
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                         optuna.trial.TrialState.PRUNED)))


def _run_workers(setup: TuneSetup, workers: int, trials: int) -> int:
    """Start the local workers and wait for them; how many died. Losing the database stops the participant."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(setup, trials)) for _ in range(workers)]
    try:
        for p in processes:
            p.start()
        for p in processes:
            p.join()
    except BaseException:  # interrupted: stop the workers (each stops its trial) before cleaning up
        for p in processes:
            p.terminate()
        for p in processes:
            p.join(interrupt.GRACE_S * 3)
            if p.is_alive():
                p.kill()
        raise
    for p in processes:
        lost = setup.out / f"worker-{p.pid}.lost"
        if p.exitcode == LOST_STORAGE and lost.is_file():
            raise _lost(setup, lost.read_text())
    return sum(1 for p in processes if p.exitcode)


def _wait_for_others(study, setup: TuneSetup, deadline: float | None, progress) -> None:
    """Wait until no trial runs anywhere: finished by its participant, or failed by Optuna's heartbeat check."""
    import optuna
    while True:
        optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running or (deadline and time.time() > deadline):
            return
        progress(f"waiting for {len(running)} trial(s) still running on other participants")
        time.sleep(min(setup.heartbeat_s, 5))


def search(setup: TuneSetup, study, workers: int, deadline: float | None = None,
           progress=lambda msg: None) -> tuple[list[dict], int]:
    """Every trial's figures in the study (all participants'), and how many were pruned without running."""
    import optuna
    waiting = (optuna.trial.TrialState.WAITING,)
    try:
        progress(f"{_counted(study)} trials already done in study '{setup.study}'")
        for rounds in range(1, 4):  # a local worker that dies is replaced, twice at most
            remaining = max(setup.trials_budget - _counted(study), 0)
            died = 0
            if remaining:
                progress(f"running {remaining} trials on {workers} worker(s)")
                died = _run_workers(setup, min(workers, remaining), remaining)
                if died:
                    progress(f"{died} worker(s) stopped early (see {setup.out}/worker-*.log); Optuna retries their trials")
            _wait_for_others(study, setup, deadline, progress)
            if setup.trials_budget <= _counted(study) or (deadline and time.time() > deadline):
                break
            if not died and not study.get_trials(deepcopy=False, states=waiting):
                break
        trials = study.get_trials(deepcopy=False)
    except EdgekitError:
        raise
    except Exception as exc:
        if storage_error(exc):
            raise _lost(setup, str(exc).splitlines()[0]) from None
        raise
    pruned = sum(1 for t in trials if t.state == optuna.trial.TrialState.PRUNED)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "figures" in t.user_attrs]
    return [t.user_attrs["figures"] for t in done], pruned


def pareto(trials: list[dict], objective: str) -> list[dict]:
    ok = [t for t in trials if t["ok"]]
    front = [t for t in ok if not any(o["drop_points"] <= t["drop_points"] and cost(o, objective) <= cost(t, objective)
                                      and (o["drop_points"], cost(o, objective)) != (t["drop_points"], cost(t, objective))
                                      for o in ok)]
    return sorted(front, key=lambda t: cost(t, objective))


def holdout_accuracy(path: Path, data: Path) -> float:
    """Accuracy of an artifact on the held-out split (never seen while tuning)."""
    from . import measure, runner
    with np.load(data) as npz:
        x, y = npz["x"], npz["y"]
    with output.tempdir("holdout-") as tmp:
        runner.save_stacked(tmp / "in.npz", "in", [[x[i:i + 1]] for i in range(len(x))])
        runner.invoke(path, tmp / "r.json", runs=1, warmup=0, inputs=tmp / "in.npz", outputs=tmp / "out.npz",
                      what="the held-out run")
        return measure.accuracy(runner.load_stacked(tmp / "out.npz", "out"), y)


def labelled_npz(path: Path, why: str) -> tuple[np.ndarray, np.ndarray]:
    """x and integer labels y from --data, checked before anything is written."""
    from .data import check_labels, read_arrays
    arrays = read_arrays(path, "data")
    for key in ("x", "y"):
        if key not in arrays:
            raise EdgekitError(f"{path} has no array named {key!r} (has: {', '.join(arrays) or 'none'})", why)
    x = arrays["x"]
    if x.ndim < 1 or len(x) < 4:
        raise EdgekitError(f"{path}: x holds {len(x) if x.ndim else 0} sample(s); tune splits them in two halves",
                           "give at least 4 labelled samples (hundreds for a meaningful accuracy)")
    y, _ = check_labels(arrays["y"], path, len(x))
    return x, y[: len(x)]


def split_data(data: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Tuning and held-out halves of --data (a fixed shuffle, saved once so reruns reuse them)."""
    tune_path, holdout_path = out / "data-tune.npz", out / "data-holdout.npz"
    if not tune_path.is_file():
        x, y = labelled_npz(data, "tune needs labelled data to measure accuracy")
        order = np.random.default_rng(seed).permutation(len(x))
        half = len(x) // 2
        np.savez(tune_path, x=x[order[:half]], y=y[order[:half]])
        np.savez(holdout_path, x=x[order[half:]], y=y[order[half:]])
    return tune_path, holdout_path


def choose(trials: list[dict], setup: TuneSetup, fp32: dict | None, progress=lambda msg: None) -> dict:
    """The cheapest trial within budget on the tuning split that also holds it on the held-out split."""
    within = sorted((t for t in _unique(trials) if t["ok"] and t["drop_points"] <= setup.budget_points),
                    key=lambda t: cost(t, setup.objective))
    holdout_source = holdout_accuracy(setup.out / fp32["file"], setup.holdout_data) if fp32 else None
    for t in within:
        t = local_artifact(t, setup, progress)
        if t is None or t["drop_points"] > setup.budget_points:
            continue
        try:
            t["holdout_accuracy"] = holdout_accuracy(setup.out / t["file"], setup.holdout_data)
        except RunnerError as exc:
            t["holdout_error"] = str(exc)
            continue
        t["holdout_drop_points"] = (holdout_source - t["holdout_accuracy"]) * 100 if holdout_source is not None else None
        if t["holdout_drop_points"] is not None and t["holdout_drop_points"] <= setup.budget_points:
            return t
    return {}


def _unique(trials: list[dict]) -> list[dict]:
    """One entry per recipe (a repeated recipe is the same cached trial)."""
    return list({t["key"]: t for t in trials}.values())


QUIET_CANDIDATES = 12  # within-budget trials re-measured in the quiet phase (cheapest by search figures)


def quiet_phase(trials: list[dict], fp32: dict, setup: TuneSetup, progress=lambda msg: None) -> None:
    """Re-time the fp32 baseline, the Pareto front and the cheapest within-budget trials together, after
    every worker has stopped: one timing phase, runner processes interleaved between them. Their
    `latency_ms` becomes that figure (the search-time one is kept as `latency_ms_search`)."""
    from . import targets, timing
    ok = _unique([t for t in trials if t["ok"]])
    within = sorted((t for t in ok if t["drop_points"] <= setup.budget_points), key=lambda t: cost(t, setup.objective))
    chosen = {t["key"]: t for t in [fp32, *pareto(ok, setup.objective), *within[:QUIET_CANDIDATES]]}
    for t in chosen.values():  # trials run by other participants: rebuilt here from their recipes
        local_artifact(t, setup, progress)
    bench = targets.get_target(setup.target, tuple(setup.targets_dirs)).profile.bench
    with np.load(setup.tune_data) as npz:
        first = npz["x"][:1]
    with output.tempdir("quiet-") as tmp:
        inputs = timing.one_sample([[first]], tmp)
        progress(f"quiet phase: timing fp32 and {len(chosen) - 1} candidate(s) together")
        figures = timing.measure([setup.out / t["file"] for t in chosen.values()], inputs, threads=bench.threads,
                                 warmup=bench.warmup, runs=bench.runs, processes=bench.processes, progress=progress)
    for t, result in zip(chosen.values(), figures):
        if "error" in result:
            continue
        for same in (x for x in [fp32, *trials] if x["key"] == t["key"]):
            same.setdefault("latency_ms_search", same["latency_ms"])
            same.update(latency_ms=result["latency_ms"]["median"], latency=result["latency_ms"], quiet=True)


def why_not_chosen(trials: list[dict], best: dict, setup: TuneSetup) -> None:
    """Every trial's `why`: chosen, failed, over budget on either split, dominated, or just costlier."""
    ok = [t for t in trials if t["ok"]]
    for t in trials:
        if not t["ok"]:
            t["why"] = f"failed: {t['error']}"
        elif best and t["key"] == best["key"]:
            t["why"] = "chosen"
        elif t["drop_points"] > setup.budget_points:
            t["why"] = f"over budget on the tuning split ({t['drop_points']:+.2f} points)"
        elif t.get("holdout_error"):
            t["why"] = f"held-out check failed: {t['holdout_error']}"
        elif t.get("holdout_drop_points") is not None and t["holdout_drop_points"] > setup.budget_points:
            t["why"] = f"over budget on the held-out split ({t['holdout_drop_points']:+.2f} points)"
        else:
            better = next((o for o in ok if o["drop_points"] <= t["drop_points"]
                           and cost(o, setup.objective) <= cost(t, setup.objective)
                           and (o["drop_points"], cost(o, setup.objective)) != (t["drop_points"], cost(t, setup.objective))),
                          None)
            t["why"] = f"dominated by {recipe_text(better['recipe'])}" if better else \
                f"within budget, but its {setup.objective} is higher than the chosen one's"


def local_artifact(t: dict, setup: TuneSetup, progress) -> dict | None:
    """The trial with its artifact in our --out: there already when its bytes have the stored hash (it ran
    here), else rebuilt here from its recipe (conversion is deterministic) and the hash checked. Bytes that
    differ are never passed off as the stored trial: the figures measured on the rebuild replace it."""
    path = setup.out / t["file"]
    if "sha256" not in t:  # a trial from an edgekit that did not record hashes
        return t if path.is_file() else None
    if path.is_file() and artifact_hash(path) == t["sha256"]:
        return t
    progress(f"rebuilding trial {t['key']} here from its recipe (it ran on {t.get('participant', 'another machine')})")
    mine = run_trial(setup, t["recipe"])
    if not mine["ok"]:
        progress(f"trial {t['key']} does not rebuild here: {mine['error']}")
        return None
    if mine["sha256"] == t["sha256"]:
        return {**t, "file": mine["file"], "rebuilt_here": True}
    progress(f"trial {t['key']} rebuilt here with other bytes than {t.get('participant')}'s: using the figures "
             "measured here")
    return {**mine, "rebuilt_here": True, "stored_sha256": t["sha256"]}


def clean_copy(best: dict, out: Path) -> Path:
    """best/ in our own output directory: the chosen artifact alone. Returns its path relative to out."""
    target = out / "best"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree((out / best["file"]).parent, target)
    return Path("best") / Path(best["file"]).name


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def tune(model=None, target: str = "cpu-int8", data: Path | None = None, max_accuracy_drop: float = 0.5,
         relative: bool = False, budget_minutes: float | None = None, objective: str = "latency",
         out: Path | None = None, workers: int | None = None, cluster: str | None = None, trials: int = 16,
         force: bool = False, targets_dirs: list[str] | None = None, devices: list[str] | None = None,
         heartbeat_s: int = HEARTBEAT_S, progress=lambda msg: None) -> dict:
    from . import pipeline, targets
    targets_dirs = list(targets_dirs or [])
    profile = targets.get_target(target, tuple(targets_dirs)).profile
    options = pipeline.ConvertOptions(data=data)
    model, name = pipeline._resolve_model(model, options, progress)
    if options.data is None:
        raise EdgekitError("tune needs labelled data", "pass --data val.npz with x and y")
    out = Path(out or Path("edgekit-out") / f"{name}-tune-{target}")
    mode = output.check(out, [model, options.data], force, resume="tune")
    labelled_npz(Path(options.data), "tune needs labelled data to measure accuracy")
    run = dict(model=model, target=target, profile=profile, data=Path(options.data), final=out,
               max_accuracy_drop=max_accuracy_drop, relative=relative, budget_minutes=budget_minutes,
               objective=objective, workers=workers, cluster=cluster, trials=trials, targets_dirs=targets_dirs,
               devices=list(devices or []), heartbeat_s=heartbeat_s, progress=progress)
    if mode == "replace":  # the previous result stays until this one is complete
        with output.staging(out) as stage:
            result = _tune_into(stage, **run)
            output.commit(stage, out, "tune")
        return result
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # a new (or empty) directory, or our own earlier run resumed
    if mode == "new":
        output.write_marker(out, "tune")
    try:
        return _tune_into(out, **run)
    except EdgekitError as exc:
        if mode == "new" and not isinstance(exc, StudyLost):  # nothing worth resuming: leave the place as found
            shutil.rmtree(out) if created else [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in out.iterdir()]
        raise


def _tune_into(out: Path, model: Path, target: str, profile, data: Path, final: Path, max_accuracy_drop: float,
               relative: bool, budget_minutes, objective: str, workers, cluster, trials: int, targets_dirs,
               devices: list[str], heartbeat_s: int, progress) -> dict:
    """The whole search, written into `out` (the output itself, or its staging directory)."""
    tune_data, holdout = split_data(data, out)
    keras = model.suffix in (".keras", ".h5")
    setup = TuneSetup(model, target, profile.build.formats[0], tune_data, holdout, out, max_accuracy_drop, objective,
                      [], keras, 0.0, trials, cluster or f"sqlite:///{(out / 'study.db').resolve()}", targets_dirs,
                      devices=devices, study=f"{STUDY}-{model.stem}-{target}",
                      participant=f"{socket.gethostname()}/{os.getpid()}", heartbeat_s=heartbeat_s,
                      data_sha256=content_hash(data))
    if devices:
        from . import remote
        for url in devices:
            remote.parse(url)  # a malformed URL fails now, not in every trial
    study = open_study(setup)
    progress("fp32 baseline")
    fp32 = run_trial(setup, {"precision": "fp32", "per_channel": True, "calib_method": "minmax",
                             "calib_samples": 100, "keep_float": 0, "prune": "none", "finetune_epochs": 0,
                             "distill": "none", "temperature": 0})
    if not fp32["ok"]:
        raise EdgekitError(f"the fp32 baseline failed: {fp32['error']}", "check `edgekit convert` on this model")
    setup.source_accuracy = fp32["accuracy"]
    if relative:
        setup.budget_points = max_accuracy_drop * setup.source_accuracy  # percent of the source accuracy
    sensitivity = _shared_sensitivity(study, setup, lambda: _sensitivity(model, tune_data, target, targets_dirs, out,
                                                                         progress))
    setup.candidates = [row["layer"] for row in sensitivity]
    deadline = None
    if budget_minutes:
        setup.trials_budget = trials  # workers also stop at the time budget
        setup.deadline_s = budget_minutes * 60
        deadline = time.time() + setup.deadline_s
    all_trials, pruned = search(setup, study, workers or default_workers(), deadline, progress=progress)
    if setup.devices:  # timed on the device pool, one job per device at a time: those figures stand
        timed = all_trials
    else:
        quiet_phase(all_trials, fp32, setup, progress)
        timed = [t for t in all_trials if t.get("quiet")]
    front = pareto(_unique(timed), objective)
    progress("checking the best candidates on the held-out split")
    best = choose(timed, setup, fp32, progress)
    why_not_chosen(all_trials, best, setup)
    if best and fp32.get("latency") and best.get("latency"):
        from .timing import ratio
        best["vs_fp32_latency"] = ratio(best["latency"], fp32["latency"])
    result = {"schema": "edgekit.tune/1", "model": str(model), "target": target, "format": setup.fmt,
              "objective": objective, "budget_points": setup.budget_points, "relative": relative,
              "fp32": fp32, "best": best or None, "pareto": front, "trials": all_trials, "trials_pruned": pruned,
              "sensitivity": sensitivity, "out_dir": str(final),
              "study": {"name": setup.study, "storage": redacted(setup.storage), "identity": study_identity(setup),
                        "participants": sorted({t.get("participant", "") for t in all_trials} - {""})},
              "how": "accuracy on the tuning split for every trial; the chosen artifact re-checked on the held-out "
                     "split; " + (f"latency measured on remote device pool {', '.join(setup.devices)} for every "
                                  "trial, one job per device at a time (each trial's latency_how names the device)"
                                  if setup.devices else
                                  "latency measured on this host (the profile's threads): during the search for every "
                                  "trial on the host that ran it (latency_ms_search, latency_how; other workers busy), "
                                  "then for fp32, the Pareto front and the candidates again together in one quiet "
                                  "timing phase here after the search (latency_ms)") + "; artifact paths are relative "
                     "to out_dir"}
    if best:
        result["best_artifact"] = str(final / clean_copy(best, out))
    else:
        within = sorted((t for t in all_trials if t["ok"]), key=lambda t: t["drop_points"])[:3]
        result["closest"] = within
        result["blocking_layers"] = setup.candidates[:3]
    output.write_file(out / "tune.json", json.dumps(result, indent=2, default=str) + "\n")
    return result


def _shared_sensitivity(study, setup: TuneSetup, compute) -> list[dict]:
    """The per-layer ranking every participant uses: the study's, or computed here and stored first."""
    try:
        rows = study.user_attrs.get("sensitivity")
        if rows is None:
            rows = compute()
            study.set_user_attr("sensitivity", rows)
        return rows
    except Exception as exc:
        if storage_error(exc):
            raise _lost(setup, str(exc).splitlines()[0]) from None
        raise


def _sensitivity(model: Path, data: Path, target: str, targets_dirs, out: Path, progress) -> list[dict]:
    from . import pipeline
    cached = out / "sensitivity.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    progress("per-layer sensitivity")
    rows = pipeline.analyze(model, sensitivity=True, data=data, target=target, targets_dirs=targets_dirs)["sensitivity"]
    cached.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":  # one trial, run by run_trial in its own process: JSON on stdin
    interrupt.install()
    job = json.loads(sys.stdin.read())
    fields = job["setup"]
    for name in ("model", "tune_data", "holdout_data", "out"):
        fields[name] = Path(fields[name])
    _convert_trial(TuneSetup(**fields), job["recipe"])


def recipe_text(recipe: dict) -> str:
    parts = [recipe["precision"]]
    if recipe["precision"] == "int8":
        parts += ["per-channel" if recipe["per_channel"] else "per-tensor", recipe["calib_method"],
                  f"{recipe['calib_samples']} samples"]
    if recipe.get("keep_float"):
        parts.append(f"{recipe['keep_float']} layer(s) float")
    if recipe.get("distill", "none") != "none":
        parts.append(f"distill {recipe['distill']} T={recipe['temperature']:g}")
    if recipe.get("prune", "none") != "none":
        parts.append(recipe["prune"] + (f" + {recipe['finetune_epochs']} ep" if recipe.get("finetune_epochs") else ""))
    return ", ".join(parts)
