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

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np

from .. import output
from ..errors import EdgekitError
from .choose import choose, clean_copy, pareto, quiet_phase, why_not_chosen, _unique
from .study import StudyLost, check_url, default_workers, open_study, redacted, search, storage, study_identity, \
    _shared_sensitivity
from .trial import HEARTBEAT_S, STUDY, TuneSetup, artifact_hash, content_hash, recipe_space, recipe_text, run_trial

__all__ = ["tune", "TuneSetup", "recipe_space", "recipe_text", "run_trial", "storage", "artifact_hash",
           "content_hash"]


def labelled_npz(path: Path, why: str) -> tuple[np.ndarray, np.ndarray]:
    """x and integer labels y from --data, checked before anything is written."""
    from ..data import check_labels, read_arrays
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



def tune(model=None, target: str = "cpu-int8", data: Path | None = None, max_accuracy_drop: float = 0.5,
         relative: bool = False, budget_minutes: float | None = None, objective: str = "latency",
         out: Path | None = None, workers: int | None = None, cluster: str | None = None, trials: int = 16,
         force: bool = False, targets_dirs: list[str] | None = None, devices: list[str] | None = None,
         heartbeat_s: int = HEARTBEAT_S, progress=lambda msg: None) -> dict:
    from .. import pipeline, targets
    targets_dirs = list(targets_dirs or [])
    profile = targets.get_target(target, tuple(targets_dirs)).profile
    options = pipeline.ConvertOptions.make(data=data)
    model, name = pipeline._resolve_model(model, options, progress)
    if options.data is None:
        raise EdgekitError("tune needs labelled data", "pass --data val.npz with x and y")
    if cluster is not None:
        check_url(cluster)  # a malformed URL or a missing driver: one line, before --out exists
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
    except (EdgekitError, KeyboardInterrupt) as exc:
        finished = sorted((out / "trials").glob("*/trial.json"))
        resumable = isinstance(exc, StudyLost) or (isinstance(exc, KeyboardInterrupt) and finished)
        if mode == "new" and not resumable:  # nothing worth resuming: leave the place as found
            shutil.rmtree(out) if created else [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in out.iterdir()]
        elif isinstance(exc, KeyboardInterrupt):
            for trial in (out / "trials").glob("*"):  # a trial conversion stopped half-way leaves its staging
                output.sweep(trial)
            exc.kept = (f"interrupted; {len(finished)} finished trial(s) kept in {out}: run the same command again "
                        "to resume")
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
        from ..probes.ssh import remote
        for url in devices:
            remote.parse(url)  # a malformed URL fails now, not in every trial
    study = open_study(setup)
    progress("fp32 baseline")
    fp32 = run_trial(setup, {"precision": "fp32"})
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
        from ..timing import ratio
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
    output.write_file(out / "tune.json", json.dumps(result, indent=2, default=str) + "\n", force=True)  # in our own out
    return result



def _sensitivity(model: Path, data: Path, target: str, targets_dirs, out: Path, progress) -> list[dict]:
    from .. import analyze
    cached = out / "sensitivity.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    progress("per-layer sensitivity")
    rows = analyze.analyze(model, sensitivity=True, data=data, target=target, targets_dirs=targets_dirs)["sensitivity"]
    cached.write_text(json.dumps(rows, indent=2))
    return rows

