"""Automatic mixed precision (`--mixed auto`, profile `[mixed] mode = "auto"`, or its alias `[quantize] mixed =
"auto"`): when a calibrated artifact misses its fidelity gate, find the layers responsible and keep them out of
int8 until the gate is met.

An artifact pass that runs right after `quantize`. Round 1 judges the artifact the quantize pass built; each
later round is one rebuild by the backend's own `quantize` hook with more layers in `keep_float` (TFLite:
mlir_quantize denylisted nodes; onnxruntime: `nodes_to_exclude`) or `keep_int16` (onnxruntime's 16-bit
activations per layer; NNCF: `ignored_scope`) + one evaluation on calibration samples against the source model,
with the same tolerance the pipeline's verdict uses. The search converges in a logarithmic number of rounds when
the error is spread over the network:

1. round 1 passes -> done.
2. grow, while the gate is missed: one layer-wise divergence run of the last build against the fp32 artifact
   of the same format (`divergence.layer_divergence`, every tensor on a few calibration samples) ranks every
   open layer (not kept yet, matchable in this format) by how far its SNR falls below everything before it;
   the top k are kept out of int8 with the cheapest fix (the first of the target's `[mixed] fixes` the format
   has per layer, `FIXES`), k = as many as are kept already, so the kept set doubles (1, 2, 4, 8, ...),
   re-ranked from the new build each round. A batch whose fix gains under GROUP_GAIN_DB is rebuilt with the
   layers' next fix first.
3. shrink, once the gate is met: bisection on how many of the kept layers (in the order chosen) are needed,
   then groups of them dropped again (halves first, down to single layers) while the gate still holds.
At most `rounds` rounds; when they run out, the best build seen is kept, and the entry says the gate was not
met. A format with a whole-model fix (`quantize.WHOLE_MODEL_FIXES`: TFLite's int16x8) keeps the last round for
it: when per-layer keeping misses the gate, the whole model is built in that precision and kept if it meets the
gate asked for (the artifact's precision then says so). FIXES is documented in quantize.py. The entry says how
much of the network's compute still runs quantized (`_mixed_share`: the share of MACs).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import layers, measure, runner
from ..errors import ConversionError
from ..schema import option
from . import _mixed_share, quantize
from ._mixed_report import (latency_cost, markdown, notes as _notes, plain_entries, precision_label,  # noqa: F401
                            scored_fidelity, summary_line)
from ._mixed_report import PLAIN_DIR, drop_plain as _drop_plain, keep_plain as _keep_plain  # noqa: F401

NAME, STAGE, ORDER, FORMATS = "mixed", "artifact", 15, ("tflite", "onnx", "openvino")
PROFILE_ALIASES = {"quantize.mixed": "mixed.mode"}  # the spelling (targets.load_profile applies it)
DESCRIPTION = "automatic mixed precision: layers that break the int8 fidelity gate kept out of int8, found by divergence"
needs_training = None
MODES = ("off", "auto")
GATE_SAMPLES = 32        # calibration samples each round is judged on
GATE_MARGIN_DB = 1.0     # an SNR gate counts as met on calibration samples only this far above it: the scored
                         # samples are others (ddddocr_crnn OpenVINO: 15.2 dB on calibration, 14.9 scored, gate 15)
DIVERGENCE_SAMPLES = 4   # calibration samples the layer-wise divergence runs on
GROUP_GAIN_DB = 1.0      # a batch whose fix gains less than this is rebuilt with the layers' next fix
CEILING_DB = 20.0        # above the gate by this much, an op's SNR counts as exact for the ranking
SHRINK_MARGIN_DB = 1.0   # a smaller set must beat an SNR gate by this much more (the shrink's luck: see _shrink)
DROP_ROUNDS = 4          # rounds the shrink spends dropping groups of kept layers after its bisection
FIXES = quantize.LAYER_FIXES  # per-layer fixes each format has; the order tried is the target's [mixed] fixes
FIX_NAMES = ("float", "int16x8")


@dataclass(frozen=True)
class MixedConfig:
    mode: str = option("off", "auto: when a calibrated artifact misses its fidelity gate, keep the layers that "
                              "diverge most out of int8, the kept set doubling each rebuild, until it passes (then "
                              "the smallest passing set); the report lists them with their divergence and the share "
                              "of MACs still int8. `[quantize] mixed` is an alias.", choices=MODES)
    rounds: int = option(20, "Most rebuild-and-evaluate rounds per artifact (round 1 is the plain build).")
    fixes: list[str] = option(["float", "int16x8"], "Per-layer fixes in the order tried, cheapest first on this "
                              "target: float (the layer's ops in float) and int16x8 (activations 16-bit, weights int8; "
                              "ONNX per layer, TFLite's last-round whole-model fallback only where it is listed). Float "
                              "first by default (a CPU runs int16 Q/DQ in float anyway); int8 accelerators "
                              "list int16x8 first.", choices=FIX_NAMES)


Config = MixedConfig


@dataclass
class Flags:
    mixed: str | None = option(None, "auto: when an int8 artifact misses its fidelity gate, keep the layers that "
                                     "diverge most out of int8 until it passes (instead of the profile's).",
                               choices=MODES)
    mixed_rounds: int | None = option(None, "Most rebuild-and-evaluate rounds of --mixed auto per artifact "
                                            "(instead of the profile's; default 20).")


def configure(profile, flags: Flags | None) -> MixedConfig:
    flags = flags or Flags()
    given = {"mode": flags.mixed, "rounds": flags.mixed_rounds}
    return dataclasses.replace(profile.mixed, **{k: v for k, v in given.items() if v is not None})


def applies(recipe, source) -> bool:
    return recipe[NAME].mode == "auto" and recipe["quantize"].precision in quantize.CALIBRATED


def search_space(trial, setup) -> dict:
    """On or off, for an int8 trial (quantize's choice, made first)."""
    return {"mixed": trial.suggest_categorical("mixed", list(MODES))} if trial.params.get("precision") == "int8" else {}


def run(ctx, config: MixedConfig, backend, baseline, path) -> dict:
    """Judge the quantize pass's artifact at `path`; rebuild it from `baseline` (the fp32 artifact) with layers
    kept out of int8 until the gate is met. Returns the report's `mixed` entry and the final build's notes on
    what it kept in float."""
    qconfig = ctx.recipe["quantize"]
    rebuild = lambda **given: quantize.quantize_with(backend, ctx.source, baseline, path,  # noqa: E731
                                                     dataclasses.replace(qconfig, **given), ctx.calib)
    reference = getattr(backend, "divergence_reference", None)  # TFLite: the calibrated model builds are named after
    reference = reference(ctx.source, baseline, qconfig, ctx.calib) if reference else baseline
    built, entry = search(backend, ctx.source, path, reference, qconfig, config.rounds, ctx.calib,
                          ctx.options.outputs, rebuild, fix_order(config.fixes, backend.FORMAT), config.fixes)
    notes = [n for n in built.get("notes", []) if "float" in n or "16-bit" in n] + _notes(entry)
    chosen = (entry.get("fallback") or {}).get("chosen")
    return {"mixed": entry, "notes": notes, **({"precision": entry["fallback"]["precision"]} if chosen else {})}


def fix_order(fixes: list[str], fmt: str) -> list[str]:
    """The target's fixes that this format has per layer, in the target's order; float when none."""
    return [f for f in fixes if f in FIXES.get(fmt, ("float",))] or ["float"]


def search(backend, source, out_path: Path, float_artifact: Path, qconfig, rounds: int, calib, outputs: str,
           rebuild, fixes: list[str] = ("float",), target_fixes: list[str] = FIX_NAMES) -> tuple[dict, dict]:
    """`rebuild(**quantize config changes) -> report entries` writes `out_path` again; returns the entries of the
    build left at `out_path` ({} for the first one) and the report's `mixed` entry."""
    started = time.perf_counter()
    samples = calib.samples[:GATE_SAMPLES]
    judge = _Judge(backend, samples, source.predict(samples), measure.judged_as(qconfig.precision,
                                                                                  source.reference_precision), outputs)
    state = _State(qconfig.keep_float, qconfig.keep_int16)
    whole = quantize.WHOLE_MODEL_FIXES.get(backend.FORMAT) if qconfig.precision == "int8" else None  # int8-io: int8 I/O
    whole = whole if whole in target_fixes else None  # a target whose [mixed] fixes leave int16x8 out never gets it
    with tempfile.TemporaryDirectory(prefix="edgekit-mixed-") as scratch:
        best = _Best(backend, out_path, Path(scratch))
        built, fid = _round(state, judge, None, out_path, best)
        plain = {"size_bytes": measure.file_bytes(backend.files(out_path)), "fidelity": _short(fid),
                 "file": _keep_plain(backend, out_path), "precision": qconfig.precision,
                 **_mixed_share.entry(backend, out_path)}
        if not fid["verified"]:  # the last round kept for `whole`
            fid = _grow(state, judge, rebuild, rounds - bool(whole), (backend, out_path, float_artifact, calib),
                        best, fid, fixes)
        if not fid["verified"] and whole:
            fid = _whole_model(state, judge, rebuild, out_path, best, whole, rounds)
        elif fid["verified"]:
            _shrink(state, judge, rebuild, rounds, out_path, best)
        built, fid, kept = best.restore()
    if not kept and not (state.fallback or {}).get("chosen"):  # nothing kept out of int8: the artifact is the plain one
        _drop_plain(backend, out_path)
        plain["file"] = None
    entry = {"mode": "auto", "rounds": state.rounds, "max_rounds": rounds, "gate_met": fid["verified"],
             "seconds": round(time.perf_counter() - started, 2), "kept": kept, "plain": plain,
             "fidelity": _short(fid), "samples": len(samples), "history": state.history,
             "divergence_runs": state.rankings, "divergence_seconds": round(state.ranking_seconds, 1), **_mixed_share.entry(backend, out_path),
             "how": measure.how(measure.MEASURED, f"{backend.RUNTIME}, calibration samples")}
    if state.fallback:
        entry["fallback"] = state.fallback
    if not fid["verified"]:  # why no fix passed
        entry["stopped"] = state.stopped or f"the {rounds} rounds ran out; the best build is kept"
        if state.skip:
            entry["unusable"] = state.skip
    size = measure.file_bytes(backend.files(out_path))
    entry["size_vs_plain"] = size / plain["size_bytes"] if plain["size_bytes"] else None
    return built, entry


def _grow(state, judge, rebuild, rounds: int, where: tuple, best, fid: dict, fixes: list[str]) -> dict:
    """While the gate is missed: keep the next k ranked layers out of int8 with `fixes[0]`, k = as many as are
    kept already (1, 2, 4, 8, ... in all). The ranking is one layer-wise divergence run of the last build,
    made again only after a round that gained GROUP_GAIN_DB or more (the error moved; a round that did not
    move it says nothing new, and a run costs about a rebuild) or when it is used up. A batch gaining under
    GROUP_GAIN_DB is rebuilt with its layers' next fix first."""
    batch: list[str] = []
    ranking: list[tuple] = []
    while not fid["verified"] and state.rounds < rounds:
        if not batch:
            ranking = [r for r in ranking if state.open(r[0])]
            try:
                ranking = ranking or _ranking(*where, state, judge.gate_db)
            except Exception as exc:  # a runtime refusing the tapped copy: stop here, say why
                state.stopped = f"layer-wise divergence failed: {' '.join(str(exc).split())[:200]}"
                break
            if not ranking:
                state.stopped = "no layer left to keep out of int8 (every diverging layer is already kept or " \
                                "cannot be matched in this format)"
                break
            for pick in ranking[:max(1, len(state.kept))]:
                state.add(*pick, fixes[0])
                batch.append(pick[0])
        before = fid
        built, fid = _round(state, judge, rebuild, where[1], best)
        little = not fid.get("error") and (_same(before, fid) or not fid["verified"]
                                           and _gain(before, fid) < GROUP_GAIN_DB)
        if little and any([state.next_fix(name, fixes) for name in batch if state.kept.get(name, {}).get("fix")
                           not in (None, "float")]):  # nothing is closer to float than float
            continue  # e.g. 16-bit activations do not help layers whose int8 weights are the problem
        for name in batch if fid.get("error") or _same(before, fid) else []:  # not tried again
            state.unusable(name, fid.get("error") or "keeping it out of int8 changed no output")
        if not fid["verified"] and state.kept:
            state.failed.append(list(state.kept))
        batch, ranking = [], ranking if little else []
    return fid


def _shrink(state, judge, rebuild, rounds: int, out_path, best) -> None:
    """From a passing kept set (in the order chosen): bisection on how many of the first ones are needed (the
    first `failed` ones are known to miss the gate), then groups dropped again, halves first, down to single
    layers, each dropped for good while the gate still holds: at most DROP_ROUNDS of those (a single dropped
    layer saves little; every round costs a rebuild), within the rounds left. A smaller set passes only
    SHRINK_MARGIN_DB further above an SNR gate: the smallest of many sets judged on the same samples passes by
    luck (mp_hand_landmark ONNX: 16.5 dB on calibration, 14.8 on the scored samples)."""
    order = list(state.kept)
    judge.margin_db = GATE_MARGIN_DB + SHRINK_MARGIN_DB
    low = max((len(f) for f in state.failed if f == order[:len(f)]), default=0)
    high = len(order)
    while high - low > 1 and state.rounds < rounds:
        middle = (low + high) // 2
        if _trial(state, judge, rebuild, out_path, best, order[:middle]):
            high = middle
        else:
            low = middle
    kept, last = order[:high], min(rounds, state.rounds + DROP_ROUNDS)
    size = len(kept) // 2
    while size >= 1 and state.rounds < last:
        for group in [kept[i:i + size] for i in range(0, len(kept), size)]:
            trial = [k for k in kept if k not in group]
            if state.rounds >= last or not trial or any(set(trial) <= set(f) for f in state.failed):
                continue
            if _trial(state, judge, rebuild, out_path, best, trial):
                kept = trial
        size //= 2
    state.keep_only(kept)


def _trial(state, judge, rebuild, out_path, best, kept: list[str]) -> bool:
    """One round with only `kept` kept out of int8; whether it met the gate."""
    state.keep_only(kept)
    _, fid = _round(state, judge, rebuild, out_path, best)
    if not fid["verified"]:
        state.failed.append(list(kept))
    return bool(fid["verified"])


class _State:
    """The kept layers (in the order chosen), why each was chosen, and every round's outcome."""

    def __init__(self, user_kept: list[str], user_int16: list[str] = ()):
        self.user_kept, self.user_int16 = list(user_kept), list(user_int16)
        self.kept: dict[str, dict] = {}
        self.chosen: dict[str, dict] = {}  # every layer ever kept, by name: the shrink puts some back
        self.skip: dict[str, str] = {}
        self.failed: list[list[str]] = []  # kept sets that missed the gate
        self.rounds = self.rankings = 0
        self.ranking_seconds = 0.0
        self.history: list[dict] = []
        self.stopped = ""
        self.fallback: dict | None = None  # the whole-model build, when one was tried

    def settings(self) -> dict:
        """The quantize config's layer lists for the layers kept so far, each by its fix."""
        chosen = lambda fix: [name for name, row in self.kept.items() if row["fix"] == fix]  # noqa: E731
        return {"keep_float": [*self.user_kept, *chosen("float")], "keep_int16": [*self.user_int16, *chosen("int16x8")]}

    def open(self, name: str) -> bool:
        return name not in self.kept and name not in self.skip and name not in [*self.user_kept, *self.user_int16]

    def next_fix(self, name: str, fixes: list[str]) -> bool:
        """Give a kept layer the fix after its current one in `fixes`; False when it has none left."""
        row = self.kept.get(name)
        at = fixes.index(row["fix"]) if row and row["fix"] in fixes else len(fixes)
        if at + 1 >= len(fixes):
            return False
        row.setdefault("tried", []).append(row["fix"])
        row["fix"] = fixes[at + 1]
        return True

    def add(self, name: str, layer: str | None, snr: float | None, fall: float, fix: str) -> None:
        self.kept[name] = self.chosen[name] = {"layer": layer or name, "name": name, "fix": fix, "snr_db": snr,
                                               "fall_db": fall}

    def keep_only(self, names: list[str]) -> None:
        self.kept = {name: self.chosen[name] for name in names}

    def unusable(self, layer: str, why: str) -> None:
        self.kept.pop(layer, None)
        self.skip[layer] = why

    def kept_rows(self) -> list[dict]:
        return list(self.kept.values())


def _round(state: _State, judge, rebuild, out_path: Path, best) -> tuple[dict, dict]:
    """One round: rebuild with the layers kept so far (None: judge the build already there), judge it. A kept
    name the backend finds no op for is dropped (and not tried again) before the build; a build that fails
    otherwise is recorded, and the best build so far is put back at `out_path`."""
    state.rounds += 1
    started = time.perf_counter()
    while True:
        try:
            built = rebuild(**state.settings()) if rebuild is not None else {}
            break
        except ConversionError as exc:
            unmatched = layers.UNMATCHED.search(str(exc))
            if unmatched and unmatched.group(1) in state.kept:
                state.unusable(unmatched.group(1), "no op of this format's graph belongs to it")
                continue
            error = " ".join(str(exc).split())[:300]
            state.history.append({"round": state.rounds, "kept": _kept_names(state), "verified": False,
                                  "snr_db": None, "cosine": None, "error": error})
            best.last_is_best = False
            best.restore()
            return {}, {"verified": False, "error": error}
    fid = judge(out_path)
    state.history.append({"round": state.rounds, "verified": fid["verified"], **_short(fid),
                          "kept": _kept_names(state), "seconds": round(time.perf_counter() - started, 1)})
    best.offer(built, fid, state.kept_rows())
    return built, fid


def _kept_names(state: _State) -> list[str]:
    return [n if r["fix"] == "float" else f"{n} ({r['fix']})" for n, r in state.kept.items()]


def _whole_model(state: _State, judge, rebuild, out_path: Path, best, precision: str, rounds: int) -> dict:
    """The last round: the whole model in `precision` (TFLite 16x8) with only the user's keep_float, judged at
    the gate asked for; kept only when it meets it (else the best per-layer build is put back)."""
    why = state.stopped or f"per-layer keeping used its {rounds - 1} round(s) without meeting the gate"
    state.rounds += 1
    try:
        built = rebuild(precision=precision, keep_float=state.user_kept, keep_int16=[])
        fid = judge(out_path)
    except ConversionError as exc:
        built, fid = {}, {"verified": False, "error": str(exc)[:300]}
    state.history.append({"round": state.rounds, "kept": [f"(whole model {precision})"],
                          "verified": fid["verified"], **_short(fid)})
    state.fallback = {"precision": precision, "why": why, "chosen": bool(fid["verified"]), **_short(fid),
                      **({"error": fid["error"]} if "error" in fid else {})}
    best.last_is_best = False
    if fid["verified"]:
        best.offer(built, fid, [])
    return fid


def _ranking(backend, artifact: Path, float_artifact: Path, calib, state: _State, gate_db: float) -> list[tuple]:
    """Every open layer (not kept yet, matchable in this format) whose output SNR is below `gate_db` +
    CEILING_DB (above it an op counts as exact: the input's own QUANTIZE falls from exact to ~50 dB), as
    (name to keep, source layer, its SNR, its fall in dB), from one layer-wise divergence run of `artifact`:
    most divergent first, by how far its SNR falls below the lowest SNR of every op before it (from
    `gate_db` + CEILING_DB down); topological order among equals (error flows downstream: of the layers that
    fall no further, the earliest are the likelier causes)."""
    from ..divergence import layer_divergence
    started = time.perf_counter()
    rows = layer_divergence(artifact, backend.FORMAT, float_artifact, calib.samples[:DIVERGENCE_SAMPLES])
    state.rankings += 1
    state.ranking_seconds += time.perf_counter() - started
    falls: dict[str, tuple[str, float, float]] = {}
    lowest = gate_db + CEILING_DB
    for row in (r for r in rows if r.snr_db is not None):
        name = _keep_name(row)
        if name and state.open(name) and row.snr_db < gate_db + CEILING_DB:
            fall = max(0.0, lowest - row.snr_db)
            if name not in falls or (fall, -row.snr_db) > (falls[name][2], -falls[name][1]):
                falls[name] = (row.layer, row.snr_db, fall)
        lowest = min(lowest, row.snr_db)
    order = sorted(falls, key=lambda k: -falls[k][2])  # stable: topological order among equals
    return [(name, falls[name][0], round(falls[name][1], 2), round(falls[name][2], 2)) for name in order]


def _keep_name(row) -> str | None:
    """What `keep_float` gets for a divergence row: the scope with its numeric suffix (`tf.math.add_20`, not
    every `tf.math.add_N`; `GroupConvolution_7`, not every GroupConvolution), else the row's source layer."""
    from .sensitivity import layer_of
    name = (row.reference or "").split(";")[0]
    if not name or (row.layer and "/" not in name and layer_of(name) != row.layer):
        return row.layer  # the layer came from the op's weights' scope (TFLite names a last op after the output)
    scope = layer_of(name, suffix=True)
    return row.layer if _MODEL_SCOPE.fullmatch(scope) and row.layer else scope  # model_1/model/re_lu_1: re_lu_1


_MODEL_SCOPE = re.compile(r"(model|functional|sequential)(_\d+)?")


class _Judge:
    """The pipeline's verdict, on calibration samples, in this process."""

    def __init__(self, backend, samples, reference, judged: str, outputs: str):
        self.backend, self.samples, self.reference, self.judged, self.outputs = backend, samples, reference, judged, outputs
        self.gate_db = measure.TOLERANCE[judged]["min_snr_db"]
        self.margin_db = GATE_MARGIN_DB

    def __call__(self, path: Path) -> dict:
        session = self.backend.Session(path)
        got = [runner.dequantize_outputs(session, session.run(runner.quantize_inputs(session, s)))
               for s in self.samples]
        if not all(np.all(np.isfinite(o)) for s in got for o in s):
            return {"verified": False, "snr_db": None, "cosine": None, "top1_agreement": None}
        fid = measure.fidelity(self.reference, got, self.judged, self.outputs)
        snr_judged = [o["snr_db"] for o in fid["outputs"] if o["judged_by"] == "SNR"]
        if fid["verified"] and snr_judged and min(snr_judged) < self.gate_db + self.margin_db:
            fid = {**fid, "verified": False}
        return fid


class _Best:
    """A copy of the best artifact seen (verified first, then fewest layers kept, then highest SNR), with its
    report entries and kept layers; put back at `out_path` at the end when a later round was worse."""

    def __init__(self, backend, out_path: Path, scratch: Path):
        self.backend, self.out_path, self.scratch = backend, out_path, scratch
        self.best: tuple | None = None  # (report entries, fidelity, kept rows)
        self.last_is_best = False

    def offer(self, built: dict, fid: dict, kept: list[dict]) -> None:
        self.last_is_best = self.best is None or _score(fid, kept) > _score(self.best[1], self.best[2])
        if self.last_is_best:
            for f in self.backend.files(self.out_path):
                shutil.copy2(f, self.scratch / f.name)
            self.best = (built, fid, [dict(r) for r in kept])

    def restore(self) -> tuple[dict, dict, list[dict]]:
        if not self.last_is_best:
            for f in self.backend.files(self.out_path):
                shutil.copy2(self.scratch / f.name, f)
        return self.best


def _score(fid: dict, kept: list[dict]) -> tuple:
    snr = fid.get("snr_db")
    return (bool(fid.get("verified")), -len(kept) if fid.get("verified") else 0,
            snr if snr is not None else -np.inf, fid.get("cosine") or -np.inf)


def _gain(a: dict, b: dict) -> float:
    return (b["snr_db"] - a["snr_db"]) if a.get("snr_db") is not None and b.get("snr_db") is not None else 0.0


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) is not None and a.get(k) == b.get(k) for k in ("snr_db", "cosine"))


def _short(fid: dict) -> dict:
    return {k: fid.get(k) for k in ("verified", "snr_db", "cosine", "top1_agreement")}
