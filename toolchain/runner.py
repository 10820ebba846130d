"""The light inference runner: numpy, the standard library and one runtime, nothing else.

It runs on the build host (as a subprocess, so memory and threads are the runtime's own)
and on devices. Inputs and outputs travel as .npz, results as versioned JSON:

    python -m edgekit.runner MODEL --threads 1 --warmup 10 --runs 100 \
        [--inputs in.npz] [--outputs out.npz] [--json result.json]

In the .npz files, key `in<i>` / `out<i>` holds input/output i of every sample, stacked
on a new leading axis.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCHEMA = "edgekit.bench/1"
TIMEOUT_S = 900  # how long the host waits for one runner process


def latency_stats(samples_ms: list[float]) -> dict:
    """Order statistics and dispersion: IQR, and the robust coefficient of variation IQR / 1.349 / median
    (the stdev / mean of a normal distribution, unmoved by a few outliers)."""
    ordered = np.sort(np.asarray(samples_ms, dtype=np.float64))
    median = float(np.median(ordered))
    q1, q3 = np.percentile(ordered, [25, 75])
    return {
        "median": median,
        "p90": float(np.percentile(ordered, 90)),
        "p99": float(np.percentile(ordered, 99)),
        "mean": float(ordered.mean()),
        "stdev": float(statistics.stdev(ordered)) if len(ordered) > 1 else 0.0,
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "iqr": float(q3 - q1),
        "cv": float((q3 - q1) / 1.349 / median) if median > 0 else 0.0,
    }


def host_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "machine": platform.machine(), "cpu": cpu,
            "logical_cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform()}


def _status_mib(field: str) -> float | None:
    """A `VmRSS:`/`VmHWM:` figure of this process from /proc/self/status (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    return _status_mib("VmRSS") or 0.0


class MemoryProbe:
    """Peak resident memory of this process, from its own address space.

    Linux: the kernel's high-water mark VmHWM. Elsewhere, a thread samples the resident size every
    few milliseconds. getrusage's ru_maxrss is not used on Linux: a child started by a big parent
    inherits the parent's high-water mark in it.
    """

    SAMPLE_S = 0.005

    def __init__(self):
        self.baseline = rss_mib()
        self._sampled = 0.0
        self._stop = None
        if _status_mib("VmHWM") is None and _status_mib("VmRSS") is None:
            self.source = "ru_maxrss (getrusage; no /proc here, may include a parent's peak)"
        elif _status_mib("VmHWM") is None:
            import threading
            self.source = f"VmRSS sampled every {self.SAMPLE_S * 1000:.0f} ms"
            self._stop = threading.Event()
            threading.Thread(target=self._sample, daemon=True).start()
        else:
            self.source = "VmHWM (/proc/self/status: this process's own high-water mark)"

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            self._sampled = max(self._sampled, rss_mib())

    def peak(self) -> float:
        if self._stop is not None:
            self._stop.set()
            return max(self._sampled, rss_mib())
        hwm = _status_mib("VmHWM")
        if hwm is not None:
            return hwm
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def random_inputs(session, seed: int = 0) -> list[np.ndarray]:
    from .bounds import check_tensor
    from .errors import EdgekitError
    for name, shape, dtype in session.inputs:
        if any(not isinstance(d, int) or d < 1 for d in shape):
            raise EdgekitError(f"input '{name}' has dynamic dims {tuple(shape)}", "pass --inputs with real samples")
        check_tensor(name, shape, np.dtype(dtype).itemsize)
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32).astype(dtype) if np.issubdtype(np.dtype(dtype), np.floating)
            else rng.integers(0, 10, shape).astype(dtype) for _, shape, dtype in session.inputs]


def load_stacked(path: Path, prefix: str = "in") -> list[list[np.ndarray]]:
    """Samples from an .npz written by save_stacked: key <prefix><i> holds array i of every sample."""
    with np.load(path) as data:
        arrays = [data[f"{prefix}{i}"] for i in range(len(data.files))]
    return [[a[n] for a in arrays] for n in range(len(arrays[0]))]


def save_stacked(path: Path, prefix: str, samples: list[list[np.ndarray]]) -> None:
    columns = {f"{prefix}{i}": np.stack([s[i] for s in samples]) for i in range(len(samples[0]))}
    np.savez(path, **columns)


def command(model, result_json, *, python: tuple[str, ...] = (sys.executable,), threads: int = 1, warmup: int = 10,
            runs: int = 100, inputs=None, outputs=None, device: str = "cpu", timings: bool = False,
            ops: bool = False) -> list[str]:
    """The argv that runs this runner on `model` (paths may be local or on a device)."""
    # `--opt=value` and `--` before the model: a path starting with '-' is never read as an option
    argv = [*python, "-m", "edgekit.runner", f"--threads={threads}", f"--warmup={warmup}", f"--runs={runs}",
            f"--json={result_json}", f"--device={device}"]
    if inputs:
        argv.append(f"--inputs={inputs}")
    if outputs:
        argv.append(f"--outputs={outputs}")
    if timings:
        argv.append("--timings")
    if ops:
        argv.append("--ops")
    return [*argv, "--", str(model)]


