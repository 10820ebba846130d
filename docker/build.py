#!/usr/bin/env python3
"""Build edgekit's container images: the runtime image (linux/amd64, linux/arm64) and the toolchain
image (linux/amd64). `make images` runs `build.py all --base local`.

    python docker/build.py runtime [--platform linux/arm64] [--base IMAGE|local] [--wheels DIR]
    python docker/build.py toolchain [--base IMAGE|local] [--pip-ca FILE]
    python docker/build.py prepare        # cache what an offline runtime build needs (make setup)

Builder: `docker buildx` when it answers, else `buildah` (no daemon; chroot isolation unless
BUILDAH_ISOLATION says otherwise; buildah's own storage and driver, STORAGE_DRIVER=vfs where
overlayfs cannot be mounted).
Base: an image name (default python:3.11-slim-bookworm), or `local`: Debian bookworm minbase with
Debian's python3 (3.11), made with debootstrap and cached in ~/.cache/edgekit/images, for machines
that reach no container registry (buildah only).
With buildah, the arm64 runtime image is assembled without running arm64 code: the arm64 root
(debootstrap --foreign, every .deb unpacked with dpkg -x) plus a venv laid out from aarch64 wheels.
Each runtime image is written to dist/images/edgekit-runtime-<arch>.tar: an OCI image layout that
also carries Docker's manifest.json, so `docker load -i` reads it on old and new Docker alike.
--pip-ca (default: $PIP_CERT) is a PEM bundle for pip inside the build, for TLS-inspecting proxies.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGEKIT_IMAGE_CACHE", Path.home() / ".cache" / "edgekit" / "images"))
MIRROR = os.environ.get("EDGEKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PUBLIC_BASE = "python:3.11-slim-bookworm"
REPO = "localhost/edgekit"
ARCHES = {"linux/amd64": "amd64", "linux/arm64": "arm64"}
WHEELHOUSE = ROOT / ".wheelhouse"
AARCH64 = ["--only-binary=:all:", "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_27_aarch64",
           "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", "--implementation", "cp"]
VENV = "/opt/edgekit/venv"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Debian's python3 with venv: the local stand-in for python:3.11-slim-bookworm. Docs, man pages and
# translations are dropped, as in Debian's slim images.
BASE_PACKAGES = "python3,python3-venv"
SLIM = ("path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\n"
        "path-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n")
USER = "edgekit:x:1000:1000::/home/edgekit:/bin/sh\n"
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "toolchain", "targets", "models")  # as the Dockerfiles COPY


class BuildError(Exception):
    pass


def run(cmd: list, what: str, capture: bool = True, **kw) -> str:
    proc = subprocess.run([str(c) for c in cmd], text=True, capture_output=capture, **kw)
    if proc.returncode != 0:
        lines = [ln for ln in ((proc.stdout or "") + (proc.stderr or "")).splitlines()
                 if ln.strip() and not ln.startswith(("Error: exit status", "subprocess exited with status"))]
        raise BuildError(f"{what} failed: {(lines or ['exit code %d' % proc.returncode])[-1][:300]}")
    return proc.stdout or ""


def progress(msg: str) -> None:
    print(f"build: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- offline assets (make setup)

def pins(name: str) -> list[str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def build_requirements() -> list[str]:
    """setuptools and wheel at the lock's versions: `pip install .` in the image builds edgekit with them."""
    wanted = ("setuptools", "wheel")
    return [p for p in pins("lock.txt") if p.split("==")[0].lower() in wanted]


