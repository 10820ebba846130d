"""Single-op models cut from a .tflite graph for op-by-op runs. The reader itself is edgekit.tflite_file
(re-exported here: Tensor, Op, load, read_model, ...)."""
from __future__ import annotations

import copy
from pathlib import Path

from ..tflite_file import (DTYPES, Op, Tensor, constant, load, model_bytes, op_names, read_model,  # noqa: F401
                           schema, type_names, write_model)


def single_op_models(path: Path, indices: list[int]) -> dict[int, bytes]:
    """For each op index, a model holding that op alone: its non-constant inputs become the graph's
    inputs and its outputs the graph's outputs; only the tensors and buffers it uses are kept."""
    model = read_model(path)
    graph = model.subgraphs[0]
    result = {}
    for k in indices:
        op = graph.operators[k]
        used = sorted({i for i in [*op.inputs, *op.outputs] if i >= 0})
        remap = {old: new for new, old in enumerate(used)}
        cut = copy.copy(model)
        cut.buffers = [schema().BufferT()]  # buffer 0 is the empty sentinel
        tensors = []
        for old in used:
            t = copy.copy(graph.tensors[old])
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if data is not None and len(data) and old not in op.outputs:
                buffer = schema().BufferT()
                buffer.data = data
                cut.buffers.append(buffer)
                t.buffer = len(cut.buffers) - 1
            else:
                t.buffer = 0
            tensors.append(t)
        single = copy.copy(graph)
        single.tensors = tensors
        new_op = copy.copy(op)
        new_op.inputs = [remap[i] if i >= 0 else -1 for i in op.inputs]
        new_op.outputs = [remap[i] for i in op.outputs]
        single.operators = [new_op]
        single.inputs = [remap[i] for i in op.inputs if i >= 0 and tensors[remap[i]].buffer == 0]
        single.outputs = [remap[i] for i in op.outputs]
        cut.subgraphs = [single]
        cut.signatureDefs = []
        cut.metadata = []
        cut.metadataBuffer = []
        result[k] = model_bytes(cut)
    return result
