"""Target profiles: TOML data files, validated on load.

Profiles are looked up in, first to last: directories given with `--targets-dir`,
directories in $EDGEKIT_TARGETS_PATH (os.pathsep-separated), then the built-in `targets/`.
A user profile with the same name as a built-in one overrides it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import backends
from .accel import AcceleratorSpec
from .data import Preprocess
from . import bounds
from .errors import EdgekitError
from . import passes
from .passes.distill import validate as validate_distill
from .schema import SchemaError, from_dict, option

ENV_VAR = "EDGEKIT_TARGETS_PATH"

# Arm Ethos-U: the accelerator configurations of Vela 5.2 and the sections of its Arm/vela.ini (probes/npu/)
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
                "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048")
SYSTEM_CONFIGS = ("Ethos_U55_Deep_Embedded", "Ethos_U55_High_End_Embedded", "Ethos_U65_Embedded", "Ethos_U65_Mid_End",
                  "Ethos_U65_High_End", "Ethos_U65_Client_Server", "Ethos_U85_SYS_Flash_Low",
                  "Ethos_U85_SYS_Flash_High", "Ethos_U85_SYS_DRAM_Low", "Ethos_U85_SYS_DRAM_Mid",
                  "Ethos_U85_SYS_DRAM_High")
MEMORY_MODES = ("Sram_Only", "Shared_Sram", "Dedicated_Sram", "Dedicated_Sram_256KB", "Dedicated_Sram_384KB",
                "Dedicated_Sram_512KB")


# What a timing on this host's CPU says about each kind of device: "device" (the device is a CPU: the host's
# figure is its latency when the architectures match), "proxy" (timed here for comparison only, and labelled
# so), "none" (not timed on the host's CPU: a GPU target's latency comes from the gpu probe, never a CPU figure).
HOST_TIMING = {"cpu": "device", "gpu": "none", "arm": "proxy", "mcu": "proxy", "fpga": "proxy", "npu": "proxy"}


@dataclass(frozen=True)
class DeviceSpec:
    kind: str = option("cpu", "Device class the profile describes.", choices=("cpu", "gpu", "arm", "mcu", "fpga", "npu"))
    arch: str = option("x86_64", "CPU architecture the artifacts run on.",
                       choices=("x86_64", "aarch64", "armv7", "armv6m", "armv8.1m"))
    description: str = option("", "Human description of the device, e.g. 'Raspberry Pi 4 (4x Cortex-A72)'.")
    cores: int = option(1, "Cores the runtime can use (device model for estimates).")
    clock_ghz: float = option(0.0, "Core clock; 0 means no device model, so no estimates.")
    fp32_macs_per_cycle: float = option(0.0, "Peak float32 multiply-accumulates per cycle per core (SIMD width x pipes).")
    int8_macs_per_cycle: float = option(0.0, "Peak int8 multiply-accumulates per cycle per core.")
    memory_gbps: float = option(0.0, "Sustained memory bandwidth in GB/s.")
    compute_efficiency: float = option(0.15, "Fraction of peak MAC rate the runtime's kernels reach (docs/COSTMODEL.md).")
    parallel_efficiency: float = option(0.4, "Speed-up each extra thread adds, as a fraction of one core.")
    op_overhead_us: float = option(2.0, "Fixed cost per op (dispatch, setup) in microseconds.")
    ram_kib: int = option(0, "RAM budget for activations in KiB; 0 means no budget.")
    flash_kib: int = option(0, "Flash/storage budget for the model in KiB; 0 means no budget.")
    runtime_ram_kib: int = option(0, "MCU: RAM the firmware needs beside the tensor arena (stack, interpreter and "
                                     "op resolver objects, HAL, I/O buffers), stated by the profile; added to the "
                                     "measured arena for the RAM verdict.")
    runtime_flash_kib: int = option(0, "MCU: flash the firmware needs beside the model array (TFLite Micro kernels, "
                                       "application), stated by the profile; added for the flash verdict.")
    gcc_flags: list[str] = option([], "MCU: arm-none-eabi-g++ flags for the core (e.g. -mcpu=cortex-m4 -mthumb); the "
                                      "C artifact is compiled with them. Empty: written, not compiled.")
    npu: str = option("", "npu: the Arm Ethos-U configuration Vela compiles for (its --accelerator-config; the "
                          "number is the MACs per cycle). Needs the `npu` extra (ethos-u-vela).",
                      choices=("", *ACCELERATORS))
    npu_system_config: str = option("", "npu: Vela system configuration (a [System_Config.*] of Vela's Arm/vela.ini): "
                                        "NPU clock and the bandwidth of each memory.", choices=("", *SYSTEM_CONFIGS))
    npu_memory_mode: str = option("", "npu: Vela memory mode (a [Memory_Mode.*] of Vela's Arm/vela.ini): where "
                                      "weights and feature maps live, and the SRAM cache size. With Shared_Sram the "
                                      "host's SRAM (`ram_kib`) holds the NPU's tensor arena and flash (`flash_kib`) "
                                      "the model.", choices=("", *MEMORY_MODES))

    def timed_on_host(self) -> bool:
        """Are this device's artifacts timed on this host's CPU (HOST_TIMING)?"""
        return HOST_TIMING[self.kind] != "none"

    def host_is_device(self, machine: str) -> bool:
        """Is a latency measured on this host (CPU architecture `machine`) the device's own?"""
        return HOST_TIMING[self.kind] == "device" and self.arch == machine


