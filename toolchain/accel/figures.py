"""The accelerator figures of one int8 artifact: emulator run, coverage, fidelity, cycle estimate.

`emulate_file` runs in an isolated child (see probes/accelerator.py): it reads the eval
samples, the float reference outputs and the TFLite outputs from .npz files and streams the
samples through the emulator a few at a time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import isolate, measure, runner
from .cycles import cycles, mac_count
from .emulator import Emulator, emulate_samples
from .spec import AcceleratorSpec

HOW = "emulated (integer-only numpy emulator of the accelerator)"


def emulate_file(path: Path, spec: AcceleratorSpec, run_dir: Path, precision: str, labels, source_accuracy) -> dict:
    emu = Emulator(path, spec)
    samples = runner.load_stacked(run_dir / "in.npz", "in")
    isolate.progress(f"tflite: running the accelerator emulator on {len(samples)} samples")
    outputs = emulate_samples(emu, samples)
    del samples
    placement = emu.placement()
    macs = {op.index: mac_count(emu, op, spec) for op, _ in placement}
    on_accel = sum(macs[op.index] for op, where in placement if where == "accelerator")
    figures = {
        "how": HOW,
        "coverage_macs": float(on_accel / max(sum(macs.values()), 1)),
        "coverage_ops": sum(where == "accelerator" for _, where in placement) / max(len(placement), 1),
        "fallback_ops": sorted({op.kind for op, where in placement if where == "cpu"} - {"QUANTIZE", "DEQUANTIZE"}),
        "fidelity_vs_float": measure.fidelity(runner.load_stacked(run_dir / "reference.npz", "out"), outputs,
                                              precision),
        "fidelity_vs_tflite": measure.fidelity(runner.load_stacked(run_dir / "out.npz", "out"), outputs, precision),
        "estimate": cycles(emu, spec),
        "weights_bytes": int(sum(t.data.nbytes for t in emu.tensors if t.data is not None)),
        "onchip_bytes": spec.onchip_kib * 1024,
    }
    figures["weights_fit_onchip"] = figures["weights_bytes"] <= figures["onchip_bytes"]
    figures["activations_fit_onchip"] = all(layer["fits_onchip"] for layer in figures["estimate"]["layers"])
    if labels is not None:
        acc = measure.accuracy(outputs, np.asarray(labels))
        figures["accuracy"] = {"value": acc, "delta": acc - source_accuracy if source_accuracy is not None else None,
                               "how": HOW}
    return figures
