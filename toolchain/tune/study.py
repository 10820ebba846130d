"""The tune study: Optuna storage (SQLite here, or any RDB URL shared by participants), the identity
participants must agree on, the objective, and the local worker processes that run trials."""
from __future__ import annotations

import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

from .. import interrupt
from ..errors import EdgekitError
from .trial import HEARTBEAT_S, TuneSetup, content_hash, cost, recipe_space, run_trial

LOST_STORAGE = 75  # a worker's exit code when the study's database went away


def objective_fn(setup: TuneSetup):
    import optuna

    def objective(trial):
        trial.set_user_attr("worker", os.getpid())
        recipe = recipe_space(trial, setup)
        # Marked as this participant's once every parameter is drawn: a trial killed while drawing is retried
        # with only the drawn parameters fixed, so it is not yet "this participant's recipe".
        trial.set_user_attr("participant", setup.participant)
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
        if same and len(figures["recipe"].get("keep_float", [])) >= len(recipe.get("keep_float", [])) and \
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


def check_url(url: str) -> None:
    """A --cluster URL edgekit can use, checked before anything is written: it parses, names a database
    SQLAlchemy knows, its driver is installed, and an SQLite one is a file in an existing folder."""
    from sqlalchemy.engine import make_url
    shown = redacted(str(url))[:120]
    try:
        parsed = make_url(driver_url(url))
        dialect = parsed.get_dialect()
    except EdgekitError:
        raise
    except Exception as exc:  # user input: whatever SQLAlchemy's parser raises is one line
        why = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise EdgekitError(f"--cluster {shown!r} is not a database URL ({why})",
                           "give e.g. postgresql://user@host/db or sqlite:////shared/dir/study.db") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise EdgekitError(f"--cluster {shown!r}: the {parsed.drivername} driver is not installed ({exc})",
                           "install it, or use postgresql:// (pip install 'edgekit-toolchain[cluster]') or "
                           "sqlite:///PATH") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db in ("", ":memory:") or db.startswith("file:"):
            raise EdgekitError(f"--cluster {shown!r} is an in-memory database: no other process can join it",
                               "give a file, e.g. sqlite:////shared/dir/study.db")
        if not Path(db).parent.is_dir():
            raise EdgekitError(f"--cluster {shown!r}: folder {Path(db).parent} does not exist",
                               "create it, or give another path")


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
                                 "calib_samples": 100, "keep_float": 0, "mixed": "off", "prune": "none",
                                 "distill": "none"},
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


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _run_workers(setup: TuneSetup, workers: int, trials: int) -> int:
    """Start the local workers and wait for them; how many died. Losing the database stops the participant."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(setup, trials)) for _ in range(workers)]
    saved = os.environ.get("PYTHONSAFEPATH")
    try:
        try:
            os.environ["PYTHONSAFEPATH"] = "1"  # spawn's `python -c`: nothing imported from the working directory
            for p in processes:
                p.start()
        finally:
            _restore_env("PYTHONSAFEPATH", saved)
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


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
