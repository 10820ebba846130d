"""Artifact backends, one module per format, discovered by name.

Built-in backends are the modules of this package; plug-ins are modules named in
$EDGEKIT_BACKENDS (comma-separated import paths), which is how the tests add a numpy-only fake.
Every backend follows the contract in `base.py`, checked when it is loaded.
"""
from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from types import ModuleType

from ..errors import EdgekitError
from ..plugins import import_plugin
from .base import missing_members

_INTERNAL = {"base"}


def _builtin() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in _INTERNAL]


def _plugin_paths() -> list[str]:
    return [p.strip() for p in os.environ.get("EDGEKIT_BACKENDS", "").split(",") if p.strip()]


@functools.lru_cache(maxsize=None)
def _load(import_path: str) -> ModuleType:
    module = import_plugin(import_path, "EDGEKIT_BACKENDS", "backend") if not import_path.startswith(f"{__name__}.") \
        else importlib.import_module(import_path)
    missing = missing_members(module)
    if missing:
        raise EdgekitError(f"backend {import_path} does not follow the backend contract (missing: {', '.join(missing)})",
                           "define every member listed in edgekit/backends/base.py (None for a capability it lacks)")
    return module


def _plugins() -> dict[str, ModuleType]:
    plugins = {}
    for path in _plugin_paths():
        module = _load(path)
        plugins[module.FORMAT] = module
    return plugins


def get(name: str) -> ModuleType:
    if name in _builtin():
        return _load(f"{__name__}.{name}")
    plugins = _plugins()
    if name in plugins:
        return plugins[name]
    raise EdgekitError(f"unknown artifact format '{name}'", f"choose one of: {', '.join(available())}")


def available() -> list[str]:
    return sorted({*_builtin(), *_plugins()})


def plugins() -> list[ModuleType]:
    return list(_plugins().values())


def for_artifact(path) -> ModuleType:
    """The backend that reads an artifact file, judged by its suffix."""
    suffix = "." + str(path).lower().rsplit(".", 1)[-1]
    for backend in [*map(get, _builtin()), *plugins()]:  # built-ins first: a device needs no plug-in
        if backend.SUFFIX == suffix:
            return backend
    raise EdgekitError(f"{path}: not a known artifact type", "give a .tflite, .onnx or .xml file")


def require(module: str, extra: str):
    """Import a runtime/converter, or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgekitError(f"python package '{module}' is not installed",
                           f"pip install 'edgekit-toolchain[{extra}]'") from None
