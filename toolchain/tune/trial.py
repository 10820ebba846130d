"""One tune trial: its recipe (the search space), its content-hash key and cache, and its conversion in
a child process (`python -m edgekit.tune`, JSON on stdin; a crash fails that trial only)."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import children, interrupt
from ..errors import EdgekitError
from ..runner import failure_reason

STUDY = "edgekit-tune"
TRIAL_TIMEOUT_S = 1800
HEARTBEAT_S = 15  # a running trial's heartbeat; after 4 missed beats the other participants retry it


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
    """The trial's choices: the flag values every pass's search space picks (passes/base.py), in pass order."""
    from .. import passes
    choices: dict = {}
    for module in passes.all_passes():
        if module.search_space is not None:
            choices.update(module.search_space(trial, setup))
    return choices


def resolved(setup: TuneSetup, choices: dict) -> dict:
    """The recipe a trial runs, as JSON: the target profile with the trial's choices on top (recipe.py)."""
    from .. import targets
    from ..recipe import Recipe
    return Recipe.resolve(targets.get_target(setup.target, tuple(setup.targets_dirs)).profile, choices).to_json()


def trial_key(setup: TuneSetup, recipe: dict) -> str:
    digest = hashlib.sha256()
    for path in (setup.model, setup.tune_data):
        digest.update(content_hash(path).encode())
    digest.update(json.dumps([setup.target, setup.fmt, setup.devices, resolved(setup, recipe)], sort_keys=True).encode())
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
    from .. import backends
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
                              "recipe": recipe, "resolved": resolved(setup, recipe)})
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


def _convert_trial(setup: TuneSetup, recipe: dict, recipe_json: dict) -> None:
    """One trial's conversion (in the trial's own process) from the recipe JSON it was handed; writes
    trial.json. The artifact directory keeps recipe.json: `edgekit convert --recipe` replays it."""
    from .. import pipeline
    key = trial_key(setup, recipe)
    cached = setup.out / "trials" / key / "trial.json"
    options = dict(target=setup.target, formats=[setup.fmt], data=setup.tune_data, recipe=recipe_json,
                   runs=50, warmup=5, out=setup.out / "trials" / key / "artifact", force=True,
                   targets_dirs=setup.targets_dirs, emulate=False)
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
        figures.update(npu_figures(artifact))
        if setup.devices:
            figures.update(_pool_figures(setup, setup.out / figures["file"], artifact["latency_ms"]))
    except EdgekitError as exc:
        figures = {"key": key, "recipe": recipe, "ok": False, "error": exc.one_line()}
    figures["worker_pid"] = os.getppid()  # the worker that ran this trial
    figures["participant"] = setup.participant
    _save(cached, figures)


def _pool_figures(setup: TuneSetup, artifact: Path, host_latency: dict) -> dict:
    """Latency and memory of the artifact on whichever device of the pool is free (device lock held)."""
    from .. import backends
    from ..probes.ssh import remote
    result = remote.bench_pool(setup.devices, backends.for_artifact(artifact).files(artifact), None,
                               host_latency["threads"], host_latency["warmup"], host_latency["runs"])
    return {"latency_ms": result["latency_ms"]["median"], "latency_how": result["how"], "device": result["device"],
            "memory_mib": result["memory"]["peak_rss_mib"] - result["memory"]["baseline_rss_mib"],
            "timed_at": result["timed_at"], "device_lock": result["device_lock"]}


def npu_figures(artifact: dict) -> dict:
    """An Ethos-U target's trial: one Vela could not compile, or whose SRAM/flash does not fit the board,
    is a failed trial (never chosen); its CPU-fallback ops are kept for `cost`."""
    npu = artifact.get("npu")
    if not npu:
        return {}
    if "error" in npu:
        raise EdgekitError(f"NPU: {npu['error']}")
    if npu["verdict"]["fits"] is False:
        raise EdgekitError(f"NPU: {npu['verdict']['summary']}")
    return {"npu_cpu_ops": npu["ops"]["cpu"], "npu_estimated_ms": npu["inference_ms"]}


def cost(figures: dict, objective: str) -> float:
    """The objective's figure; on an Ethos-U target each op Vela leaves on the CPU adds the figure once
    more (an op off the NPU costs a hand-over to the Cortex-M and back), so fewer fallbacks win ties."""
    value = {"latency": figures["latency_ms"], "size": figures["bytes"], "memory": figures["memory_mib"]}[objective]
    return value * (1 + figures.get("npu_cpu_ops", 0))



def recipe_text(recipe: dict) -> str:
    """A trial's choices in a few words (the flag values of recipe_space; plug-in passes' as flag=value)."""
    rest = dict(recipe)
    parts = [rest.pop("precision", "fp32")]
    if parts[0] == "int8":
        parts += ["per-tensor" if rest.pop("per_tensor", False) else "per-channel", rest.pop("calib_method", "minmax"),
                  f"{rest.pop('calib_samples', 100)} samples"]
    if rest.get("keep_float"):
        parts.append(f"{len(rest['keep_float'])} layer(s) float")
    rest.pop("keep_float", None)
    if rest.pop("mixed", "off") == "auto":
        parts.append("mixed auto")
    if rest.get("distill"):
        parts.append(f"distill {rest['distill']} T={rest.get('distill_temperature') or 0:g}")
    if rest.get("prune"):
        parts.append(rest["prune"] + (f" + {rest['finetune_epochs']} ep" if rest.get("finetune_epochs") else ""))
    for name in ("distill", "distill_temperature", "distill_epochs", "prune", "finetune_epochs"):
        rest.pop(name, None)
    parts += [f"{name}={value}" for name, value in rest.items()]
    return ", ".join(parts)


def main() -> None:
    """One trial, run by run_trial in its own process: JSON on stdin."""
    interrupt.install()
    job = json.loads(sys.stdin.read())
    fields = job["setup"]
    for name in ("model", "tune_data", "holdout_data", "out"):
        fields[name] = Path(fields[name])
    _convert_trial(TuneSetup(**fields), job["recipe"], job["resolved"])