def invoke(model, result_json: Path | None, *, timeout: float | None = None, env: dict | None = None,
           launcher=None, what: str = "the runner", **options) -> dict | None:
    """Run the runner once, in its own process group, with one timeout; returns its JSON result
    (None when the result is not local). `options` go to command(); `launcher` wraps the argv
    (e.g. in ssh). Any failure raises RunnerError with a one-line reason."""
    from .children import run
    from .errors import RunnerError
    argv = command(model, result_json, **options)
    timeout = TIMEOUT_S if timeout is None else timeout  # read at call time, so it can be lowered
    try:
        proc = run(launcher(argv) if launcher else argv, timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RunnerError(f"{what} timed out after {timeout:.0f} s") from None
    except OSError as exc:
        raise RunnerError(f"{what} could not start: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        raise RunnerError(f"{what} failed: {failure_reason(proc.returncode, proc.stderr)}", proc.returncode,
                          proc.stderr)
    if launcher is not None or result_json is None:
        return None
    return json.loads(Path(result_json).read_text())


def failure_reason(returncode: int, stderr: str) -> str:
    """One line from a failed run's stderr: edgekit's own `error:` line, else the last exception line,
    else the last line; a death by signal says which."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for pick in (lambda ln: ln.startswith("error: "), lambda ln: re.match(r"^[\w.]+(Error|Exception): ", ln)):
        chosen = [ln for ln in lines if pick(ln)]
        if chosen:
            return chosen[-1].removeprefix("error: ")[:300]
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return f"killed by {name}" + (" (out of memory?)" if returncode == -signal.SIGKILL else "")
    return (lines or [f"exit code {returncode}"])[-1][:300]


def quantize_inputs(session, sample: list[np.ndarray]) -> list[np.ndarray]:
    """Float samples into the model's integer input tensors, where it has them (int8-io models)."""
    params = getattr(session, "input_quant", None) or [None] * len(sample)
    out = []
    for array, (_, _, dtype), qp in zip(sample, session.inputs, params):
        if qp and np.issubdtype(np.asarray(array).dtype, np.floating):
            info = np.iinfo(dtype)
            array = np.clip(np.round(array / qp[0]) + qp[1], info.min, info.max).astype(dtype)
        out.append(array)
    return out


def dequantize_outputs(session, outputs: list[np.ndarray]) -> list[np.ndarray]:
    params = getattr(session, "output_quant", None) or [None] * len(outputs)
    return [(o.astype(np.float32) - qp[1]) * qp[0] if qp else o for o, qp in zip(outputs, params)]


def bench(model: Path, threads: int = 1, warmup: int = 10, runs: int = 100,
          inputs: Path | None = None, outputs: Path | None = None, device: str = "cpu", keep_timings: bool = False,
          ops: bool = False) -> dict:
    from .backends import for_artifact

    backend = for_artifact(model)
    memory = MemoryProbe()  # before the runtime is imported: backends import it inside Session
    start = time.perf_counter()
    session = backend.Session(model, threads=threads, device=device)
    load_ms = (time.perf_counter() - start) * 1000
    loaded = rss_mib()
    samples = [quantize_inputs(session, s) for s in load_stacked(inputs)] if inputs else [random_inputs(session)]
    if outputs:
        save_stacked(outputs, "out", [dequantize_outputs(session, session.run(s)) for s in samples])
    # Inputs are bound once and only the inference call is timed, as the runtimes' own benchmark tools do.
    session.bind(samples[0])
    started = time.time()
    for _ in range(warmup):
        session.invoke()
    timings = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        session.invoke()
        timings.append((time.perf_counter_ns() - t0) / 1e6)
    result = {
        "schema": SCHEMA,
        "model": str(model), "format": backend.FORMAT,
        "runtime": {"name": backend.RUNTIME, "version": backend.runtime_version()},
        "host": host_info(),
        "device": device, "threads": threads, "warmup": warmup, "runs": runs,
        "load_ms": load_ms,
        "latency_ms": latency_stats(timings),
        "memory": {"peak_rss_mib": memory.peak(), "baseline_rss_mib": memory.baseline, "loaded_rss_mib": loaded,
                   "source": memory.source},
        "samples_run": len(samples) if outputs else 0,
        "timed_at": {"start": started, "end": time.time(), "clock": "wall clock of the measuring host, s"},
    }
    if keep_timings:
        result["timings_ms"] = timings
    if ops:
        from . import opprofile
        del session  # one runtime instance at a time
        result["op_profile"] = opprofile.profile(model, threads, samples[0], runs)
    return result


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every edgekit user error
        self.exit(2, f"error: {self.prog}: {message}; see --help\n")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m edgekit.runner", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=_at_least(1), default=1)
    parser.add_argument("--warmup", type=_at_least(0), default=10)
    parser.add_argument("--runs", type=_at_least(1), default=100)
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--outputs", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--timings", action="store_true", help="Also write every timed run (timings_ms).")
    parser.add_argument("--ops", action="store_true", help="Also time every op with the runtime's own profiler "
                                                          "(op_profile; edgekit.opprofile).")
    args = parser.parse_args(argv)
    from .errors import EdgekitError
    try:
        result = bench(args.model, args.threads, args.warmup, args.runs, args.inputs, args.outputs, args.device,
                       args.timings, args.ops)
    except EdgekitError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
