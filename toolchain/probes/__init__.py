"""Probes: where an artifact runs besides the host CPU runner, one module each, discovered by name.

The host run (pipeline) gives every artifact its outputs, latency and memory on this machine.
A probe then adds figures from somewhere else: a GPU, emulated aarch64, devices over SSH, the
accelerator emulator. Each follows the contract in `base.py`; plug-ins are modules named in
$EDGEKIT_PROBES (comma-separated import paths). Adding a kind of device is one new module.
"""
from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from types import ModuleType

from ..errors import EdgekitError
from ..plugins import import_plugin
from .base import MEMBERS, HostRun  # noqa: F401  (HostRun: what probes receive)

_INTERNAL = {"base"}


@functools.lru_cache(maxsize=None)
def _load(import_path: str) -> ModuleType:
    module = importlib.import_module(import_path) if import_path.startswith(f"{__name__}.") else \
        import_plugin(import_path, "EDGEKIT_PROBES", "probe")
    missing = [m for m in MEMBERS if not hasattr(module, m)]
    if missing:
        raise EdgekitError(f"probe {import_path} does not follow the probe contract (missing: {', '.join(missing)})",
                           "define every member listed in edgekit/probes/base.py")
    return module


def all_probes() -> list[ModuleType]:
    """Built-in probes, then plug-ins, in ORDER (lower first)."""
    names = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
             if not m.name.startswith("_") and m.name not in _INTERNAL]
    names += [p.strip() for p in os.environ.get("EDGEKIT_PROBES", "").split(",") if p.strip()]
    return sorted(map(_load, names), key=lambda p: (p.ORDER, p.NAME))


def for_artifact(ctx, backend, precision: str) -> list[ModuleType]:
    return [p for p in all_probes() if p.applies(ctx, backend, precision)]


def warnings(ctx) -> list[str]:
    return [w for p in all_probes() for w in p.warnings(ctx)]


def notes(result: dict) -> list[str]:
    return [line for p in all_probes() for line in p.notes(result)]
