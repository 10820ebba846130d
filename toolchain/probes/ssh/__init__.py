"""Every artifact also measured on devices over SSH (`--device ssh://user@host[:port]`), with its
outputs checked against the host run. Figures are labelled as measured on the remote device."""
from __future__ import annotations

from pathlib import Path

from ... import measure, runner
from ...errors import EdgekitError

NAME = "remote"
ORDER = 30


def applies(ctx, backend, precision: str) -> bool:
    return bool(ctx.options.devices)


def run(ctx, backend, artifact: Path, host) -> dict:
    return {NAME: [_on_device(ctx, backend, artifact, host, url) for url in ctx.options.devices]}


def _on_device(ctx, backend, artifact: Path, host, url: str) -> dict:
    from . import remote
    threads, warmup, runs = ctx.bench_settings()
    ctx.progress(f"{backend.FORMAT}: running on {url}")
    try:
        result = remote.bench(url, backend.files(artifact), host.run_dir / "in.npz", threads, warmup, runs,
                              outputs=host.run_dir / "out-remote.npz")
    except EdgekitError as exc:
        return {"device": url, "error": exc.one_line()}
    fid = measure.fidelity(host.outputs, runner.load_stacked(host.run_dir / "out-remote.npz", "out"))
    return {"device": url, "host": result["host"], "runtime": result["runtime"],
            "latency_ms": {**result["latency_ms"], "threads": result["threads"], "warmup": result["warmup"],
                           "runs": result["runs"], "how": result["how"]},
            "memory": {**result["memory"], "how": result["how"]},
            "max_abs_diff_vs_host": fid["max_abs_error"], "top1_agreement_vs_host": fid["top1_agreement"]}


def warnings(ctx) -> list[str]:
    return []


def notes(result: dict) -> list[str]:
    lines = []
    for a in result["artifacts"]:
        for r in a.get(NAME, []):
            if "error" in r:
                lines.append(f"REMOTE {r['device']}: {a['format']} {a['precision']}: {r['error']}")
                continue
            lat = r["latency_ms"]
            lines.append(f"REMOTE {a['format']} {a['precision']}: median {lat['median']:.4g} ms, p90 {lat['p90']:.4g}, "
                         f"p99 {lat['p99']:.4g} ({lat['threads']} thread(s), {lat['runs']} runs; {lat['how']}); "
                         f"outputs vs host: max diff {r['max_abs_diff_vs_host']:.1e}, top-1 "
                         f"{r['top1_agreement_vs_host']:.1%}")
    return lines
