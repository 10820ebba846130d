"""`edgekit bench`: time one artifact in runner processes here, or on devices over SSH."""
from __future__ import annotations

from pathlib import Path

import click

from ..bounds import limit
from ..errors import EdgekitError
from .common import _stdout, json_option, print_json, working


@click.command()
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT [OTHER]", type=click.Path(path_type=Path))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Inference threads (at most 4 per core unless --threads-unbounded).")
@click.option("--threads-unbounded", is_flag=True, help="Allow more than 4 threads per core of this host.")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(1, limit("bench.runs")), help="Timed runs.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0, limit("bench.warmup")),
              help="Untimed warm-up runs.")
@click.option("--inputs", type=click.Path(path_type=Path, dir_okay=False),
              help="Inputs .npz (keys in0, in1, ...); default: seeded random inputs.")
@click.option("--processes", default=3, show_default=True, type=click.IntRange(1, limit("bench.processes")),
              help="Runner processes, one after another; the median is taken across them.")
@json_option
@click.option("--device", "devices", multiple=True, metavar="ssh://USER@HOST[:PORT]",
              help="Run on these devices over SSH instead of here (repeatable, in parallel, one job per device at "
                   "a time); results are compared.")
@click.option("--timeout", default=600, show_default=True, type=click.IntRange(1, 86_400), help="Seconds per remote step.")
@click.option("--ops", is_flag=True, help="Time every op with the runtime's own profiler: op type x count x time x "
                                          "share, and the 10 slowest ops; with two artifacts, op types side by side.")
def bench(artifacts, threads, threads_unbounded, runs, warmup, processes, inputs, as_json, devices, timeout, ops):
    """Time one artifact (.tflite, .onnx or OpenVINO .xml) in runner processes here, or on devices over SSH.
    Two artifacts (e.g. a model's fp32 and int8) are timed in one interleaved phase, with the second's
    latency as a ratio of the first's; with --ops, their op types side by side."""
    from .. import timing
    from ..bounds import check_threads
    if len(artifacts) > 2:
        raise EdgekitError(f"bench takes one or two artifacts, not {len(artifacts)}", "give ARTIFACT [OTHER]")
    for artifact in artifacts:
        if not artifact.is_file():
            raise EdgekitError(f"artifact not found: {artifact}", "check the path")
    # absolute: a name starting with '-' is never read as an option (scp, the runner)
    artifacts = [a.absolute() for a in artifacts]
    if len(artifacts) == 2 and artifacts[0].resolve() == artifacts[1].resolve():
        raise EdgekitError(f"both artifacts are {artifacts[0].name}", "give two different artifacts to compare, or one "
                                                                       "(--json is a flag: JSON goes to stdout)")
    if devices:
        if len(artifacts) > 1:
            raise EdgekitError("--device benches one artifact", "run bench once per artifact")
        return _remote_bench(artifacts[0], threads, runs, warmup, inputs, as_json, devices, timeout)
    check_threads(threads, threads_unbounded)  # here; a device's cores are its own business
    if ops:
        return _ops(artifacts, threads, warmup, runs, inputs, as_json)
    stack, status = working("timing")
    with stack:
        results = timing.measure(artifacts, inputs, threads=threads, warmup=warmup, runs=runs, processes=processes,
                                 progress=status.update)
    for artifact, result in zip(artifacts, results):
        if "error" in result:
            raise EdgekitError(f"{artifact.name}: {result['error']}",
                               "check that the artifact loads: python -m edgekit.runner ARTIFACT")
    pair = timing.ratio(results[1]["latency_ms"], results[0]["latency_ms"]) if len(results) == 2 else None
    if as_json:
        return print_json(results[0] if len(results) == 1 else {"artifacts": results, "ratio": pair})
    for artifact, result in zip(artifacts, results):
        _echo_figures(artifact, result, threads, warmup, runs, processes)
    if pair:
        click.echo(_ratio_line(artifacts, pair))


def _echo_figures(artifact: Path, result: dict, threads: int, warmup: int, runs: int, processes: int) -> None:
    lat, memory = result["latency_ms"], result["memory"]
    click.echo(f"{artifact.name} [{result['runtime']['name']} {result['runtime']['version']}] threads={threads} "
               f"warmup={warmup} runs={runs} x {processes} processes: median {lat['median']:.4g} ms "
               f"(process medians {', '.join(f'{m:.4g}' for m in lat['process_medians'])}), p90 {lat['p90']:.4g}, "
               f"p99 {lat['p99']:.4g}, CV {lat['cv']:.1%}{' UNSTABLE' if lat['unstable'] else ''}; peak RSS "
               f"{memory['peak_rss_mib']:.0f} MiB ({memory['source'].split(' ')[0]}; measured on "
               f"{result['host']['hostname']})")


