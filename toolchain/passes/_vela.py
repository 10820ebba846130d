"""The Ethos-U engine, Vela (`ethos-u-vela`, the `npu` extra): compile an int8 .tflite for a named
accelerator configuration, in an isolated child, and read back what Vela decided and estimated.
Used by the `vela` pass (passes/vela.py: the compile step) and the `npu` probe (probes/npu.py: budgets,
edgekit's cycle model beside Vela's, the report lines), which hand over through `save`/`load`.

    compile(model, config, out_dir) -> figures      (parent: starts the child; config: a VelaConfig)
    compile_in_child(model, out_dir, accelerator, system_config, memory_mode)   (child: runs Vela)

The child calls Vela's own entry point (`ethosu.vela.vela.main`, the `vela` command) with its
output captured, and reads:
  * the summary CSV (`<name>_summary_<system config>.csv`): cycles, inference time, memory used per
    memory area, MACs;
  * the captured output: "CPU: <op> = <ofm>" lines (--show-cpu-operations) and, per op that Vela
    leaves on the CPU, "Warning (supported operators) operator: OP, ofm: 'NAME'" + "Reason: ...".
The split is counted over the operators of the input model: an op is on the CPU when Vela names
its output tensor among the CPU operations. A native crash in Vela ends only the child
(`isolate.StepCrashed`: one line naming the step and the signal).
"""
from __future__ import annotations

import csv
import importlib.util
import os
import re
import sys
from pathlib import Path

from ..errors import EdgekitError

EXTRA = "npu"
HOW = "estimated (Vela)"
ALLOCATED = "allocated by Vela at compile time"
TIMEOUT_S = 900

WARNING = re.compile(r"^Warning \(supported operators\) operator: (\S+), ofm: '(.*)'$")
CPU_LINE = re.compile(r"^\s*CPU: (\S+) = (.*) \(outputs \[[^]]*\]\)$")
MEMORY_AREAS = {"sram": "SRAM", "dram": "DRAM", "on_chip_flash": "on-chip flash", "off_chip_flash": "off-chip flash"}


def require() -> None:
    """Vela is importable, or one line naming the extra that installs it."""
    if importlib.util.find_spec("ethosu") is None or importlib.util.find_spec("ethosu.vela") is None:
        raise EdgekitError("Arm Ethos-U targets need Vela (python package 'ethos-u-vela'), which is not installed",
                           f"pip install 'edgekit-toolchain[{EXTRA}]'")


def version() -> str:
    from importlib import metadata
    return metadata.version("ethos-u-vela")


def config_file() -> Path:
    """Vela's own Arm/vela.ini (system configurations and memory modes)."""
    spec = importlib.util.find_spec("ethosu")
    return Path(next(iter(spec.submodule_search_locations))) / "config_files" / "Arm" / "vela.ini"


def macs_per_cycle(accelerator: str) -> int:
    """ethos-u55-128 -> 128: the configuration's name is its MAC count per cycle."""
    return int(accelerator.rsplit("-", 1)[1])


def system_config(name: str) -> dict[str, float]:
    """A [System_Config.NAME] section of vela.ini as numbers (core_clock, *_clock_scale, ...)."""
    import configparser
    parser = configparser.ConfigParser()
    parser.read(config_file())
    section = parser[f"System_Config.{name}"]
    return {k: float(v) for k, v in section.items() if _number(v)}


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- parent side -----------------------------------------------------------------------------------

def compile(model: Path, config, out_dir: Path, progress=None) -> dict:
    """Compile `model` for an Ethos-U configuration (`config`: accelerator, system_config, memory_mode,
    optimise); figures as `compile_in_child` returns them. Raises ConversionError (one line) when Vela
    fails or its child dies."""
    from .. import isolate
    require()
    out_dir.mkdir(parents=True, exist_ok=True)
    return isolate.run("edgekit.passes._vela:compile_in_child", Path(model), Path(out_dir), config.accelerator,
                       config.system_config, config.memory_mode, config.optimise, step="Vela compiler",
                       progress=progress, timeout=TIMEOUT_S)


def output_dir(ctx, artifact: Path) -> Path:
    """Where the pass keeps Vela's output for one artifact (the conversion's scratch directory)."""
    return ctx.workdir / "vela" / "-".join(Path(artifact).relative_to(ctx.stage).with_suffix("").parts)


