"""A pass plug-in (named in $EDGEKIT_PASSES): clip the fake backend's weights to a few standard
deviations. The worked example of docs/ARCHITECTURE.md: one file, and the CLI (--clip-sigmas), the
profile ([clip] sigmas = 3), the report (its entry, notes and recipe) and tune (its search space)
pick it up with no edit elsewhere."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.schema import option

NAME, STAGE, ORDER, FORMATS = "clip", "artifact", 30, ("fake",)
DESCRIPTION = "weights clipped to a few standard deviations of each layer (fake backend)"
needs_training = None


@dataclass(frozen=True)
class Config:
    sigmas: float = option(0.0, "Clip every weight to this many standard deviations of its layer; 0: off.")


@dataclass
class Flags:
    clip_sigmas: float | None = option(None, "Clip weights to this many standard deviations, instead of the profile's.")


def configure(profile, flags: Flags | None) -> Config:
    config = getattr(profile, NAME)
    return Config(sigmas=flags.clip_sigmas) if flags and flags.clip_sigmas is not None else config


def applies(recipe, source) -> bool:
    return recipe[NAME].sigmas > 0


def run(ctx, config: Config, backend, baseline, path) -> dict:
    with np.load(path) as model:
        arrays = {name: model[name] for name in model.files}
    limit = config.sigmas * float(arrays["w"].std())
    clipped = int(np.sum(np.abs(arrays["w"]) > limit))
    arrays["w"] = np.clip(arrays["w"], -limit, limit)
    np.savez(path, **arrays)
    return {"notes": [f"{clipped} weight(s) clipped to ±{config.sigmas:g} sigma"], NAME: {"clipped": clipped}}


def search_space(trial, setup) -> dict:
    sigmas = trial.suggest_categorical("clip_sigmas", [0.0, 2.0])
    return {"clip_sigmas": sigmas} if sigmas else {}
