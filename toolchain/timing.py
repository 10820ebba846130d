"""Latency that holds under load: one timing phase per host, several runner processes, interleaved.

- A host-wide lock (flock on a file in the cache directory) lets only one timing phase run at a
  time across every edgekit process on the host; conversions go on in parallel meanwhile.
- The artifacts being compared are timed in the same phase, interleaved ABAB...: process 1 of A,
  process 1 of B, process 2 of A, ... so a slow stretch of the machine hits all of them alike.
- A latency is the median across processes of each process's median; the spread across processes
  and the dispersion of all timed runs (IQR, robust CV) travel with it. A figure whose dispersion
  passes the thresholds below is marked unstable, and no ratio sentence is built on it.
"""
from __future__ import annotations

import fcntl
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import output, runner
from .errors import RunnerError

PROCESSES = 3          # runner processes per artifact in one timing phase
UNSTABLE_CV = 0.15     # robust CV (IQR / 1.349 / median) of all timed runs above this: unstable
UNSTABLE_SPREAD = 0.30  # (max - min) / median of the per-process medians above this: unstable

_held = threading.local()


def lock_path() -> Path:
    from .context import cache_dir
    return cache_dir() / "timing.lock"


@contextmanager
def host_lock(progress=lambda msg: None):
    """Exclusive across processes on this host (re-entrant within one thread)."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another edgekit process to finish timing on this host")
            fcntl.flock(handle, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def combine(results: list[dict]) -> dict:
    """One latency figure from several runner processes' results for the same artifact."""
    medians = [r["latency_ms"]["median"] for r in results]
    pooled = np.concatenate([r["timings_ms"] for r in results])
    median = float(np.median(medians))
    figures = {**runner.latency_stats(list(pooled)), "median": median,
               "processes": len(results), "process_medians": medians,
               "spread": float((max(medians) - min(medians)) / median) if median > 0 else 0.0,
               "threads": results[0]["threads"], "warmup": results[0]["warmup"], "runs": results[0]["runs"]}
    figures["unstable"] = figures["cv"] > UNSTABLE_CV or figures["spread"] > UNSTABLE_SPREAD
    return figures


def measure(artifacts: list[Path], inputs: Path | None, *, threads: int, warmup: int, runs: int,
            processes: int = PROCESSES, progress=lambda msg: None) -> list[dict]:
    """Time every artifact in one phase under the host lock, `processes` runner processes each,
    interleaved (A B A B ...). Returns per artifact {"latency_ms", "memory", "runtime", "host"}, or
    {"error": reason} for an artifact whose runner failed."""
    results: list[list[dict]] = [[] for _ in artifacts]
    errors: dict[int, str] = {}
    with output.tempdir("timing-") as tmp, host_lock(progress):  # named so a killed run's is swept
        for p in range(processes):
            progress(f"timing {len(artifacts)} artifact(s), interleaved: process {p + 1} of {processes}")
            for i, artifact in enumerate(artifacts):
                if i in errors:
                    continue
                try:
                    results[i].append(runner.invoke(artifact, Path(tmp) / f"{i}-{p}.json", threads=threads,
                                                    warmup=warmup, runs=runs, inputs=inputs, timings=True,
                                                    what=f"the {artifact.suffix.lstrip('.')} runner"))
                except RunnerError as exc:
                    errors[i] = str(exc)
    return [{"error": errors[i]} if i in errors else _figures(r) for i, r in enumerate(results)]


def _figures(results: list[dict]) -> dict:
    peaks = [r["memory"]["peak_rss_mib"] for r in results]
    memory = {**results[int(np.argmax(peaks))]["memory"], "processes": len(results)}
    return {"latency_ms": combine(results), "memory": memory, "runtime": results[0]["runtime"],
            "host": results[0]["host"]}


def ratio(a: dict, b: dict) -> dict | None:
    """a's latency over b's, both from the same interleaved phase, with the range of the per-process
    ratios (process i of a against process i of b, which ran next to each other)."""
    if not a.get("median") or not b.get("median"):
        return None
    pairs = [x / y for x, y in zip(a.get("process_medians", []), b.get("process_medians", [])) if y]
    return {"value": a["median"] / b["median"], "range": [min(pairs), max(pairs)] if pairs else None,
            "unstable": bool(a.get("unstable") or b.get("unstable"))}


def one_sample(samples: list[list[np.ndarray]], directory: Path) -> Path:
    """The first sample alone, as runner input for timing (the timed call uses only that one)."""
    path = directory / "timing-in.npz"
    runner.save_stacked(path, "in", samples[:1])
    return path
