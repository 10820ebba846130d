"""Where edgekit writes, and what it may replace: only what it created itself.

Every command that writes a directory goes through here:

    check(out, inputs, force)      refuse a destination that would put the user's files at risk
    with staging(out) as stage:    a fresh directory beside `out` (same file system)
        ... write into stage ...
        commit(stage, out, "convert")   marker file in, then rename into place; the old output
                                        (one of ours) is removed only once the new one is there

A failure or an interrupt anywhere before commit() removes the staging directory and leaves the
previous output as it was. Scratch directories (`tempdir`), staging directories and the old
output being replaced carry a marker file, `.edgekit-scratch.json` (host, pid, that process's start
time, uid), written when they are made. `sweep` removes a leftover of a killed run (SIGKILL) only
when that marker is there, is ours (same host and uid, a regular file in a directory we own) and
its process is gone: a name that merely looks like edgekit's is never enough.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import EdgekitError

MARKER = ".edgekit-output.json"
MARKER_SCHEMA = "edgekit.output/1"
SCRATCH = ".edgekit-scratch.json"
SCRATCH_SCHEMA = "edgekit.scratch/1"
_CANDIDATE = re.compile(r"^edgekit-|^\..*\.edgekit-(?:partial|old)-")  # only a pre-filter: the marker decides


def owned(path: Path) -> bool:
    """A directory edgekit wrote: it carries the marker (a regular file with our schema)."""
    marker = Path(path) / MARKER
    if marker.is_symlink() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("schema") == MARKER_SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def _protected(inputs) -> list[tuple[Path, str]]:
    places = [(Path(p), "the input") for p in inputs if p is not None]
    places += [(Path.cwd(), "the current directory"), (Path.home(), "your home directory")]
    return [(p.resolve(), what) for p, what in places]


def check(out: Path, inputs=(), force: bool = False, resume: str | None = None) -> str:
    """Is `out` a safe destination? Returns "new", "replace" or "resume"; raises a one-line error.

    `resume`: the command whose own earlier output may be reused without --force (tune)."""
    out = Path(out)
    if out.is_symlink():
        raise EdgekitError(f"--out {out} is a symbolic link", "give a real directory path")
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"--out {out} is an existing file, not a directory", "choose a new directory for --out")
    real = out.resolve()
    for place, what in _protected(inputs):
        if real == place or real in place.parents:
            relation = "is" if real == place else "contains"
            raise EdgekitError(f"--out {out} {relation} {what} ({place}); edgekit will not write over it",
                               "choose a new directory for --out, e.g. ./edgekit-out/NAME")
        if what == "the input" and place in real.parents:
            raise EdgekitError(f"--out {out} is inside the input {place}", "choose a directory outside the input")
    writable(out)
    if not out.exists() or not any(out.iterdir()):
        return "new"
    if not owned(out):
        raise EdgekitError(f"{out} exists and was not written by edgekit (no {MARKER}); edgekit only replaces "
                           "its own output", "choose another --out, or empty or remove that directory yourself")
    if resume and _marker(out).get("command") == resume and not force:
        return "resume"
    if not force:
        raise EdgekitError(f"output directory {out} already exists", "pass --force to replace it, or choose --out")
    return "replace"


def _marker(path: Path) -> dict:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_marker(directory: Path, command: str) -> None:
    from . import __version__
    (directory / MARKER).write_text(json.dumps({
        "schema": MARKER_SCHEMA, "command": command, "edgekit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "note": "written by edgekit: `--force` may replace this directory"}, indent=2) + "\n")


def _tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"


@contextmanager
def staging(out: Path):
    """A fresh directory beside `out`, removed on any exit that did not commit() it."""
    out = Path(out)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    stage = out.parent / f".{out.name}.edgekit-partial-{_tag()}"
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            stage.mkdir()
        except OSError as exc:
            raise EdgekitError(f"cannot write --out {out}: {exc.strerror or exc}",
                               "choose a location you can write to") from None
        claim(stage)
        sweep(out.parent)
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for parent in created:  # directories made only to hold the output go again if it never came
            try:
                parent.rmdir()
            except OSError:
                break


def commit(stage: Path, out: Path, command: str) -> None:
    """Mark the finished staging directory as ours and swap it into place."""
    write_marker(stage, command)
    old = None
    if out.exists():
        if any(out.iterdir()) and not owned(out):  # checked at the start; re-checked in case it changed since
            raise EdgekitError(f"{out} was changed by someone else during the run", "choose another --out")
        old = out.with_name(f".{out.name}.edgekit-old-{_tag()}")
        os.replace(out, old)
        claim(old)  # a kill before the rmtree below leaves it to the next sweep
    (stage / SCRATCH).unlink(missing_ok=True)
    os.replace(stage, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def writable(path: Path) -> None:
    """Refuse, before any work, a destination whose nearest existing parent cannot be written."""
    parent = Path(path).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise EdgekitError(f"cannot write {path}: {parent} is not a writable directory",
                           "choose a location you can write to")


def write_file(path: Path, text: str, inputs=(), force: bool = False) -> None:
    """One output file (an HTML report, tune.json), written beside itself and renamed. Never over an
    input (`inputs`: files and directories read); an existing file is replaced only with `force`."""
    path = Path(path)
    if path.is_symlink() or path.is_dir():
        raise EdgekitError(f"{path} is a {'symbolic link' if path.is_symlink() else 'directory'}",
                           "give a file path to write to")
    real = path.resolve()
    for place, what in _protected(inputs):
        if real == place:
            raise EdgekitError(f"{path} is {what}; edgekit will not write over it", "choose another file name")
    if path.exists() and not force:
        raise EdgekitError(f"{path} already exists", "pass --force to replace it, or choose another file name")
    writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stage = path.with_name(f".{path.name}.edgekit-partial-{_tag()}")
        stage.mkdir()
    except OSError as exc:
        raise EdgekitError(f"cannot write {path}: {exc.strerror or exc}", "choose a location you can write to")
    try:
        claim(stage)
        (stage / path.name).write_text(text, encoding="utf-8")
        os.replace(stage / path.name, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def tempdir(prefix: str = ""):
    """A scratch directory in $TMPDIR carrying our scratch marker (stale ones are swept)."""
    base = Path(tempfile.gettempdir())
    sweep(base)
    path = Path(tempfile.mkdtemp(prefix=f"edgekit-{os.getpid()}-{int(time.time())}-{prefix}", dir=base))
    try:
        claim(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def claim(directory: Path) -> None:
    """Mark a scratch directory as this process's: what sweep() checks before it removes anything."""
    (Path(directory) / SCRATCH).write_text(json.dumps({
        "schema": SCRATCH_SCHEMA, "host": socket.gethostname(), "pid": os.getpid(),
        "start": _own_start(), "uid": os.getuid(), "pidns": pid_namespace()}) + "\n", encoding="utf-8")


