"""Importing a plug-in named in an environment variable ($EDGEKIT_BACKENDS, $EDGEKIT_PROBES,
$EDGEKIT_PASSES): whatever goes wrong while importing it (a bad name, a missing module, an
exception or a syntax error in its code, even sys.exit) is one line naming the plug-in and the
variable, never a traceback or an `internal error`."""
from __future__ import annotations

import importlib
import re
from types import ModuleType

from .errors import EdgekitError

MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def import_plugin(import_path: str, variable: str, what: str) -> ModuleType:
    """Import `import_path`, a `what` plug-in (e.g. "backend") named in $`variable`."""
    fix = f"fix or remove it in ${variable} (comma-separated module import paths), or check PYTHONPATH"
    if not MODULE_NAME.fullmatch(import_path) or len(import_path) > 200:
        raise EdgekitError(f"{what} plug-in {import_path[:80]!r} (from ${variable}) is not a module name", fix)
    try:
        return importlib.import_module(import_path)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 (its code is not ours: every failure is this one line)
        text = " ".join(str(exc).split())[:160]
        raise EdgekitError(f"{what} plug-in {import_path!r} (from ${variable}) failed to import: "
                           f"{type(exc).__name__}{': ' + text if text else ''}", fix) from None
