"""fpga tap: the int8 .tflite run on the accelerator emulator (accel/, the profile's arithmetic), every
op's output caught as it is computed; nodes and names as the TFLite tap's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..accel.emulator import Emulator
from . import tflite


class Graph:
    def __init__(self, path: Path, spec):
        if spec is None:
            raise ValueError("the fpga tap needs the profile's AcceleratorSpec")
        self.nodes, self._where, self._tensors = tflite.nodes_of(path)
        self._emulator = Emulator(path, spec)

    def run(self, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
        emu = self._emulator
        arrays = [tflite.quantized_input(self._tensors[i], a) for i, a in zip(emu.inputs, sample)]
        values = {str(i): tflite.float_value(self._tensors[i], a) for i, a in zip(emu.inputs, arrays)}

        def caught(op, args, result):
            values[str(op.outputs[0])] = tflite.float_value(self._tensors[op.outputs[0]], np.asarray(result))

        emu.run(arrays, on_op=caught)
        return values
