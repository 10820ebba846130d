"""Artifact backends, one module per format, discovered by name.

A backend module `edgekit.backends.<format>` defines:

- FORMAT, SUFFIX, RUNTIME          what it writes and which runtime package runs it
- export(source, out_path, ctx)   write the artifact for `source` (heavy imports inside)
- files(path) -> list[Path]       every file that makes up the artifact (for size)
- Session(path, threads)          a loaded artifact: .inputs [(name, shape, dtype)], .run(list) -> list
- runtime_version() -> str
- load_source(path, ctx)          optional: read this format as an *input* model

Module top levels import only numpy and the standard library, so the device runner
stays light: runtimes are imported when a Session is made, converters inside export().
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..errors import EdgekitError


def get(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            raise EdgekitError(f"unknown artifact format '{name}'", f"choose one of: {', '.join(available())}") from None
        raise


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def for_artifact(path) -> ModuleType:
    """The backend that reads an artifact file, judged by its suffix."""
    suffix = str(path).lower().rsplit(".", 1)[-1]
    for name in available():
        if get(name).SUFFIX == f".{suffix}":
            return get(name)
    raise EdgekitError(f"{path}: not a known artifact type", "give a .tflite, .onnx or .xml file")


def require(module: str, extra: str):
    """Import a runtime/converter, or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgekitError(f"python package '{module}' is not installed",
                           f"pip install 'edgekit-toolchain[{extra}]'") from None