def save(out_dir: Path, figures: dict) -> None:
    import json
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "figures.json").write_text(json.dumps(figures, indent=1))


def load(out_dir: Path) -> dict | None:
    """What the pass saved for this artifact, or None when it did not run."""
    import json
    path = out_dir / "figures.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- child side ------------------------------------------------------------------------------------

def compile_in_child(model: Path, out_dir: Path, accelerator: str, system: str, memory_mode: str,
                     optimise: str = "Performance") -> dict:
    """Run Vela on `model` into `out_dir`; its figures, the op split and the fallback reasons."""
    from .. import isolate
    from ..errors import ConversionError
    log = out_dir / "vela.log"
    argv = [str(model), "--config", str(config_file()), "--accelerator-config", accelerator,
            "--system-config", system, "--memory-mode", memory_mode, "--output-dir", str(out_dir),
            "--optimise", optimise, "--show-cpu-operations"]
    isolate.progress(f"tflite: compiling for {accelerator} with Vela")
    isolate.where("Vela (ethosu.vela.vela.main)")
    code = _captured(lambda: _vela_main(argv), log)
    isolate.where(None)
    text = log.read_text(errors="replace")
    compiled = out_dir / f"{model.stem}_vela.tflite"
    summary = out_dir / f"{model.stem}_summary_{system}.csv"
    if code != 0 or not compiled.is_file() or not summary.is_file():
        raise ConversionError(f"Vela could not compile the model: {_last_error(text)}")
    figures = read_summary(summary)
    figures.update(placement(model, text))
    figures.update(accelerator=accelerator, system_config=system, memory_mode=memory_mode, vela_version=version(),
                   optimise=optimise, compiled=compiled.name, how=HOW)
    return figures


def _vela_main(argv: list[str]) -> int:
    from ethosu.vela import vela
    try:
        return vela.main(argv)
    except SystemExit as exc:  # argparse refused an argument
        return exc.code if isinstance(exc.code, int) else 2


def _captured(call, log: Path) -> int:
    """Run `call` with file descriptors 1 and 2 (Python and Vela's native core alike) going to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "wb") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            return call()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning: ")]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return ((errors or lines or ["no output"])[-1])[:300]


def read_summary(path: Path) -> dict:
    """Vela's summary CSV: cycles, time, MACs, and memory used per area (KiB in the CSV, bytes here)."""
    with open(path, newline="") as f:
        row = next(csv.DictReader(f))
    used = {area: round(float(row[f"{key}_memory_used"]) * 1024) for key, area in MEMORY_AREAS.items()
            if float(row.get(f"{key}_memory_used") or 0)}
    return {"cycles": {"npu": int(float(row["cycles_npu"])), "total": int(float(row["cycles_total"])),
                       **{area: int(float(row[f"cycles_{key}_access"])) for key, area in MEMORY_AREAS.items()
                          if float(row.get(f"cycles_{key}_access") or 0)}},
            "inference_ms": float(row["inference_time"]) * 1e3, "clock_mhz": float(row["core_clock"]) / 1e6,
            "macs": int(float(row["nn_macs"])), "memory_used_bytes": used,
            "weights_area": row["weights_storage_area"], "feature_map_area": row["feature_map_storage_area"],
            "arena_cache_bytes": round(float(row["arena_cache_size"]) * 1024),  # KiB in the CSV, as memory used
            "bandwidth_gib_s": {area: float(row[f"{key}_bandwidth"]) for key, area in MEMORY_AREAS.items()
                                if row.get(f"{key}_bandwidth")}}


def fallback_reasons(text: str) -> dict[str, dict]:
    """{ofm name: {"op": OP, "reasons": [...]}} from Vela's supported-operator warnings."""
    found: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        match = WARNING.match(line.strip())
        if match:
            current = found.setdefault(match.group(2), {"op": match.group(1), "reasons": []})
        elif current is not None and line.startswith("Reason: "):
            current["reasons"].append(line.removeprefix("Reason: ").strip())
        else:
            current = None
    return found


