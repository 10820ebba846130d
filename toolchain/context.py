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
    from .options import ConvertOptions
    from .passes import quantize
    from .recipe import Recipe


@dataclass
class Context:
    source: sources.Source  # the model the artifacts are built from: the last stage of the source passes
    target: targets.Target
    options: ConvertOptions
    recipe: Recipe  # every pass's settings, resolved once (recipe.py)
    stage: Path | None
    workdir: Path
    evalset: data.EvalSet
    calib: quantize.Calibration | None
    reference: list[list[np.ndarray]]
    progress: Callable[[str], None] = field(default=lambda msg: None)
    stages: list[tuple[str, sources.Source]] = field(default_factory=list)  # original/teacher, student, pruned, ...
    passes: dict[str, dict] = field(default_factory=dict)  # what each source pass that ran reported (by NAME)
    load_opts: sources.LoadOptions | None = None  # how a pass loads a model it saved (prune.as_source)
    train: tuple | None = None  # (samples, labels or None, origin) when a source pass needs training data
    source_accuracy: float | None = None  # of the original model, before any pass
    load_notes: list[str] = field(default_factory=list)  # e.g. dynamic dims fixed from the data's shape

    @property
    def qconfig(self) -> quantize.QuantizeConfig:
        """The quantization settings of the recipe (what probes read)."""
        return self.recipe["quantize"]

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
