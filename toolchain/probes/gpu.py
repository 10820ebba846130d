"""Latency on a GPU, where the format's runtime sees one; otherwise the report says "not measured",
never a CPU figure. Fidelity and accuracy stay those of the host run."""
from __future__ import annotations

from .. import backends, runner
from ..measure import MEASURED, NOT_MEASURED
from ..errors import RunnerError

NAME = "gpu"
ORDER = 10


def applies(ctx, backend, precision: str) -> bool:
    return ctx.target.profile.device.kind == "gpu"


def run(ctx, backend, artifact, host) -> dict:
    gpu = backend.gpu_name() if backend.gpu_name else None
    if gpu is None:
        return {"latency_ms": {"status": "not measured: no GPU found", "how": NOT_MEASURED}}
    _, warmup, runs = ctx.bench_settings()
    try:
        result = runner.invoke(artifact, host.run_dir / "gpu.json", warmup=warmup, runs=runs,
                               inputs=host.run_dir / "in.npz", device="gpu", what="the GPU run")
    except RunnerError as exc:
        return {"latency_ms": {"status": f"not measured: {exc}", "how": NOT_MEASURED}}
    return {"latency_ms": {**result["latency_ms"], "threads": result["threads"], "warmup": result["warmup"],
                           "runs": result["runs"], "how": f"{MEASURED} GPU ({gpu})"}}


def warnings(ctx) -> list[str]:
    if ctx.target.profile.device.kind != "gpu":
        return []
    formats = ctx.options.formats or ctx.target.profile.build.formats
    if any(b.gpu_name and b.gpu_name() for b in map(backends.get, formats)):
        return ["fidelity and accuracy were measured on the host CPU; latency on the GPU where its runtime sees one"]
    return ["latency: not measured: no GPU found; fidelity and accuracy were measured on the host CPU"]


def notes(result: dict) -> list[str]:
    return []
