"""The backend contract: what a module `edgekit.backends.<format>` (or a plug-in named in
$EDGEKIT_BACKENDS) must define. `backends.get()` checks a module against it when it loads.

Module top levels import only numpy and the standard library, so the device runner stays light:
runtimes are imported when a Session is made, converters inside export()/quantize().
Capabilities a format lacks are set to None (e.g. `load_source = None`: not an input kind).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np


class Session(Protocol):
    """A loaded artifact. `inputs` lists (name, shape, dtype)."""
    inputs: list[tuple[str, tuple[int, ...], str]]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...
    def bind(self, arrays: list[np.ndarray]) -> None: ...   # stage inputs once, then time invoke()
    def invoke(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    FORMAT: str                 # the format name, also the module name
    SUFFIX: str                 # the artifact's main file suffix, e.g. ".onnx"
    RUNTIME: str                # the package that runs it (for messages)
    EXTRA: str                  # the pip extra that installs the runtime
    SOURCES: Sequence[str]      # input kinds export() converts from
    PRECISIONS: Sequence[str]   # precisions quantize() implements besides fp32
    CALIB_METHODS: Sequence[str]  # calibration methods quantize() implements; others fall back to minmax

    Session: Callable[..., Session]  # Session(path, threads=1, device="cpu")

    def files(self, path: Path) -> list[Path]: ...          # every file of the artifact (for size)
    def runtime_version(self) -> str: ...
    def export(self, source: Any, out_path: Path, ctx: Any) -> list[str]: ...  # fp32 artifact; returns notes
    # quantize(source, float_artifact, out_path, config, calib, method) -> notes; None: fp32 only
    quantize: Callable[..., list[str]] | None
    # op_summary(path) -> {"integer": n, "total": m, ...} from the runtime's view; None: not counted
    op_summary: Callable[[Path], dict] | None
    # gpu_name() -> the GPU the runtime sees, or None; None as the attribute: CPU only
    gpu_name: Callable[[], str | None] | None
    # load_source(path, load_options) -> sources.Source; None: not an input kind
    load_source: Callable[..., Any] | None
    # detect(path, head_bytes) -> bool: is this file an input of this kind (plug-ins); None: sources decides
    detect: Callable[[Path, bytes], bool] | None


MEMBERS = tuple(Backend.__annotations__) + ("files", "runtime_version", "export")


def missing_members(module) -> list[str]:
    return [name for name in MEMBERS if not hasattr(module, name)]