def placement(model: Path, text: str) -> dict:
    """The input model's operators split into NPU and CPU, each CPU one named with Vela's reason."""
    from ..accel.graph import load
    tensors, ops, _, _ = load(model)
    reasons = fallback_reasons(text)
    cpu_outputs = {m.group(2) for m in map(CPU_LINE.match, text.splitlines()) if m} | set(reasons)
    fallback = []
    for op in ops:
        names = [tensors[o].name for o in op.outputs if o >= 0]
        if cpu_outputs.intersection(names):
            why = next((reasons[n] for n in names if n in reasons), None)
            fallback.append({"index": op.index, "op": op.kind, "output": names[0],
                             "reason": "; ".join(why["reasons"]) if why and why["reasons"] else
                             "placed on the CPU by Vela (no reason given)"})
    return {"ops": {"total": len(ops), "npu": len(ops) - len(fallback), "cpu": len(fallback)}, "fallback": fallback}


# --- edgekit's own cycle model for the same configuration ------------------------------------------

def array_shape(macs: int) -> tuple[int, int]:
    """MACs per cycle as rows (output channels) x columns (reduction lanes): 128 -> 8 x 16, 256 -> 16 x 16.
    An assumption of edgekit's model; Vela's own block shapes differ per layer."""
    rows = 2 ** ((macs.bit_length() - 1) // 2)
    return rows, macs // rows


# Ethos-U's elementwise unit gives about one output element per cycle per 128 MACs: Vela's performance
# tables (architecture_features.py) list 0.75-1.5 cycles per element for MUL/ADD on an Ethos-U55-128
ELEMENTWISE_MACS = 128


def accel_spec(device, base, figures: dict):
    """edgekit's AcceleratorSpec for the profile's Ethos-U configuration: the MACs per cycle of the
    configuration, Vela's clock, the bandwidth of the memory Vela put the weights in, the SRAM that
    holds feature maps and its bandwidth, and whether Vela put the feature maps off chip; the
    efficiency factors come from the profile's [accelerator] table."""
    import dataclasses
    rows, cols = array_shape(macs_per_cycle(figures["accelerator"]))
    gib_s = {k.lower(): v for k, v in figures["bandwidth_gib_s"].items()}
    offchip = figures["feature_map_area"].lower() != "sram"
    onchip = figures["arena_cache_bytes"] if figures["memory_mode"].startswith("Dedicated") else device.ram_kib * 1024
    return dataclasses.replace(base, mac_rows=rows, mac_cols=cols, clock_mhz=figures["clock_mhz"],
                               dram_gbps=gib_s.get(figures["weights_area"].lower(), 1.0) * 2 ** 30 / 1e9,
                               onchip_kib=max(1, onchip // 1024), onchip_gbps=gib_s.get("sram", 0.0) * 2 ** 30 / 1e9,
                               activations_offchip=offchip, reduction="channels",  # Ethos-U: taps in sequence
                               elementwise_per_cycle=macs_per_cycle(figures["accelerator"]) / ELEMENTWISE_MACS,
                               fuse_activations=True)


def placed_cycles(model: Path, spec, cpu: set[int]) -> dict:
    """edgekit's MAC-array cycle model (accel/cycles.py) with Vela's placement: the ops whose index is
    in `cpu` fall back, every other op runs on the array."""
    from ..accel.cycles import cycles
    from ..accel.emulator import Emulator

    class Placed(Emulator):
        def placement(self):
            return [(op, "cpu" if op.index in cpu else "accelerator") for op in self.ops]

    return cycles(Placed(model, spec), spec)


def edgekit_estimate(model: Path, figures: dict, spec) -> dict:
    """edgekit's cycle model on the ops Vela put on the NPU, and its ratio to Vela's total cycles."""
    est = placed_cycles(model, spec, {f["index"] for f in figures["fallback"]})
    return {"cycles": est["cycles"], "latency_ms": est["latency_ms"], "mac_utilisation": est["mac_utilisation"],
            "dram_bytes": est["dram_bytes"], "layers": len(est["layers"]), "how": est["how"],
            "config": {"mac_rows": spec.mac_rows, "mac_cols": spec.mac_cols, "clock_mhz": spec.clock_mhz,
                       "dram_gbps": round(spec.dram_gbps, 4), "onchip_kib": spec.onchip_kib,
                       "onchip_gbps": round(spec.onchip_gbps, 4),
                       "activations_offchip": spec.activations_offchip,
                       "compute_efficiency": spec.compute_efficiency, "dram_efficiency": spec.dram_efficiency,
                       "layer_overhead_cycles": spec.layer_overhead_cycles},
            "ratio_to_vela": est["cycles"] / figures["cycles"]["total"] if figures["cycles"]["total"] else None}
