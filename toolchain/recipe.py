"""The Recipe: the settings of every pass for one conversion, resolved once.

A recipe holds one Config per pass (passes/base.py), keyed by the pass's NAME. It comes from one of:

* the target profile's `[NAME]` sections with the command line's flags on top, each pass settling what
  depends on the target (`configure`: quantize's 'auto' activations and an fpga accelerator's scale
  granularity, pow2 where the accelerator requantizes by shifts);
* a tune trial: the trial's choices are the passes' flag values, resolved the same way, and the child
  process that converts receives the resolved recipe as JSON;
* a recipe JSON file (`edgekit convert --recipe recipe.json`): replayed as written.

The report records the recipe as it was run (`report.json` "recipe"), in the same JSON form, so a run
can be replayed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from . import passes
from .errors import EdgekitError
from .schema import SchemaError, from_dict

SCHEMA = "edgekit.recipe/1"


class Recipe:
    def __init__(self, configs: dict[str, Any]):
        self.configs = dict(configs)

    def __getitem__(self, name: str) -> Any:
        return self.configs[name]

    def __eq__(self, other) -> bool:
        return isinstance(other, Recipe) and self.configs == other.configs

    def __repr__(self) -> str:
        return f"Recipe({self.configs!r})"

    @classmethod
    def resolve(cls, profile, flags: Any = None) -> Recipe:
        """From a profile and flag values (an object or dict carrying them by field name: ConvertOptions,
        a tune trial's choices; None: the profile's settings)."""
        return cls({p.NAME: p.configure(profile, passes.flags_from(p, flags or {})) for p in passes.all_passes()})

    def applied(self, stage: str, source) -> list[tuple[ModuleType, Any]]:
        """(pass, its config) of every pass of `stage` that runs in this recipe on `source`, in order."""
        return [(p, self[p.NAME]) for p in passes.for_stage(stage) if p.applies(self, source)]

    def replace(self, name: str, **changes) -> Recipe:
        return Recipe({**self.configs, name: dataclasses.replace(self[name], **changes)})

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "passes": {name: dataclasses.asdict(config) for name, config in self.configs.items()}}

    @classmethod
    def from_json(cls, data: Any, where: str = "recipe") -> Recipe:
        """A recipe as `to_json` writes it, or a report.json that records one; a pass it leaves out keeps its
        Config defaults (off)."""
        if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
            data = data["recipe"]
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("passes"), dict):
            raise EdgekitError(f"{where}: not an edgekit recipe (schema {SCHEMA})",
                               "give the recipe.json of a report or a tune trial")
        known = {p.NAME: p for p in passes.all_passes()}
        unknown = sorted(set(data["passes"]) - set(known))
        if unknown:
            raise EdgekitError(f"{where}: unknown pass '{unknown[0]}'", f"passes here: {', '.join(known)} "
                               "(a plug-in pass needs $EDGEKIT_PASSES)")
        try:
            return cls({name: from_dict(p.Config, data["passes"].get(name, {}), name) for name, p in known.items()})
        except SchemaError as exc:
            raise EdgekitError(f"{where}: field '{exc.where}': {exc.problem}", "fix the recipe file") from None

    @classmethod
    def load(cls, path: Path) -> Recipe:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EdgekitError(f"--recipe {path}: cannot be read as JSON ({str(exc)[:200]})",
                               "give the recipe.json of a report or a tune trial") from None
        return cls.from_json(data, str(path))
