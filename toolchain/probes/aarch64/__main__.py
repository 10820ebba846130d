"""`python -m edgekit.probes.aarch64`: provision the cached emulated aarch64 environment now (make setup)."""
import os
from pathlib import Path

from ...context import cache_dir
from .emulate import environment

print(environment(Path(os.environ.get("EDGEKIT_EMULATION_CACHE", cache_dir() / "emulation")), print))
