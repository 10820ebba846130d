"""The pass contract: what a module in `edgekit.passes` (or a plug-in named in $EDGEKIT_PASSES) defines.

A pass changes the model on its way to the artifact: on the loaded source model (distillation,
pruning) or on a built artifact file (quantization, power-of-two scales, a compiler step).

    NAME: str           the pass's name: its profile section `[NAME]`, its key in the recipe and in the
                        report; for a built-in pass also its module name
    STAGE: str          "source" (on the loaded model, before any export) or "artifact" (on each
                        format's artifact, after its fp32 export)
    ORDER: int          run order within its stage; lower first
    DESCRIPTION: str    one line, for `--help` and the report
    Config: type        frozen dataclass of documented `schema.option` fields, every one with a default:
                        the profile section `[NAME]` and the pass's part of the recipe
    Flags: type | None  dataclass of documented `schema.option` fields: its CLI options (`--field-name`;
                        a field left at its default was not given). Names are unique across passes.
                        None: no CLI options
    FORMATS: tuple      artifact passes: the formats it works on (empty: every format); source passes: ()

    configure(profile, flags) -> Config
        the profile's `[NAME]` section with the flags given (a `Flags`, or None) applied over it and any
        choice that depends on the target settled (e.g. per-channel scales where the accelerator decides);
        a bad value is an `EdgekitError` naming the flag or field
    applies(recipe, source) -> bool
        does it run in this recipe (`recipe[NAME]` is its Config) on this source model? Called before any
        work: a pass that is asked for but cannot run on this source raises `EdgekitError` here
    needs_training(config) -> "labelled" | "unlabelled" | None, or None
        training data the pass needs: the pipeline reads --train-data or holds a slice of --data apart
        (never scored) and hands it over as `ctx.train` = (samples, labels or None, origin)
    run(ctx, config, ...)
        STAGE "source":   run(ctx, config, source) -> (stages, info): the new models as
                          [(stage name, sources.Source)] (the last one goes on; a first stage that is
                          `source` itself renames the model the pass started from, e.g. "teacher") and a
                          dict for the report. `ctx.load_opts` loads what it saves (`prune.as_source`);
                          `ctx.calib` and `ctx.train` are the calibration and training data
        STAGE "artifact": run(ctx, config, backend, baseline, path) -> dict: `path` is the target
                          artifact, written by an earlier step, or by this pass from `baseline` (the fp32
                          artifact; None for an fp32 target); the dict is merged into the artifact's report
                          entry (its "notes" are appended). A failure for this artifact only is a
                          `ConversionError`.
    search_space(trial, setup) -> dict, or None
        tune: the pass's flag values one Optuna trial chooses (`trial.suggest_*`, parameter names
        unique across passes); {} leaves the profile's settings. `setup` is the tune setup (`keras`,
        `candidates`: layers most sensitive first). None: tune does not search this pass.

Top-level imports: numpy, the standard library and edgekit's lower layers only (heavy libraries inside
functions), so discovering the passes stays cheap.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Protocol, runtime_checkable

STAGES = ("source", "artifact")
RUN_PARAMETERS = {"source": 3, "artifact": 5}


@runtime_checkable
class Pass(Protocol):
    NAME: str
    STAGE: str
    ORDER: int
    DESCRIPTION: str
    Config: type
    Flags: type | None
    FORMATS: tuple
    search_space: Callable[..., dict] | None
    needs_training: Callable[[Any], str | None] | None

    def configure(self, profile: Any, flags: Any) -> Any: ...
    def applies(self, recipe: Any, source: Any) -> bool: ...
    def run(self, ctx: Any, config: Any, *args: Any) -> Any: ...


MEMBERS = tuple(Pass.__annotations__) + ("configure", "applies", "run")


def problems(module) -> list[str]:
    """What a module misses or gets wrong against the contract (empty: it follows it)."""
    missing = [name for name in MEMBERS if not hasattr(module, name)]
    if missing:
        return [f"missing: {', '.join(missing)}"]
    found = []
    if module.STAGE not in STAGES:
        found.append(f"STAGE {module.STAGE!r} is not one of {', '.join(STAGES)}")
    if not isinstance(module.ORDER, int) or not isinstance(module.NAME, str) or not module.NAME.isidentifier():
        found.append("NAME must be an identifier and ORDER an int")
    if not isinstance(module.DESCRIPTION, str) or not module.DESCRIPTION or "\n" in module.DESCRIPTION:
        found.append("DESCRIPTION must be one line")
    found += _record_problems(module.Config, "Config", frozen=True)
    if module.Flags is not None:
        found += _record_problems(module.Flags, "Flags", frozen=False)
    if module.STAGE == "source" and module.FORMATS:
        found.append("FORMATS is for artifact passes; a source pass has ()")
    for hook in ("configure", "applies", "run"):
        if not callable(getattr(module, hook)):
            found.append(f"{hook} is not callable")
    for hook in ("search_space", "needs_training"):
        if getattr(module, hook) is not None and not callable(getattr(module, hook)):
            found.append(f"{hook} is neither None nor callable")
    if callable(module.run) and module.STAGE in RUN_PARAMETERS:
        wanted, got = RUN_PARAMETERS[module.STAGE], len(inspect.signature(module.run).parameters)
        if got != wanted:
            found.append(f"run takes {got} parameters; a {module.STAGE} pass's run takes {wanted}")
    return found


def _record_problems(cls: Any, what: str, frozen: bool) -> list[str]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return [f"{what} is not a dataclass"]
    found = []
    if frozen and not cls.__dataclass_params__.frozen:
        found.append(f"{what} is not frozen")
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            found.append(f"{what}.{f.name} has no default")
        if not f.metadata.get("help"):
            found.append(f"{what}.{f.name} has no help (declare it with schema.option)")
    return found


def flag_name(field: str) -> str:
    """The CLI flag of a Flags field: `distill_temperature` -> `--distill-temperature`."""
    return "--" + field.replace("_", "-")


def given(flags: Any) -> dict:
    """The fields of a Flags record that were given (differ from their defaults)."""
    if flags is None:
        return {}
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(flags)}
    return {name: value for name, value in dataclasses.asdict(flags).items() if value != defaults[name]}
