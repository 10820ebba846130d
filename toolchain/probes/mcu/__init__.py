"""MCU targets: the target artifact in TFLite Micro's own kernels (host build), its C artifact
compiled for the profile's core, and the RAM/flash verdict per board. The engine is in this
package (engine.py; the TFLite Micro child is child.py)."""
from __future__ import annotations

from pathlib import Path

NAME = "mcu"
ORDER = 35


def applies(ctx, backend, precision: str) -> bool:
    from . import engine
    return backend.FORMAT == "tflite" and precision == ctx.qconfig.precision and engine.applies(ctx.target)


def run(ctx, backend, artifact: Path, host) -> dict:
    import subprocess

    from . import engine
    from ...errors import ConversionError, EdgekitError
    try:  # the probe never fails the artifact LiteRT already verified
        return {NAME: engine.run(artifact, ctx, host.outputs)}
    except (ConversionError, EdgekitError, OSError, ValueError, subprocess.SubprocessError) as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return {NAME: {"error": f"the MCU probe failed: {reason}", "how": engine.HOW}}


def warnings(ctx) -> list[str]:
    return []


def notes(result: dict) -> list[str]:
    from . import engine
    return [line for a in result["artifacts"] if a.get(NAME)
            for line in engine.notes(f"{a['format']} {a['precision']}", a[NAME])]
