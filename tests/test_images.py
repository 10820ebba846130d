"""The runtime image, built and run (buildah, no Docker daemon needed).

- linux/amd64: docker/Dockerfile.runtime built on the local Debian base, offline from .wheelhouse;
  `edgekit bench` and the runner run inside it (`buildah run`) on a TFLite and an ONNX artifact
  mounted in, and their outputs are compared with the host runner's.
- linux/arm64: assembled from aarch64 wheels without running arm64 code, written as the archive a
  board would `docker load`, read back from that archive, and run under QEMU on its own root:
  parity with the host only, never a latency.

The Debian bases and the wheels come from `make setup` (`docker/build.py prepare`). Images live in
a private vfs storage under the test's temp dir, removed at the end (vfs keeps full copies).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("edgekit_image_build", ROOT / "docker" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

BUDGET_MIB = 400  # each runtime image, uncompressed
SAMPLE_SHAPES = {"tflite": (8, 8, 1), "onnx": (3, 16, 16)}  # conftest's tiny NHWC Keras CNN and NCHW ONNX model
FORMATS = tuple(SAMPLE_SHAPES)


def storage(tmp_path_factory, name: str):
    assert shutil.which("buildah") and shutil.which("qemu-aarch64-static"), "buildah/QEMU missing: run `make setup`"
    assert not build.missing_offline_assets(), f"not cached: {build.missing_offline_assets()}; run `make setup`"
    return build.Buildah(tmp_path_factory.mktemp(name))


def drop(b) -> None:
    for args in (["rm", "--all"], ["rmi", "--all", "--force"]):
        subprocess.run(["buildah", *map(str, b.options), *args], capture_output=True)
    shutil.rmtree(b.options[b.options.index("--root") + 1].parent, ignore_errors=True)


def test_arm64_assembly_installs_what_the_dockerfile_copies():
    import re
    copied = re.findall(r"^COPY (.+) \S+$", (ROOT / "docker" / "Dockerfile.runtime").read_text(), re.MULTILINE)
    sources = {name for line in copied for name in line.split() if not name.startswith("requirements/")}
    assert sources == set(build.SOURCES)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, make_model):
    """A TFLite and an ONNX model (the suite's tiny ones), inputs for each, and the host runner's outputs."""
    data = tmp_path_factory.mktemp("artifacts")
    data.chmod(0o755)  # mounted into the image, which runs as uid 1000
    rng = np.random.default_rng(0)
    for fmt, shape in SAMPLE_SHAPES.items():
        shutil.copy(make_model(fmt), data / f"model.{fmt}")
        np.savez(data / f"in-{fmt}.npz", in0=rng.random((4, 1, *shape), dtype=np.float32))
        runner(sys.executable, data / f"model.{fmt}", data / f"in-{fmt}.npz", data / f"host-{fmt}.npz")
    return data


def runner(python, model, inputs, outputs, prefix=(), **kw) -> subprocess.CompletedProcess:
    cmd = [*prefix, str(python), "-m", "edgekit.runner", str(model), "--inputs", str(inputs), "--outputs", str(outputs),
           "--json", str(Path(outputs).with_suffix(".json")), "--runs", "2", "--warmup", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def amd64(tmp_path_factory):
    """The amd64 runtime image built from the Dockerfile, and one container of it."""
    b = storage(tmp_path_factory, "buildah-amd64")
    try:
        image = build.build_runtime(b, "linux/amd64", "local", wheels=build.WHEELHOUSE)
        yield b, image, b("from", image)
    finally:
        drop(b)


def run_in(b, ctr, data: Path, out: Path, *cmd: str) -> str:
    return b("run", *b.isolation, "-v", f"{data}:/data:ro", "-v", f"{out}:/out", ctr, "--", *cmd)


def test_amd64_runtime_image_benchmarks_with_host_parity(amd64, artifacts, tmp_path):
    b, _, ctr = amd64
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image runs as uid 1000
    for fmt in FORMATS:
        run_in(b, ctr, artifacts, out, "python", "-m", "edgekit.runner", f"/data/model.{fmt}", "--inputs", f"/data/in-{fmt}.npz",
               "--outputs", f"/out/{fmt}.npz", "--runs", "2", "--warmup", "0")
        image_out, host_out = np.load(out / f"{fmt}.npz"), np.load(artifacts / f"host-{fmt}.npz")
        assert image_out["out0"].shape == host_out["out0"].shape and image_out["out0"].shape[0] == 4
        np.testing.assert_allclose(image_out["out0"], host_out["out0"], rtol=1e-6, atol=1e-7)
        result = json.loads(run_in(b, ctr, artifacts, out, "edgekit", "bench", f"/data/model.{fmt}", "--inputs",
                                   f"/data/in-{fmt}.npz", "--runs", "5", "--warmup", "1", "--processes", "1", "--json"))
        assert result["runtime"]["name"] == {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}[fmt]
        assert result["host"]["machine"] == "x86_64" and result["latency_ms"]["median"] > 0


def test_amd64_runtime_image_has_no_tensorflow_and_fits_its_budget(amd64, tmp_path):
    b, image, ctr = amd64
    probe = ("import importlib.util as u, os; "
             "print(os.getuid(), [m for m in ('tensorflow', 'keras', 'onnx', 'tf2onnx') if u.find_spec(m)])")
    assert run_in(b, ctr, tmp_path, tmp_path, "python", "-c", probe) == "1000 []"
    config = json.loads(b("inspect", "--type", "image", image))["OCIv1"]
    assert config["architecture"] == "amd64" and config["config"]["Entrypoint"] == ["edgekit"]
    size = b.size(image) / 2**20
    print(f"runtime image linux/amd64: {size:.0f} MiB uncompressed")
    assert size <= BUDGET_MIB, f"runtime image is {size:.0f} MiB, over its {BUDGET_MIB} MiB budget"


@pytest.fixture(scope="module")
def arm64_root(tmp_path_factory):
    """The arm64 runtime image: assembled, written as the archive a board loads (read back and checked
    by `verify_archive`), and mounted; the container layer gets the /proc/cpuinfo and /sys cpu files
    a board's kernel provides and QEMU does not."""
    b = storage(tmp_path_factory, "buildah-arm64")
    try:
        image = build.build_runtime(b, "linux/arm64", "local")
        archive = b.archive(image, "edgekit:runtime", tmp_path_factory.mktemp("dist") / "edgekit-runtime-arm64.tar")
        mount = Path(b("mount", b("from", image)))
        (mount / "proc").mkdir(exist_ok=True)
        (mount / "proc" / "cpuinfo").write_text(_emulate()._CPUINFO)
        cpus = mount / "sys/devices/system/cpu"
        cpus.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present", "online"):
            (cpus / name).write_text("0-1\n")
        yield mount, build.verify_archive(archive), b.size(image), archive
    finally:
        drop(b)


def _emulate():
    from edgekit.probes.aarch64 import emulate
    return emulate


def qemu(mount: Path) -> list[str]:
    """The image's venv python, run by QEMU with the image root as its / (argv[0] finds the venv)."""
    return ["qemu-aarch64-static", "-cpu", _emulate().CPU, "-L", str(mount), "-0", f"{build.VENV}/bin/python3",
            str(mount / "usr/bin/python3.11")]


def test_arm64_runtime_image_runs_under_qemu_with_host_parity(arm64_root, artifacts, tmp_path):
    mount, config, size, archive = arm64_root
    assert config["architecture"] == "arm64" and config["config"]["Entrypoint"] == ["edgekit"]
    assert config["config"]["User"] == "1000"
    print(f"runtime image linux/arm64: {size / 2**20:.0f} MiB uncompressed, archive {archive.stat().st_size / 2**20:.0f} MiB")
    assert size / 2**20 <= BUDGET_MIB
    assert not list((mount / build.VENV.lstrip("/")).rglob("tensorflow"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for fmt in FORMATS:
        cmd = [*qemu(mount), "-m", "edgekit.runner", str(artifacts / f"model.{fmt}"), "--inputs", str(artifacts / f"in-{fmt}.npz"),
               "--outputs", str(tmp_path / f"{fmt}.npz"), "--json", str(tmp_path / f"{fmt}.json"), "--runs", "1",
               "--warmup", "0"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        emulated, host = np.load(tmp_path / f"{fmt}.npz")["out0"], np.load(artifacts / f"host-{fmt}.npz")["out0"]
        np.testing.assert_allclose(emulated, host, rtol=1e-4, atol=1e-5)
        assert (emulated.argmax(-1) == host.argmax(-1)).all()
        assert json.loads((tmp_path / f"{fmt}.json").read_text())["host"]["machine"] == "aarch64"
    # The image's entry point, as `docker run edgekit:runtime bench ...` starts it on a board. Only its
    # help here: bench starts runner processes, and QEMU user mode without binfmt cannot exec them.
    proc = subprocess.run([*qemu(mount), f"{build.VENV}/bin/edgekit", "bench", "--help"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "Usage: edgekit bench" in proc.stdout, proc.stderr[-2000:]
