"""Model passes, one module each, discovered by name (+ plug-ins named in $EDGEKIT_PASSES).

Each follows the contract in `base.py` (NAME, STAGE, ORDER, DESCRIPTION, Config, Flags, FORMATS,
configure, applies, needs_training, run, search_space), checked when it loads. The algorithm is written once in the
pass; what differs per backend or framework lives beside it (`prune_keras`/`prune_onnx`, the
backends' `quantize` hooks). Modules whose name starts with `_`, and the helpers in HELPERS, are
parts of a pass, not passes.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pkgutil
from types import ModuleType

from ..errors import EdgekitError
from ..plugins import import_plugin
from .base import STAGES, flag_name, given, problems

HELPERS = {"base", "distill_train", "prune_plan", "prune_keras", "prune_onnx", "sensitivity"}
ENV_VAR = "EDGEKIT_PASSES"


@functools.lru_cache(maxsize=None)
def _load(import_path: str) -> ModuleType:
    module = importlib.import_module(import_path) if import_path.startswith(f"{__name__}.") else \
        import_plugin(import_path, ENV_VAR, "pass")
    found = problems(module)
    if found:
        raise EdgekitError(f"pass {import_path} does not follow the pass contract ({'; '.join(found)})",
                           "define every member listed in edgekit/passes/base.py (None for a capability it lacks)")
    return module


def _builtin() -> list[str]:
    return [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
            if not m.name.startswith("_") and m.name not in HELPERS]


def _plugin_paths() -> list[str]:
    return [p.strip() for p in os.environ.get(ENV_VAR, "").split(",") if p.strip()]


def all_passes() -> list[ModuleType]:
    """Every pass, built-ins then plug-ins, source passes first, each stage in ORDER."""
    return _checked(tuple(_builtin() + _plugin_paths()))


@functools.lru_cache(maxsize=None)
def _checked(paths: tuple[str, ...]) -> list[ModuleType]:
    found: dict[str, ModuleType] = {}
    flags: dict[str, str] = {}
    for module in map(_load, paths):
        if module.NAME in found:
            raise EdgekitError(f"two passes are named {module.NAME!r} ({found[module.NAME].__name__}, {module.__name__})",
                               f"rename one, or drop it from ${ENV_VAR}")
        found[module.NAME] = module
        for name in flag_fields(module):
            if name in flags:
                raise EdgekitError(f"passes {flags[name]} and {module.NAME} both declare the flag {flag_name(name)}",
                                   "give the plug-in's flags its own prefix")
            flags[name] = module.NAME
    return sorted(found.values(), key=lambda p: (STAGES.index(p.STAGE), p.ORDER, p.NAME))


def builtin_passes() -> list[ModuleType]:
    return _checked(tuple(_builtin()))


def names() -> list[str]:
    return [p.NAME for p in all_passes()]


def get(name: str) -> ModuleType:
    for module in all_passes():
        if module.NAME == name:
            return module
    raise EdgekitError(f"unknown pass '{name}'", f"choose one of: {', '.join(names())}")


def report_key(name: str) -> str:
    """Where the report keeps what a source pass did: its REPORT_KEY where it has one, else its NAME."""
    return getattr(get(name), "REPORT_KEY", name)


def for_stage(stage: str) -> list[ModuleType]:
    return [p for p in all_passes() if p.STAGE == stage]


def flag_fields(module: ModuleType) -> list[str]:
    return [f.name for f in dataclasses.fields(module.Flags)] if module.Flags is not None else []


def flags_from(module: ModuleType, values) -> object | None:
    """The pass's Flags record from an object or dict carrying flag values by field name (ConvertOptions,
    a tune trial's choices); fields it does not carry keep their defaults."""
    if module.Flags is None:
        return None
    get_value = values.get if isinstance(values, dict) else lambda name, default: getattr(values, name, default)
    missing = object()
    picked = {name: get_value(name, missing) for name in flag_fields(module)}
    return module.Flags(**{k: v for k, v in picked.items() if v is not missing})


__all__ = ["HELPERS", "STAGES", "all_passes", "names", "get", "for_stage", "flag_fields", "flags_from", "given"]
