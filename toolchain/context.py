"""The state one conversion carries from step to step, and where edgekit caches things.

Low in the import graph: pipeline builds a Context; devices, emulation and passes read it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

    from . import data, sources, targets
    from .passes import quantize
    from .options import ConvertOptions


@dataclass
class Context:
    source: sources.Source
    target: targets.Target
    options: ConvertOptions
    qconfig: quantize.QuantizeConfig
    stage: Path | None
    workdir: Path
    evalset: data.EvalSet
    calib: quantize.Calibration | None
    reference: list[list[np.ndarray]]
    progress: Callable[[str], None] = field(default=lambda msg: None)
    stages: list[tuple[str, sources.Source]] = field(default_factory=list)  # original/teacher, student, pruned, ...
    pruning: dict | None = None
    distillation: dict | None = None
    source_accuracy: float | None = None  # of the original model, before any pass
    load_notes: list[str] = field(default_factory=list)  # e.g. dynamic dims fixed from the data's shape

    def bench_settings(self) -> tuple[int, int, int]:
        """(threads, warmup, runs): the profile's, unless overridden by options."""
        bench, opts = self.target.profile.bench, self.options
        return (opts.threads or bench.threads, bench.warmup if opts.warmup is None else opts.warmup,
                opts.runs or bench.runs)

    def host_threads(self) -> int:
        """Threads for timing on this host: the profile's count, capped at this host's cores when it
        asks for more (a 4-thread device profile on a 2-core host oversubscribes it and every figure
        turns unstable). --threads is the user's own choice and is never capped. Remote and estimated
        figures keep bench_settings()'s count, the device's."""
        from .bounds import host_threads
        threads = self.bench_settings()[0]
        return threads if self.options.threads else host_threads(threads)

    def host_threads_note(self) -> str | None:
        """The one line saying host timing used fewer threads than the profile asks for, if it did."""
        asked, used = self.bench_settings()[0], self.host_threads()
        if used == asked:
            return None
        return (f"host timing used {used} thread(s): the {self.target.profile.name} profile asks for {asked} and this "
                f"host has {os.cpu_count()} core(s); figures measured on a device or estimated use {asked}")

    def timing_processes(self) -> int:
        """Runner processes per artifact in a timing phase: the profile's, unless overridden."""
        return self.options.processes or self.target.profile.bench.processes


def cache_dir() -> Path:
    """$EDGEKIT_CACHE or ~/.cache/edgekit, created; a one-line error when it cannot be used."""
    path = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        from .errors import EdgekitError
        raise EdgekitError(f"cache directory {path} cannot be used ({exc.strerror or exc})",
                           "set EDGEKIT_CACHE to a writable directory") from None
    return path
