"""Upper (and lower) bounds on every number a user or a profile can give, and a memory check
before anything big is allocated. Standard library only: the runner uses it too.

The table is the documentation: targets/README.md shows each profile field's range from it,
and the CLI flags use the same limits.
"""
from __future__ import annotations

import math
import os

from .errors import EdgekitError

THREADS_PER_CORE = 4  # --threads above this many per host core needs --threads-unbounded
MAX_TENSOR_ELEMENTS = 2 ** 31 - 1  # runtimes index tensors with int32
MEMORY_SHARE = 0.8  # of the memory available now, what one run may plan to use

# field path -> (lowest, highest, lowest allowed?) ; numbers not listed must be finite and >= 0
RANGES: dict[str, tuple[float, float, bool]] = {
    "device.cores": (1, 1024, True),
    "device.clock_ghz": (0, 100, True),
    "device.fp32_macs_per_cycle": (0, 1e6, True),
    "device.int8_macs_per_cycle": (0, 1e6, True),
    "device.memory_gbps": (0, 1e5, True),
    "device.compute_efficiency": (0, 1, False),
    "device.parallel_efficiency": (0, 1, True),
    "device.op_overhead_us": (0, 1e6, True),
    "build.batch": (1, 4096, True),
    "build.input_shape": (1, 2 ** 24, True),
    "build.max_accuracy_drop": (0, 100, True),
    "bench.threads": (1, 1024, True),
    "bench.warmup": (0, 100_000, True),
    "bench.runs": (1, 1_000_000, True),
    "bench.processes": (1, 64, True),
    "bench.eval_samples": (1, 100_000, True),
    "quantize.calib_samples": (1, 100_000, True),
    "mixed.rounds": (1, 100, True),
    "prune.amount": (0, 1, True),
    "prune.finetune_epochs": (0, 10_000, True),
    "distill.temperature": (0, 100, False),
    "distill.alpha": (0, 1, True),
    "distill.epochs": (0, 10_000, True),
    "distill.patience": (0, 10_000, True),
    "distill.batch_size": (1, 65_536, True),
    "distill.learning_rate": (0, 10, False),
    "distill.val_fraction": (0, 0.9, True),
    "distill.seed": (0, 2 ** 32 - 1, True),
    "preprocess.scale": (0, 1e6, False),
    "preprocess.mean": (-1e6, 1e6, True),
    "preprocess.std": (0, 1e6, False),
    "accelerator.mac_rows": (1, 4096, True),
    "accelerator.mac_cols": (1, 4096, True),
    "accelerator.clock_mhz": (0, 1e5, False),
    "accelerator.accumulator_bits": (8, 64, True),
    "accelerator.dram_gbps": (0, 1e5, False),
    "accelerator.compute_efficiency": (0, 1, False),
    "accelerator.dram_efficiency": (0, 1, False),
    "accelerator.onchip_gbps": (0, 1e5, True),
    "accelerator.elementwise_per_cycle": (0, 4096, True),
    "accelerator.layer_overhead_cycles": (0, 1e6, True),
}
DEFAULT_RANGE = (0, 2 ** 53, True)


def limit(path: str) -> int:
    """The upper bound of a field, for CLI flags (`click.IntRange(max=limit("bench.runs"))`)."""
    return int(RANGES[path][1])


def describe(path: str) -> str:
    low, high, closed = RANGES.get(path, DEFAULT_RANGE)
    return f"{low:g}..{high:g}" if closed else f"above {low:g}, up to {high:g}"


def out_of_range(path: str, value) -> str | None:
    """Why `value` is not allowed for field `path`, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    low, high, closed = RANGES.get(path, DEFAULT_RANGE)
    if value > high or value < low or (value == low and not closed):
        return f"{value:g} is out of range ({describe(path)})"
    return None


def check_threads(threads: int, unbounded: bool = False) -> None:
    cores = os.cpu_count() or 1
    if threads > THREADS_PER_CORE * cores and not unbounded:
        raise EdgekitError(f"{threads} threads is more than {THREADS_PER_CORE}x this host's {cores} cores",
                           f"use at most {THREADS_PER_CORE * cores}, or pass --threads-unbounded")


def available_memory() -> int | None:
    """Bytes of memory available now (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse, before allocating, what would not fit in the memory available now."""
    available = available_memory()
    if available is not None and nbytes > MEMORY_SHARE * available:
        raise EdgekitError(f"{what} needs {nbytes / 2 ** 30:.1f} GiB but only {available / 2 ** 30:.1f} GiB of memory "
                           "is available", fix)


def check_tensor(name: str, shape, itemsize: int = 4) -> None:
    """A declared tensor shape that no runtime could hold, or this host could not allocate once."""
    elements = math.prod(int(d) for d in shape)
    if elements > MAX_TENSOR_ELEMENTS:
        raise EdgekitError(f"input '{name}' of shape {tuple(shape)} has {elements:,} elements (the runtimes' limit is "
                           f"{MAX_TENSOR_ELEMENTS:,})", "give a smaller --input-shape")
    check_memory(elements * itemsize, f"input '{name}' of shape {tuple(shape)}", "give a smaller --input-shape")


def host_threads(asked: int) -> int:
    """Threads for timing a profile on this host: its count where it fits this host's cores; a profile asking
    for more (a 4-thread Raspberry Pi profile on a 2-core host) is timed with every core but one, at least 1:
    all cores oversubscribed turn every figure unstable, and a timing that takes every core is stalled by
    whatever else the host runs (the spare core takes it)."""
    cores = os.cpu_count() or 1
    return asked if asked <= cores else max(1, min(asked, cores - 1))
