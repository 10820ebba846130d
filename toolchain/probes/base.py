"""The probe contract: what a module in `edgekit.probes` (or a plug-in in $EDGEKIT_PROBES) defines.

    NAME: str      the key its figures use in an artifact's report entry
    ORDER: int     run order; lower first (the host run always comes before every probe)
    applies(ctx, backend, precision) -> bool        does it measure this artifact on this target?
    run(ctx, backend, artifact, host) -> dict       figures merged into the artifact's entry; a probe
                                                    that cannot measure returns an entry saying why,
                                                    it never raises for a device problem
    warnings(ctx) -> list[str]                      report warnings about the target as a whole
    notes(result) -> list[str]                      report lines for what it measured (report.md)

Every figure a probe returns carries a "how" label (measure.py) naming where it was obtained.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class HostRun:
    """What the host runner produced for an artifact: its JSON result, its outputs, and the
    directory holding `in.npz` (the evaluation inputs) for probes to reuse."""
    result: dict
    outputs: list[list[np.ndarray]]
    run_dir: Path


@runtime_checkable
class Probe(Protocol):
    NAME: str
    ORDER: int

    def applies(self, ctx: Any, backend: Any, precision: str) -> bool: ...
    def run(self, ctx: Any, backend: Any, artifact: Path, host: HostRun) -> dict: ...
    def warnings(self, ctx: Any) -> list[str]: ...
    def notes(self, result: dict) -> list[str]: ...


MEMBERS = ("NAME", "ORDER", "applies", "run", "warnings", "notes")
