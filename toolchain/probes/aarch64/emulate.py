"""Run artifacts on the aarch64 builds of their runtimes, under QEMU user-mode emulation.

This proves that an artifact loads and computes the same answers on ARM. It says nothing about
an ARM board's speed, so no latency from here is ever reported.

The aarch64 environment is provisioned once and cached (`$EDGEKIT_CACHE/aarch64-<key>`):
  root/   a Debian bookworm arm64 minbase (debootstrap --download-only, unpacked with dpkg -x) for
          the loader, libc and python3.11, plus /proc/cpuinfo and /sys/devices/system/cpu/*
          describing Cortex-A72 cores (without them LiteRT and onnxruntime crash at start-up)
  site/   the aarch64 wheels of numpy and of the same runtime versions as this host
  pkg/    the edgekit package (the runner is pure Python)
Needs `qemu-aarch64-static` and `debootstrap` (Debian packages qemu-user-static, debootstrap;
`make setup` installs them).
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from ... import children
from ...errors import ConversionError
from ...measure import EMULATED, how

RUNTIMES = {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}  # formats that run under emulation
MIRROR = os.environ.get("EDGEKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CPU = "cortex-a72"
HOW = how(EMULATED, "QEMU user mode, cortex-a72; runtimes' aarch64 wheels")
_CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                   f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
                   f"CPU revision\t: 3\n\n" for i in range(2))


def missing_tools() -> list[str]:
    return [t for t in ("qemu-aarch64-static", "debootstrap", "dpkg") if shutil.which(t) is None]


def wheels() -> list[str]:
    """numpy and the runtimes, at the versions of requirements/runtime.txt (the runtime image's pins)
    where the source tree is there, else at the versions installed on this host."""
    pins = Path(__file__).resolve().parents[3] / "requirements" / "runtime.txt"
    wanted = ("numpy", *RUNTIMES.values())
    if pins.is_file():
        lines = [ln.split("#")[0].strip() for ln in pins.read_text().splitlines()]
        found = [ln for ln in lines if ln.split("==")[0].lower() in wanted]
        if len(found) == len(wanted):
            return found
    return [f"{name}=={metadata.version(name)}" for name in wanted]


def environment(cache: Path, progress=lambda msg: None) -> Path:
    """The provisioned aarch64 environment (built on first use, then reused)."""
    key = hashlib.sha256(" ".join([*wheels(), MIRROR, _CPUINFO]).encode()).hexdigest()[:12]
    home = cache / f"aarch64-{key}"
    if (home / "ready").exists():
        return home
    if missing_tools():
        raise ConversionError(f"aarch64 emulation needs {', '.join(missing_tools())} (Debian: qemu-user-static, "
                              "debootstrap); run `make setup` or apt-get install them")
    cache.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".aarch64-{key}-", dir=cache))
    try:
        progress("provisioning the aarch64 environment (once; about a minute)")
        _root(build / "root")
        _site(build / "site")
        os.replace(build, home)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    (home / "ready").write_text(" ".join(wheels()) + "\n")
    return home


def _root(root: Path) -> None:
    # --download-only: no root, no device nodes (so it works inside containers); the packages are
    # unpacked below, never configured (that would run arm64 code).
    _run(["debootstrap", "--download-only", "--arch=arm64", "--variant=minbase", "--include=python3", "bookworm",
          str(root), MIRROR], "debootstrap")
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(root)], "dpkg -x")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text(_CPUINFO)
    cpus = root / "sys/devices/system/cpu"
    cpus.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text("0-1\n")


def _site(site: Path) -> None:
    downloads = site.parent / "wheels"
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--platform", "manylinux2014_aarch64",
          "--platform", "manylinux_2_27_aarch64", "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
          "--implementation", "cp", "-d", str(downloads), *wheels()], "pip download")
    for wheel in sorted(downloads.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    shutil.rmtree(downloads)


def _run(cmd: list[str], what: str) -> None:
    cmd, env, cwd = children.safe_python(cmd)  # `python -m pip`: nothing imported from the cwd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConversionError(f"provisioning the aarch64 environment failed at {what}: {tail[0][:200]}")


def python(home: Path) -> tuple[list[str], dict]:
    """The command and environment that start the emulated aarch64 Python with edgekit importable."""
    here = Path(__file__).resolve().parents[2]  # the edgekit package
    # One link per edgekit installation: a cache shared by several (checkouts, a container with the
    # host's cache mounted) must not run another installation's code.
    pkg = home / "pkg" / hashlib.sha256(str(here).encode()).hexdigest()[:12]
    link = pkg / "edgekit"
    if not link.is_symlink():
        pkg.mkdir(parents=True, exist_ok=True)
        staged = pkg / f".edgekit-{os.getpid()}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(here)
        os.replace(staged, link)
    root = home / "root"
    env = {"PYTHONPATH": f"{home / 'site'}:{pkg}", "PYTHONNOUSERSITE": "1"}
    env["PYTHONSAFEPATH"] = "1"  # and -P: nothing imported from the working directory
    return ["qemu-aarch64-static", "-cpu", CPU, "-L", str(root), str(root / "usr/bin/python3.11"), "-P"], env


def write_launcher(home: Path, path: Path) -> Path:
    """A shell script that behaves like `python3` on an aarch64 device (for remote runs against emulation)."""
    command, env = python(home)
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    path.write_text(f"#!/bin/sh\n{exports}exec {' '.join(map(shlex.quote, command))} \"$@\"\n")
    path.chmod(0o755)
    return path


def run(home: Path, artifact: Path, inputs: Path, outputs: Path, timeout: int = 1200) -> dict:
    """Run the light runner on `artifact` under emulation; returns its JSON (latency not to be reported)."""
    result = outputs.with_suffix(".json")
    command, env = python(home)
    from ...runner import invoke
    return invoke(artifact.resolve(), result.resolve(), python=tuple(command), runs=1, warmup=0, inputs=inputs.resolve(),
                  outputs=outputs.resolve(), env={"PATH": os.environ.get("PATH", ""), **env}, timeout=timeout,
                  what="the emulated aarch64 run")