@dataclass(frozen=True)
class BuildSpec:
    formats: list[str] = option(["tflite", "onnx", "openvino"], "Artifact formats to produce.", choices=backends.available)
    batch: int = option(1, "Batch size that replaces a dynamic batch dimension.")
    input_shape: list[int] = option([], "Full input shape (batch first) replacing every dynamic dim; "
                                        "empty keeps the model's own. `--input-shape` overrides it.")
    native: list[str] = option(["bf16"], "Native precisions to try besides the target's: each one this host's CPU "
                               "runs natively gets a row of its own (OpenVINO: the fp32 IR with the run-time "
                               "precision hint), measured and verified at its own tolerance; only on cpu targets "
                               "of this host's architecture. [] for none.", choices=("bf16", "fp16"))
    max_accuracy_drop: float = option(1.0, "Accuracy points an artifact may lose against the source (with labelled "
                                            "data) and still be the report's `recommended` artifact; it must be "
                                            "verified too.")


@dataclass(frozen=True)
class BenchSpec:
    threads: int = option(1, "Inference threads for the latency runs.")
    warmup: int = option(10, "Untimed runs before timing starts.")
    runs: int = option(100, "Timed runs per runner process.")
    processes: int = option(3, "Runner processes per artifact, interleaved between the artifacts compared; "
                               "the latency is the median across them.")
    eval_samples: int = option(200, "Most samples used for fidelity and accuracy.")


HEAD = {  # sections before the passes' (name: (type, option)), in the order targets/README.md shows them
    "name": (str, option(help="Profile name, used as `--target NAME`; must match the file name.")),
    "description": (str, option("", "One line shown by `edgekit targets`.")),
    "device": (DeviceSpec, option(DeviceSpec, help="[device] table.")),
    "build": (BuildSpec, option(BuildSpec, help="[build] table.")),
}
TAIL = {  # after them
    "preprocess": (Preprocess, option(Preprocess, help="[preprocess] table: image folders given to --calib.")),
    "accelerator": (AcceleratorSpec, option(AcceleratorSpec, help="[accelerator] table: the int8 accelerator an "
                                            "fpga profile emulates (used when device.kind is fpga). In an npu profile "
                                            "only its efficiency fields count: edgekit's cycle model takes the array, "
                                            "clock and bandwidth from the Vela configuration.")),
    "bench": (BenchSpec, option(BenchSpec, help="[bench] table.")),
}


def profile_class() -> type:
    """The profile record: fixed sections, and one section `[NAME]` per pass (plug-ins included), typed by
    the pass's Config."""
    return _profile_class(tuple(passes.all_passes()))


@functools.lru_cache(maxsize=None)
def _profile_class(modules: tuple) -> type:
    sections = {p.NAME: (p.Config, option(p.Config, help=f"[{p.NAME}] table: {p.DESCRIPTION}.")) for p in modules}
    clash = sorted(set(sections) & {*HEAD, *TAIL})
    if clash:
        raise EdgekitError(f"pass {clash[0]!r} has the name of a fixed profile section", "rename the pass")
    fields = [(name, kind, f) for name, (kind, f) in {**HEAD, **sections, **TAIL}.items()]
    cls = dataclasses.make_dataclass("Profile", fields, frozen=True)
    cls.__module__ = __name__
    return cls


Profile = _profile_class(tuple(passes.builtin_passes()))  # built-in passes only: the schema targets/README.md shows