def pid_namespace() -> str:
    """This process's PID namespace ('pid:[4026531836]'; '' where /proc has none): a pid means a process only
    inside it (a container sharing /tmp and the host name with its host sees none of the host's pids)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


_START: dict[int, float] = {}


def _own_start() -> float:
    pid = os.getpid()
    if pid not in _START:  # per pid: a forked child has its own
        _START[pid] = process_start(pid) or time.time()
    return _START[pid]


def sweep(directory: Path) -> list[Path]:
    """Remove leftovers of edgekit runs that no longer exist (killed with SIGKILL, power loss):
    directories carrying our scratch marker whose process is gone. Nothing else, whatever its name."""
    removed = []
    try:
        entries = [e for e in Path(directory).iterdir() if _CANDIDATE.search(e.name)]
    except OSError:
        return removed
    for entry in entries:
        info = scratch_owner(entry)
        if info and stale(info["pid"], info["start"]):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def scratch_owner(entry: Path) -> dict | None:
    """The scratch marker of `entry` if it is edgekit's on this host and for this user, else None."""
    uid = os.getuid()
    try:
        if not stat.S_ISDIR(entry.lstat().st_mode) or entry.lstat().st_uid != uid:
            return None
        marker = entry / SCRATCH
        st = marker.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_size > 4096:
            return None
        info = json.loads(marker.read_text(encoding="utf-8"))
        ok = (info.get("schema") == SCRATCH_SCHEMA and info.get("host") == socket.gethostname()
              and info.get("uid") == uid and type(info.get("pid")) is int and info["pid"] > 0
              and isinstance(info.get("start"), (int, float))
              and info.get("pidns", pid_namespace()) == pid_namespace())  # another namespace's pids: not ours to judge
    except (OSError, ValueError, AttributeError):
        return None
    return info if ok else None


def stale(pid: int, created: float) -> bool:
    """The process that made a leftover is gone (or its pid now belongs to a later process)."""
    started = process_start(pid)
    return started is None or (started != 0.0 and started > created + 2)


def process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a running process, or None if there is none."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0  # running, start unknown: never stale