def _ratio_line(artifacts: list[Path], pair: dict) -> str:
    spread = f" (per process pair {pair['range'][0]:.2f}-{pair['range'][1]:.2f})" if pair["range"] else ""
    verdict = "; UNSTABLE: not a reliable ratio" if pair["unstable"] else ""
    return f"{artifacts[1].name} / {artifacts[0].name}: {pair['value']:.2f}x latency{spread}, interleaved{verdict}"


def _ops(artifacts: list[Path], threads: int, warmup: int, runs: int, inputs: Path | None, as_json: bool) -> None:
    from .. import opprofile, opreport
    from ..errors import RunnerError
    stack, status = working("profiling")
    results = []
    with stack:
        for artifact in artifacts:
            try:
                results.append(opreport.bench_ops(artifact, threads, warmup, runs, inputs, status.update))
            except RunnerError as exc:
                raise EdgekitError(f"{artifact.name}: {exc}",
                                   "check that the artifact loads: python -m edgekit.runner ARTIFACT") from None
    pair = opprofile.compare(results[0]["op_profile"], results[1]["op_profile"]) if len(results) == 2 else None
    if as_json:
        return print_json(results[0] if pair is None else {"artifacts": results, "op_compare": pair})
    from ..report import show_note, show_table
    for artifact, result in zip(artifacts, results):
        opreport.show(_stdout(), f"{artifact.name} [{result['runtime']['name']} {result['runtime']['version']}]",
                      result["op_profile"], show_table, show_note)
    if pair:
        opreport.show_pair(_stdout(), f"{artifacts[0].name} against {artifacts[1].name}, per op type", pair,
                           show_table, show_note)


def _on_each(devices: list[str], job) -> list:
    """job(device) on every device at once (each device's own lock keeps one job on it). On an error or a
    signal the other devices' runs are ended; each one's clean-up still stops its runner there."""
    if len(devices) == 1:
        return [job(devices[0])]
    from concurrent.futures import ThreadPoolExecutor

    from .. import children
    pool = ThreadPoolExecutor(len(devices))
    try:
        return [f.result() for f in [pool.submit(job, url) for url in devices]]
    except BaseException:
        children.kill_all()
        raise
    finally:
        pool.shutdown(wait=True)


def _remote_bench(artifact, threads, runs, warmup, inputs, as_json, devices, timeout):
    from .. import backends
    from ..probes.ssh import remote
    from ..report import show_note, show_table
    files = backends.for_artifact(artifact).files(artifact)

    def job(url):  # a failing device keeps the others' figures; it is named below
        try:
            return remote.bench(url, files, inputs, threads, warmup, runs, timeout=timeout)
        except EdgekitError as exc:
            if len(devices) == 1:
                raise
            return {"device": url, "error": exc.one_line()}
    results = _on_each(devices, job)
    failed = [(url, r["error"]) for url, r in zip(devices, results) if "error" in r]
    worked = [(url, r) for url, r in zip(devices, results) if "error" not in r]
    if as_json:
        print_json(results)
    elif worked:
        _device_table(artifact, worked, threads, warmup, runs, show_note, show_table)
    if failed:
        fix = "the figures printed are from the devices that worked" if worked else "check the devices"
        raise EdgekitError(f"{len(failed)} of {len(devices)} devices failed: "
                           + "; ".join(f"{url}: {why}" for url, why in failed), fix)


def _device_table(artifact, worked, threads, warmup, runs, show_note, show_table):
    out = _stdout()
    show_table(out, f"{artifact.name} on {len(worked)} device(s)",
               ("device", "cpu", "runtime", "median ms", "p90 ms", "p99 ms", "CV", "peak RSS MiB"),
               [(url, f"{r['host']['cpu']} ({r['host']['machine']})", f"{r['runtime']['name']} {r['runtime']['version']}",
                 f"{r['latency_ms']['median']:.4g}", f"{r['latency_ms']['p90']:.4g}", f"{r['latency_ms']['p99']:.4g}",
                 f"{r['latency_ms'].get('cv', 0):.0%}", f"{r['memory']['peak_rss_mib']:.0f}")
                for url, r in worked])
    for url, r in worked:
        show_note(out, f"{url}: {r['how']}; {threads} thread(s), {warmup} warm-up, {runs} runs", "")