@dataclass(frozen=True)
class Target:
    profile: Any  # a profile_class() record
    path: Path

    @property
    def name(self) -> str:
        return self.profile.name


def builtin_dir() -> Path:
    return Path(str(resources.files("edgekit.profiles")))


def search_path(extra_dirs: tuple[str, ...] = ()) -> list[Path]:
    env = [d for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    dirs = [Path(d) for d in (*extra_dirs, *env)]
    for d in dirs:
        if not d.is_dir():
            raise EdgekitError(f"targets directory not found: {d}", "pass an existing directory to --targets-dir / $" + ENV_VAR)
    return [*dirs, builtin_dir()]


def load_profile(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EdgekitError(f"{path}: not UTF-8 text", "save the profile as UTF-8 TOML") from None
    except OSError as exc:
        raise EdgekitError(f"{path}: cannot be read ({exc.strerror or exc})", "check the file and its permissions") from None
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
        raise EdgekitError(f"{path}: invalid TOML ({str(exc)[:200]})", "fix the syntax; see targets/README.md") from None
    try:
        profile = from_dict(profile_class(), _aliased(data, path))
    except SchemaError as exc:
        raise EdgekitError(f"{path}: field '{exc.where}': {exc.problem}", "see targets/README.md for the schema") from None
    if profile.name != path.stem:
        raise EdgekitError(f"{path}: field 'name' is {profile.name!r} but the file is {path.name}",
                           "make the name match the file name")
    _check_numbers(profile, path)
    _check_npu(profile, path)
    _check_device_model(profile, path)
    for flag in profile.device.gcc_flags:
        why = refused_flag(flag)
        if why:
            raise EdgekitError(f"{path}: device.gcc_flags: {flag!r} is not allowed ({why})", "use only -mcpu=, "
                               "-march=, -mtune=, -mthumb, -mfpu=, -mfloat-abi=, -O* and -f* options without paths")
    try:
        validate_distill(profile.distill)
    except EdgekitError as exc:
        raise EdgekitError(f"{path}: {exc.problem}", exc.fix) from None
    return Target(profile, path)


def _aliased(data: dict, path: Path) -> dict:
    """A pass's PROFILE_ALIASES ({"quantize.mixed": "mixed.mode"}: another spelling of one of its fields, in
    another section) moved to the field they stand for; both given and different is an error."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for module in passes.all_passes():
        for alias, field in getattr(module, "PROFILE_ALIASES", {}).items():
            (a_section, a_key), (f_section, f_key) = alias.split("."), field.split(".")
            section = data.get(a_section)
            if not isinstance(section, dict) or a_key not in section:
                continue
            value = section.pop(a_key)
            target = data.setdefault(f_section, {})
            if isinstance(target, dict) and f_key in target and target[f_key] != value:
                raise EdgekitError(f"{path}: '{alias} = {value!r}' and '{field} = {target[f_key]!r}' disagree "
                                   f"('{alias}' is another spelling of '{field}')", "give one of them")
            if isinstance(target, dict):
                target[f_key] = value
    return data


def _check_numbers(p: Profile, path: Path) -> None:
    """Every number finite and within its range (bounds.RANGES); the error names the file and the field."""
    if not p.build.formats:
        raise EdgekitError(f"{path}: field 'build.formats' is empty", "list at least one format")
    for field, value in _numbers(p):
        why = bounds.out_of_range(field, value)
        if why:
            raise EdgekitError(f"{path}: field '{field}': {why}", "see targets/README.md for each field's range")


def _check_npu(p: Profile, path: Path) -> None:
    """An npu profile names its Vela configuration completely."""
    device = p.device
    missing = [f"device.{f}" for f in ("npu", "npu_system_config", "npu_memory_mode") if not getattr(device, f)]
    if device.kind == "npu" and missing:
        raise EdgekitError(f"{path}: an npu profile needs {', '.join(missing)}", "see targets/README.md and "
                                                                                  "targets/ethos-u55-128.toml")


def _check_device_model(p: Profile, path: Path) -> None:
    """A device model (clock and MAC rate) needs its memory bandwidth: the estimate divides by it."""
    if p.device.clock_ghz > 0 and p.device.fp32_macs_per_cycle > 0 and p.device.memory_gbps <= 0:
        raise EdgekitError(f"{path}: a device model (clock_ghz, fp32_macs_per_cycle) needs device.memory_gbps > 0",
                           "state the sustained memory bandwidth, or set clock_ghz = 0 for no estimates")


# Compiler flags a profile may pass to arm-none-eabi-g++: profiles are data, so nothing that runs a
# program (-wrapper, -B, -fplugin), reads or writes a named file (@file, -o, -include, -specs,
# -fprofile-*, -fdump-*) or takes a path.
_FLAG_VALUE = r"[A-Za-z0-9][A-Za-z0-9_.+,-]{0,63}"
ALLOWED_FLAGS = re.compile(rf"-m(?:cpu|arch|tune)={_FLAG_VALUE}|-mthumb|-mfpu={_FLAG_VALUE}|-mfloat-abi=(?:soft|softfp|hard)"
                           rf"|-O[0-3sgz]?|-Ofast|-f(?:no-)?[a-z0-9][a-z0-9-]{{0,63}}(?:={_FLAG_VALUE})?")
_F_REFUSED = ("plugin", "profile", "dump", "auto-profile", "debug-prefix-map", "file-prefix-map", "macro-prefix-map",
              "callgraph-info", "stack-usage", "opt-info", "record-gcc-switches", "save-optimization-record")


def refused_flag(flag: str) -> str | None:
    """Why a compiler flag from a profile is refused, or None when it is on the allow-list."""
    if not isinstance(flag, str) or not ALLOWED_FLAGS.fullmatch(flag):
        return "not on the allow-list"
    name = flag.split("=", 1)[0].removeprefix("-f").removeprefix("no-")
    if flag.startswith("-f") and name.startswith(_F_REFUSED):
        return "it reads or writes files or loads code"
    return None


def _numbers(record, prefix: str = ""):
    """(field path, value) of every number in a profile, list items included."""
    for f in dataclasses.fields(record):
        value, path = getattr(record, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, path + ".")
        elif isinstance(value, (list, tuple)):
            yield from ((path, v) for v in value)
        else:
            yield path, value

def all_targets(extra_dirs: tuple[str, ...] = (), problems: list[str] | None = None) -> dict[str, Target]:
    """Every profile on the search path. A broken one is skipped (its one-line reason goes to
    `problems`), so it never hides the others."""
    found: dict[str, Target] = {}
    for d in search_path(extra_dirs):
        for f in sorted(d.glob("*.toml")):
            if f.stem in found:
                continue
            try:
                _not_shadowing(f)
                found[f.stem] = load_profile(f)
            except EdgekitError as exc:
                if problems is not None:
                    problems.append(exc.one_line())
    return found


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def _not_shadowing(path: Path) -> None:
    """A profile outside the package may not take a built-in's name by its place on the search path."""
    builtin = builtin_dir()
    if path.parent.resolve() != builtin.resolve() and (builtin / path.name).is_file():
        raise EdgekitError(f"{path} has the name of the built-in target '{path.stem}'; edgekit will not let it "
                           "replace the built-in silently", f"rename it, or select it explicitly with --target {path}")


def get_target(name: str, extra_dirs: tuple[str, ...] = ()) -> Target:
    """A profile by name from the search path, or by path when given as a path ending in .toml."""
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise EdgekitError(f"target file not found: {name}", "check the path, or give a profile name")
        return load_profile(path)
    if not NAME.fullmatch(name):
        raise EdgekitError(f"'{name}' is not a target name", "give a name from `edgekit targets`, or a profile's "
                                                             "path ending in .toml")
    for d in search_path(extra_dirs):
        f = d / f"{name}.toml"
        if f.is_file():
            _not_shadowing(f)
            return load_profile(f)
    known = ", ".join(sorted(all_targets(extra_dirs)))
    raise EdgekitError(f"unknown target '{name}'", f"choose one of: {known} (or add {name}.toml to --targets-dir)")


def _range_note(path: str, kind: str) -> str:
    return f" Range: {bounds.describe(path)}." if ("int" in kind or "float" in kind) else ""


def schema_markdown() -> str:
    """The field table of targets/README.md, generated from the Profile declaration."""
    from .schema import describe
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{path}` | {kind} | `{default}` | {text}{_range_note(path, kind)} |"
              for path, kind, default, text in describe(Profile)]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m edgekit.targets [--update targets/README.md]
    import sys
    if sys.argv[1:2] == ["--update"]:
        readme = Path(sys.argv[2])
        text = readme.read_text()
        readme.write_text(text[: text.index("| field | type |")] + schema_markdown() + "\n")
    else:
        print(schema_markdown())
