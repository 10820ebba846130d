"""The runtime-only install (what the runtime image and a device get), and the Dockerfiles.

The images themselves are built and run in test_images.py. What is checked here: the
Dockerfiles pass hadolint, every file they COPY exists, the runtime image's install steps
(requirements/runtime.txt, then the project with --no-deps) work in a clean venv offline from the
wheels `make setup` downloaded, and the arm64 image's pins are those the emulated aarch64
environment was provisioned with.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory):
    """A clean venv with only the runtime install, made offline as the runtime image makes it."""
    base = tmp_path_factory.mktemp("runtime")
    wheels = base / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links",
           str(ROOT / ".wheelhouse"), "--find-links", str(wheels)]
    subprocess.run([*pip, "-r", str(ROOT / "requirements" / "runtime.txt")], check=True, capture_output=True)
    subprocess.run([*pip, "--no-deps", "edgekit-toolchain"], check=True, capture_output=True)
    return venv


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_keras):
    import edgekit
    out = tmp_path_factory.mktemp("pkg") / "out"
    edgekit.convert(tiny_keras, target="cpu", formats=["tflite", "onnx"], runs=1, out=out)
    return out


def test_runtime_install_benchmarks_without_tensorflow(runtime_venv, artifacts, tmp_path):
    python = runtime_venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr
    bench = subprocess.run([str(runtime_venv / "bin" / "edgekit"), "bench", str(artifacts / "model.tflite"),
                            "--runs", "5", "--json"], capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["runtime"]["name"] == "ai-edge-litert"
    import numpy as np
    np.savez(tmp_path / "in.npz", in0=np.zeros((2, 1, 8, 8, 1), np.float32))
    run = subprocess.run([str(python), "-m", "edgekit.runner", str(artifacts / "model.onnx"), "--runs", "3",
                          "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz"),
                          "--json", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "o.json").read_text())
    assert result["schema"] == "edgekit.bench/1" and result["samples_run"] == 2 and result["memory"]["peak_rss_mib"] > 0
    assert {"cpu", "machine", "logical_cores"} <= set(result["host"])


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.toolchain", "Dockerfile.runtime"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_exists(dockerfile):
    copies = re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), re.MULTILINE)
    assert copies
    for line in copies:
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_images_install_from_the_lock_files_the_tests_use():
    toolchain = (ROOT / "docker" / "Dockerfile.toolchain").read_text()
    runtime = (ROOT / "docker" / "Dockerfile.runtime").read_text()
    assert "-r requirements/lock.txt" in toolchain and "-r requirements/no-deps.txt" in toolchain
    assert "-r requirements/runtime.txt" in runtime and "linux/amd64,linux/arm64" in runtime
    pins = [ln for ln in (ROOT / "requirements" / "runtime.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert all("==" in ln for ln in pins)


def test_arm64_pins_are_the_emulated_environment(tmp_path):
    import os

    from edgekit.probes.aarch64 import emulate
    home = emulate.environment(Path(os.environ["EDGEKIT_EMULATION_CACHE"]))
    installed = dict(p.name.removesuffix(".dist-info").rsplit("-", 1) for p in (home / "site").glob("*.dist-info"))
    installed = {name.lower().replace("_", "-"): version for name, version in installed.items()}
    for pin in emulate.wheels():
        name, version = pin.split("==")
        assert installed[name.lower()] == version, pin
