"""How edgekit measures: memory from the runner's own address space, whatever its parent holds."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_keras, tiny_eval):
    import edgekit
    out = tmp_path_factory.mktemp("measure") / "out"
    report = edgekit.convert(tiny_keras, target="cpu", data=tiny_eval, runs=5, warmup=1, out=out)
    return report, out


def _inputs(tmp_path, tiny_eval):
    """One sample, as the timing phase gives the runner."""
    from edgekit import runner
    with np.load(tiny_eval) as npz:
        runner.save_stacked(tmp_path / "in.npz", "in", [[npz["x"][:1]]])
    return tmp_path / "in.npz"


def test_peak_memory_is_the_runners_own_not_its_big_parents(converted, tmp_path, tiny_eval):
    from edgekit import runner
    _, out = converted
    ballast = np.ones(1 << 30, dtype=np.uint8)  # this process now holds >= 1 GiB, every page touched
    assert runner.rss_mib() >= 1024
    inherited = subprocess.run([sys.executable, "-c", "import resource; print(resource.getrusage("
                                "resource.RUSAGE_SELF).ru_maxrss)"], capture_output=True, text=True)
    assert int(inherited.stdout) / 1024 >= 1024, "this kernel no longer hands the parent's peak to children"
    result = runner.invoke(out / "model.tflite", tmp_path / "r.json", runs=5, warmup=1,
                           inputs=_inputs(tmp_path, tiny_eval))
    assert result["memory"]["source"].startswith("VmHWM")
    assert 0 < result["memory"]["baseline_rss_mib"] <= result["memory"]["peak_rss_mib"] < 300
    del ballast


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "openvino"])
def test_convert_reports_each_artifacts_own_peak(converted, fmt, tmp_path, tiny_eval):
    """The report's peak agrees within 20% with the runner run alone under GNU time (its own rusage)."""
    report, out = converted
    artifact = next(a for a in report["artifacts"] if a["format"] == fmt)
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "edgekit.runner", str(out / artifact["file"]),
                           "--runs", "5", "--warmup", "1", "--inputs", str(_inputs(tmp_path, tiny_eval)),
                           "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    alone = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    reported = artifact["memory"]["peak_rss_mib"]
    assert abs(reported - alone) <= 0.2 * alone, (reported, alone)


def test_generated_evaluation_and_calibration_samples_are_disjoint(tiny_keras, tmp_path):
    """With --calib random and no --data, nothing scored is a sample the ranges were fitted to."""
    from edgekit import pipeline, targets
    from edgekit.options import ConvertOptions
    options = ConvertOptions(target="cpu-int8", calib="random")
    ctx = pipeline.prepare(tiny_keras, "tiny", targets.get_target("cpu-int8"), options, tmp_path, lambda msg: None)
    scored = {b"".join(a.tobytes() for a in s) for s in ctx.evalset.samples}
    calibrated = {b"".join(a.tobytes() for a in s) for s in ctx.calib.samples}
    assert len(scored) == len(ctx.evalset.samples) and len(calibrated) == len(ctx.calib.samples)
    assert not scored & calibrated


def test_only_one_timing_phase_per_host(tmp_path):
    """A second process waits for the host timing lock while the first holds it."""
    import os
    import time

    from edgekit import timing
    marker = tmp_path / "acquired"
    child = ("import pathlib, sys; from edgekit import timing\n"
             "with timing.host_lock(): pathlib.Path(sys.argv[1]).write_text('x')")
    with timing.host_lock():
        proc = subprocess.Popen([sys.executable, "-c", child, str(marker)], env=os.environ.copy())
        time.sleep(1.5)
        assert not marker.exists(), "the second process timed while the first held the lock"
    assert proc.wait(timeout=60) == 0 and marker.exists()


def test_latency_across_processes_and_unstable_figures():
    from edgekit import timing

    def process(median, spread=0.0):
        runs = [median * (1 + spread * (i % 2 * 2 - 1)) for i in range(20)]
        return {"latency_ms": {"median": median}, "timings_ms": runs, "threads": 1, "warmup": 0, "runs": 20}

    steady = timing.combine([process(1.0), process(1.1), process(0.9)])
    assert steady["median"] == 1.0 and steady["processes"] == 3 and steady["process_medians"] == [1.0, 1.1, 0.9]
    assert steady["spread"] == pytest.approx(0.2) and not steady["unstable"]
    assert timing.combine([process(1.0), process(2.0), process(1.0)])["unstable"]  # processes disagree
    assert timing.combine([process(1.0, spread=0.5)] * 3)["unstable"]  # runs scatter
    ratio = timing.ratio(timing.combine([process(0.5)] * 3), steady)
    assert ratio["value"] == pytest.approx(0.5) and not ratio["unstable"]
    assert ratio["range"] == pytest.approx([0.5 / 1.1, 0.5 / 0.9])


def test_gzip_size_is_gzip_default_level_over_the_artifacts_files(tmp_path):
    """gzip -9 spent 80-97 s per 41-54 MB file on float weights dequantized from int8 (ddddocr's
    quantize_dynamic CRNN: two thirds of its conversion); the figure is gzip -6 of the files' joined bytes,
    streamed, whatever the chunking."""
    import gzip

    from edgekit import measure
    codes = np.clip(np.round(np.random.default_rng(0).normal(0, 30, (1100, 1024))), -127, 127)
    files = [tmp_path / "model.xml", tmp_path / "model.bin"]  # an IR's two files; the .bin over one read chunk
    files[0].write_text("<net>" + "<layer/>" * 500 + "</net>")
    files[1].write_bytes((codes * 0.004).astype(np.float32).tobytes())  # per-tensor scale: 255 distinct values
    joined = b"".join(f.read_bytes() for f in files)
    figures = measure.size(files)
    assert figures["bytes"] == len(joined) == measure.file_bytes(files)
    assert figures["gzip_bytes"] == len(gzip.compress(joined, compresslevel=6, mtime=0)) < len(joined) / 2