def local_rootfs(arch: str) -> Path:
    """A Debian bookworm minbase root with python3 as a tarball, made once and cached."""
    tarball = rootfs_path(arch)
    if tarball.exists():
        return tarball
    if os.geteuid() != 0:
        raise BuildError("making the local Debian base needs root (debootstrap); run `sudo make setup` once")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".bookworm-{arch}-", dir=CACHE))
    try:
        root = work / "root"
        progress(f"debootstrap bookworm {arch} (once, about a minute)")
        if arch == "amd64":
            run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", root, MIRROR],
                "debootstrap")
        else:  # no arm64 code can run here: unpack the packages instead of configuring them
            run(["debootstrap", "--foreign", f"--arch={arch}", "--variant=minbase", f"--include={BASE_PACKAGES}",
                 "bookworm", root, MIRROR], "debootstrap")
            for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
                run(["dpkg", "-x", deb, root], f"dpkg -x {deb.name}")
            shutil.rmtree(root / "debootstrap")
            masters = root / "usr/share/base-passwd"
            (root / "etc/passwd").write_text((masters / "passwd.master").read_text() + USER)
            (root / "etc/group").write_text((masters / "group.master").read_text() + "edgekit:x:1000:\n")
        slim(root)
        partial = work / "rootfs.tar"
        run(["tar", "--numeric-owner", "-C", root, "-cf", partial, "."], "tar")
        os.replace(partial, tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def slim(root: Path) -> None:
    """Drop docs (copyright files stay), man pages, translations and apt's caches, and keep them out of
    later installs (dpkg path-exclude), as Debian's slim images do."""
    (root / "etc/dpkg/dpkg.cfg.d/edgekit-slim").write_text(SLIM)
    for rel in ("usr/share/man", "usr/share/info", "usr/share/locale"):
        shutil.rmtree(root / rel, ignore_errors=True)
        (root / rel).mkdir()
    clutter = [*(root / "usr/share/doc").rglob("*"), *(root / "var/cache/apt/archives").glob("*.deb"),
               *(root / "var/lib/apt/lists").glob("*_*")]
    for entry in clutter:
        if (entry.is_file() or entry.is_symlink()) and entry.name != "copyright":
            entry.unlink()


def rootfs_path(arch: str) -> Path:
    key = hashlib.sha256(f"{arch} {MIRROR} {BASE_PACKAGES} {SLIM} {USER} 1".encode()).hexdigest()[:12]
    return CACHE / f"bookworm-{arch}-{key}.tar"


def wheels_stamp() -> Path:
    key = hashlib.sha256(str(pins("runtime.txt") + build_requirements()).encode()).hexdigest()[:12]
    return WHEELHOUSE / f".prepared-{key}"


def missing_offline_assets() -> list[str]:
    """What `prepare` has not cached yet (an offline build needs all of it)."""
    wanted = [*map(rootfs_path, ARCHES.values()), wheels_stamp()]
    return [str(p) for p in wanted if not p.exists()]


def prepare() -> None:
    """Everything the tests' offline image builds need: the local bases and the runtime wheels."""
    for arch in ARCHES.values():
        local_rootfs(arch)
    stamp = wheels_stamp()
    if stamp.exists():
        return
    progress("downloading the runtime wheels (amd64 and aarch64) into .wheelhouse")
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
    run([*pip, "-d", WHEELHOUSE, "-r", ROOT / "requirements/runtime.txt", *build_requirements()], "pip download")
    run([*pip, *AARCH64, "-d", WHEELHOUSE / "aarch64", "-r", ROOT / "requirements/runtime.txt"],
        "pip download (aarch64)")
    stamp.touch()


# ---------------------------------------------------------------- builders

def overlay_mounts(where: Path) -> bool:
    """Whether overlayfs mounts here (as root). vfs works everywhere but copies every layer in full."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        lower, upper, work, merged = (Path(tmp) / n for n in ("lower", "upper", "work", "merged"))
        for d in (lower, upper, work, merged):
            d.mkdir()
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, merged], capture_output=True).returncode:
            return False
        subprocess.run(["umount", merged], capture_output=True)
        return True


class Buildah:
    """buildah with chroot isolation: works as root in a container, without a daemon."""
    name = "buildah"

    def __init__(self, storage: Path | None = None):
        """storage: a private storage folder (the tests', driver probed here); None is buildah's own
        storage with the driver its configuration names (STORAGE_DRIVER overrides)."""
        self.options = []
        if storage:
            if not os.environ.get("STORAGE_DRIVER"):
                self.options += ["--storage-driver", "overlay" if overlay_mounts(storage) else "vfs"]
            self.options += ["--root", storage / "root", "--runroot", storage / "run"]
        self.isolation = [] if os.environ.get("BUILDAH_ISOLATION") else ["--isolation", "chroot"]

    def __call__(self, *args, what: str | None = None, capture: bool = True) -> str:
        return run(["buildah", *self.options, *args], what or f"buildah {args[0]}", capture=capture).strip()

    def exists(self, image: str) -> bool:
        return subprocess.run(["buildah", *map(str, self.options), "inspect", "--type", "image", image],
                              capture_output=True).returncode == 0

    def local_base(self, arch: str) -> str:
        """The cached Debian root as an image (FROM scratch + ADD rootfs.tar /)."""
        tarball = local_rootfs(arch)
        image = f"{REPO}-base:{tarball.stem}"
        if not self.exists(image):
            ctr = self("from", "--arch", arch, "--os", "linux", "scratch")
            self("add", ctr, tarball, "/")
            self("config", "--arch", arch, "--os", "linux", "--env", f"PATH={PATH.split(':', 1)[1]}",
                 "--cmd", "/bin/bash", ctr)
            self("commit", "--rm", ctr, image)
        return image

    def build(self, dockerfile: str, platform: str, tag: str, base: str, pip_ca: Path | None,
              wheels: Path | None) -> str:
        args = ["bud", *self.isolation, "--platform", platform, "-f", ROOT / "docker" / dockerfile, "-t", tag,
                "--build-arg", f"BASE={base}"]
        if pip_ca:
            args += ["--secret", f"id=pip-ca,src={pip_ca}"]
        if wheels:  # offline: pip reads only this folder
            args += ["--volume", f"{wheels}:/wheels:ro", "--build-arg", "PIP_NO_INDEX=1",
                     "--build-arg", "PIP_FIND_LINKS=/wheels"]
        self(*args, ROOT, what=f"building {dockerfile} for {platform}", capture=False)
        return tag

    def assemble_arm64(self, tag: str, wheels: Path) -> str:
        """The runtime image for arm64 without running arm64 code: base root + a venv of aarch64 wheels."""
        base = self.local_base("arm64")
        with tempfile.TemporaryDirectory(prefix="edgekit-arm64-") as tmp:
            stage = Path(tmp) / "stage"
            venv_layout(stage / VENV.lstrip("/"), wheels, Path(tmp) / "dist")
            ctr = self("from", "--arch", "arm64", "--os", "linux", base)
            try:
                self("add", ctr, stage, "/")
                home = Path(tmp) / "home"
                home.mkdir()
                self("add", "--chown", "1000:1000", ctr, home, "/home/edgekit")
                self("add", ctr, home, "/work")
                self("config", "--arch", "arm64", "--os", "linux", "--env", f"PATH={PATH}", "--env",
                     "HOME=/home/edgekit", "--user", "1000", "--workingdir", "/work", "--entrypoint", '["edgekit"]',
                     "--cmd", '["bench", "--help"]', ctr)
                self("commit", ctr, tag)
            finally:
                self("rm", ctr)
        return tag

    def size(self, image: str) -> int:
        """Bytes of the image's uncompressed layers (what `docker images` shows)."""
        manifest = json.loads(json.loads(self("inspect", "--type", "image", image))["Manifest"])
        return sum(layer["size"] for layer in manifest["layers"])

    def archive(self, image: str, name: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        self("push", image, f"oci-archive:{partial}:{name}", what="writing the OCI archive")
        add_docker_manifest(partial, name)
        verify_archive(partial)
        os.replace(partial, path)
        return path


class Buildx:
    """docker buildx: the Dockerfiles as written, arm64 through the machine's QEMU binfmt emulation."""
    name = "docker buildx"

    def build(self, dockerfile: str, platform: str, tag: str, base: str, pip_ca: Path | None,
              wheels: Path | None) -> str:
        if wheels:
            raise BuildError("--wheels needs buildah (docker build cannot mount a wheel folder)")
        args = ["docker", "buildx", "build", "--load", "--platform", platform, "-f", ROOT / "docker" / dockerfile,
                "-t", tag, "--build-arg", f"BASE={base}"]
        if pip_ca:
            args += ["--secret", f"id=pip-ca,src={pip_ca}"]
        run([*args, ROOT], f"building {dockerfile} for {platform}", capture=False)
        return tag

    def size(self, image: str) -> int:
        return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image], "docker image inspect"))

    def archive(self, image: str, name: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        run(["docker", "tag", image, name], "docker tag")
        run(["docker", "save", "-o", path, name], "docker save")
        return path


def builder():
    docker = shutil.which("docker")
    if docker and all(subprocess.run([docker, *a], capture_output=True).returncode == 0
                      for a in (["buildx", "version"], ["info"])):
        return Buildx()
    if shutil.which("buildah"):
        return Buildah()
    raise BuildError("no image builder: install docker with buildx, or buildah (Debian: apt-get install buildah)")


# ---------------------------------------------------------------- image contents

def venv_layout(venv: Path, wheels: Path, dist: Path) -> None:
    """A venv over Debian's /usr/bin/python3.11 holding requirements/runtime.txt and edgekit, all installed
    from aarch64 wheels by the host's pip (pip --target with a foreign --platform runs no code)."""
    source = dist / "src"  # what the Dockerfile COPYs, so no stale build/ of the checkout leaks in
    source.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, source],
        "building the edgekit wheel")
    site = venv / "lib" / "python3.11" / "site-packages"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links", wheels,
         "--find-links", dist, *AARCH64, "--target", site, "-r", ROOT / "requirements/runtime.txt",
         "edgekit-toolchain"], "pip install --target (aarch64)")
    shutil.rmtree(site / "bin", ignore_errors=True)  # scripts written for this host's python
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n")
    bin_dir = venv / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to("/usr/bin/python3.11")
    (bin_dir / "python").symlink_to("python3")
    script = bin_dir / "edgekit"
    script.write_text(f"#!{VENV}/bin/python3\nimport sys\nfrom edgekit.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)


def add_docker_manifest(archive: Path, name: str) -> None:
    """Append Docker's manifest.json (the `docker save` index) to an OCI layout tarball, pointing at
    the same blobs: Docker before 25 reads only that, Docker 25+ and podman read either."""
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest = json.load(tar.extractfile(blob_path(index["manifests"][0])))
    entry = [{"Config": blob_path(manifest["config"]), "RepoTags": [name],
              "Layers": [blob_path(layer) for layer in manifest["layers"]]}]
    data = json.dumps(entry).encode()
    info = tarfile.TarInfo("manifest.json")
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    with tarfile.open(archive, "a") as tar:
        tar.addfile(info, io.BytesIO(data))


def blob_path(descriptor: dict) -> str:
    return "blobs/sha256/" + descriptor["digest"].split(":")[1]


def verify_archive(archive: Path) -> dict:
    """Read the archive as `docker load` does (manifest.json) and as OCI tools do (index.json): both
    name the same config and layers, every blob matches its digest, and every layer unpacks to the
    diff_id the config records. Returns the image config."""
    with tarfile.open(archive) as tar:
        def blob(path: str) -> bytes:
            data = tar.extractfile(path).read()
            if path.startswith("blobs/sha256/") and hashlib.sha256(data).hexdigest() != path.rsplit("/", 1)[1]:
                raise BuildError(f"{archive.name}: {path} does not match its digest")
            return data
        manifest = json.loads(blob(blob_path(json.loads(blob("index.json"))["manifests"][0])))
        docker = json.loads(blob("manifest.json"))[0]
        if docker["Config"] != blob_path(manifest["config"]) or docker["Layers"] != list(map(blob_path, manifest["layers"])):
            raise BuildError(f"{archive.name}: manifest.json and index.json name different blobs")
        config = json.loads(blob(docker["Config"]))
        for path, diff_id in zip(docker["Layers"], config["rootfs"]["diff_ids"], strict=True):
            data = blob(path)
            unpacked = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            if "sha256:" + hashlib.sha256(unpacked).hexdigest() != diff_id:
                raise BuildError(f"{archive.name}: layer {path} does not unpack to its diff_id")
    return config


# ---------------------------------------------------------------- the commands

def build_runtime(b, platform: str, base: str, pip_ca: Path | None = None, wheels: Path | None = None) -> str:
    arch = ARCHES[platform]
    tag = f"{REPO}:runtime-{arch}"
    if isinstance(b, Buildah) and arch != "amd64":
        return b.assemble_arm64(tag, wheels or WHEELHOUSE / "aarch64")
    if base == "local":
        if not isinstance(b, Buildah):
            raise BuildError("--base local needs buildah; with docker, build from a registry image")
        base = b.local_base(arch)
    return b.build("Dockerfile.runtime", platform, tag, base, pip_ca, wheels)


def build_toolchain(b, base: str, pip_ca: Path | None = None) -> str:
    if base == "local":
        if not isinstance(b, Buildah):
            raise BuildError("--base local needs buildah; with docker, build from a registry image")
        base = b.local_base("amd64")
    return b.build("Dockerfile.toolchain", "linux/amd64", f"{REPO}:toolchain", base, pip_ca, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker/build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["runtime", "toolchain", "all", "prepare"])
    parser.add_argument("--platform", action="append", choices=list(ARCHES),
                        help="runtime platforms (repeatable; default both)")
    parser.add_argument("--base", default=PUBLIC_BASE, help=f"base image, or `local` (default {PUBLIC_BASE})")
    parser.add_argument("--pip-ca", type=Path, default=os.environ.get("PIP_CERT") or None,
                        help="PEM bundle pip trusts inside the build (default: $PIP_CERT)")
    parser.add_argument("--wheels", type=Path, help="install the runtime image offline from this wheel folder")
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "images", help="where the archives go")
    args = parser.parse_args(argv)
    try:
        if args.what == "prepare":
            prepare()
            return 0
        b = builder()
        progress(f"builder: {b.name}")
        rows = []
        if args.what in ("runtime", "all"):
            for platform in args.platform or list(ARCHES):
                start = time.monotonic()
                image = build_runtime(b, platform, args.base, args.pip_ca, args.wheels)
                archive = b.archive(image, "edgekit:runtime", args.out / f"edgekit-runtime-{ARCHES[platform]}.tar")
                rows.append((image, platform, b.size(image), time.monotonic() - start, archive))
        if args.what in ("toolchain", "all"):
            start = time.monotonic()
            image = build_toolchain(b, args.base, args.pip_ca)
            rows.append((image, "linux/amd64", b.size(image), time.monotonic() - start, None))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for image, platform, size, seconds, archive in rows:
        extra = f"  archive {archive} ({archive.stat().st_size / 2**20:.0f} MiB)" if archive else ""
        print(f"{image}  {platform}  {size / 2**20:.0f} MiB  built in {seconds:.0f} s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
