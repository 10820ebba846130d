"""After the search: the Pareto front, the quiet re-timing phase, the held-out check of the cheapest
candidates, and why each trial was or was not chosen."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .. import output
from ..errors import RunnerError
from .trial import TuneSetup, artifact_hash, cost, recipe_text, run_trial


def pareto(trials: list[dict], objective: str) -> list[dict]:
    ok = [t for t in trials if t["ok"]]
    front = [t for t in ok if not any(o["drop_points"] <= t["drop_points"] and cost(o, objective) <= cost(t, objective)
                                      and (o["drop_points"], cost(o, objective)) != (t["drop_points"], cost(t, objective))
                                      for o in ok)]
    return sorted(front, key=lambda t: cost(t, objective))



def holdout_accuracy(path: Path, data: Path) -> float:
    """Accuracy of an artifact on the held-out split (never seen while tuning)."""
    from .. import measure, runner
    with np.load(data) as npz:
        x, y = npz["x"], npz["y"]
    with output.tempdir("holdout-") as tmp:
        runner.save_stacked(tmp / "in.npz", "in", [[x[i:i + 1]] for i in range(len(x))])
        runner.invoke(path, tmp / "r.json", runs=1, warmup=0, inputs=tmp / "in.npz", outputs=tmp / "out.npz",
                      what="the held-out run")
        return measure.accuracy(runner.load_stacked(tmp / "out.npz", "out"), y)



def choose(trials: list[dict], setup: TuneSetup, fp32: dict | None, progress=lambda msg: None) -> dict:
    """The cheapest trial within budget on the tuning split that also holds it on the held-out split."""
    within = sorted((t for t in _unique(trials) if t["ok"] and t["drop_points"] <= setup.budget_points),
                    key=lambda t: cost(t, setup.objective))
    holdout_source = holdout_accuracy(setup.out / fp32["file"], setup.holdout_data) if fp32 else None
    for t in within:
        if fp32 and t["key"] != fp32.get("key") and not _fast_enough(t, fp32, setup.objective):
            t["not_faster"] = True
            continue
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
    if fp32 and any(t.get("not_faster") for t in within):  # within budget, but none earns its place over fp32
        fp32.update(holdout_accuracy=holdout_source, holdout_drop_points=0.0)
        return fp32
    return {}


def _fast_enough(t: dict, fp32: dict, objective: str) -> bool:
    """convert's recommendation rule (edgekit.recommend): against fp32 in the same quiet phase, a trial must
    be stably faster when latency is the objective, and is never taken when it is stably slower."""
    from ..recommend import stably_faster
    if not (t.get("latency") and fp32.get("latency")):
        return True  # timed on a device pool: no same-phase ratio to judge by
    mine, theirs = {"latency_ms": t["latency"]}, {"latency_ms": fp32["latency"]}
    return stably_faster(mine, theirs) if objective == "latency" else not stably_faster(theirs, mine)


def _unique(trials: list[dict]) -> list[dict]:
    """One entry per recipe (a repeated recipe is the same cached trial)."""
    return list({t["key"]: t for t in trials}.values())


QUIET_CANDIDATES = 12  # within-budget trials re-measured in the quiet phase (cheapest by search figures)


def quiet_phase(trials: list[dict], fp32: dict, setup: TuneSetup, progress=lambda msg: None) -> None:
    """Re-time the fp32 baseline, the Pareto front and the cheapest within-budget trials together, after
    every worker has stopped: one timing phase, runner processes interleaved between them. Their
    `latency_ms` becomes that figure (the search-time one is kept as `latency_ms_search`)."""
    from .. import bounds, targets, timing
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
        figures = timing.measure([setup.out / t["file"] for t in chosen.values()], inputs,
                                 threads=bounds.host_threads(bench.threads),
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
        elif t.get("not_faster"):
            t["why"] = ("not stably faster than fp32 in the quiet phase" if setup.objective == "latency" else
                        "slower than fp32 in the quiet phase") + " (the recommendation rule)"
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

