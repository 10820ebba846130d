"""The one .tflite reader: a .tflite file's flatbuffer object (read, written back), and its main graph as
numpy tensors and ops, with LiteRT's flatbuffer schema (no TensorFlow import); single-op models cut
from it for op-by-op runs. Used by the accelerator, the MCU probe, per-op profiles, the TFLite rewrites
and passes that edit a .tflite, and tflite_canonical (the layout quantized artifacts are written in)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError

DTYPES = {"int8": np.int8, "int32": np.int32, "int64": np.int64, "float32": np.float32, "int16": np.int16,
          "uint8": np.uint8, "bool": np.bool_, "float16": np.float16}


@dataclass
class Tensor:
    name: str
    shape: tuple
    dtype: str
    scale: np.ndarray
    zero_point: np.ndarray
    data: np.ndarray | None


@dataclass
class Op:
    index: int
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: object


def schema():
    from ai_edge_litert import schema_py_generated
    return schema_py_generated


def read_model(path: Path):
    """The mutable flatbuffer object (ModelT) of a .tflite file."""
    fb = schema()
    buf = bytearray(Path(path).read_bytes())
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(buf, 0))
    for buffer in model.buffers:  # models over 2 GB keep their buffers after the flatbuffer
        if getattr(buffer, "offset", 0):
            buffer.data = buf[buffer.offset:buffer.offset + buffer.size]
            buffer.offset = buffer.size = 0
    return model


def model_bytes(model) -> bytes:
    """The flatbuffer bytes of a ModelT, constant data 16-byte aligned as the TFLite converter writes it."""
    import flatbuffers
    builder = flatbuffers.Builder(1024)
    holding = [b for b in model.buffers or [] if b.data is not None and len(b.data)]
    for buffer in holding:
        buffer.Pack = _aligned_pack.__get__(buffer)
    try:
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    finally:
        for buffer in holding:
            del buffer.Pack
    return bytes(builder.Output())


def _aligned_pack(buffer, builder):
    """BufferT.Pack with the data vector aligned to 16 bytes (the schema's force_align; the generated
    Python code aligns it to 1)."""
    fb, payload = schema(), bytes(buffer.data)
    builder.StartVector(1, len(payload), 16)
    builder.head -= len(payload)
    builder.Bytes[builder.head:builder.head + len(payload)] = payload
    data = builder.EndVector()
    fb.BufferStart(builder)
    fb.BufferAddData(builder, data)
    fb.BufferAddOffset(builder, buffer.offset)
    fb.BufferAddSize(builder, buffer.size)
    return fb.BufferEnd(builder)


def write_model(model, path: Path) -> None:
    Path(path).write_bytes(model_bytes(model))


def op_names() -> dict[int, str]:
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


def type_names() -> dict[int, str]:
    return {v: k.lower() for k, v in vars(schema().TensorType).items() if not k.startswith("_")}


def constant(model, tensor) -> np.ndarray | None:
    """A constant tensor's values in its shape; a sparse one (MediaPipe's, decoded by DENSIFY) densified."""
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    if buffer is None or buffer.data is None or not len(buffer.data):
        return None
    if tensor.sparsity is not None:
        return dense(tensor, np.frombuffer(bytes(buffer.data), np.uint8), f"sparse constant '{tensor.name}'")
    dtype = DTYPES.get(type_names()[tensor.type], np.float32)
    values = np.frombuffer(bytes(buffer.data), dtype=dtype)
    return values.reshape(_shape(tensor)) if tensor.shape is not None else values


_NP = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8, 10: np.float64}


def dense(tensor, values: np.ndarray, where: str) -> np.ndarray:
    """TFLite's sparse format (format_converter.cc): one level per dimension in traversal order (the
    dims, then block dims), each DENSE (all dense_size indices) or SPARSE_CSR (array_segments /
    array_indices per parent position); values are the stored elements in traversal order."""
    sparsity, shape = tensor.sparsity, [int(d) for d in tensor.shape]
    if tensor.type not in _NP:
        raise ConversionError(f"{where}: element type {tensor.type} is not supported for densifying — re-export dense")
    values = values.view(_NP[tensor.type])
    order = [int(d) for d in sparsity.traversalOrder]
    block_map = [int(d) for d in sparsity.blockMap] if sparsity.blockMap is not None else []
    rank = len(shape)
    idx, prev = np.zeros((1, 0), np.int64), np.zeros(1, np.int64)
    sizes = []
    for level in sparsity.dimMetadata:
        if level.format == 0:  # DENSE
            size = int(level.denseSize)
            idx = np.concatenate([np.repeat(idx, size, 0), np.tile(np.arange(size), len(prev))[:, None]], 1)
            prev = np.repeat(prev, size) * size + np.tile(np.arange(size), len(prev))
        else:  # SPARSE_CSR
            segments = np.asarray(level.arraySegments.values, np.int64)
            indices = np.asarray(level.arrayIndices.values, np.int64)
            counts = segments[prev + 1] - segments[prev]
            pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(segments[prev], counts)
            idx = np.concatenate([np.repeat(idx, counts, 0), indices[pos][:, None]], 1)
            prev = pos
            size = 0
        sizes.append(size)
    if len(idx) != values.size or len(order) != idx.shape[1]:
        raise ConversionError(f"{where}: its sparsity metadata describes {len(idx)} stored values, the buffer "
                              f"holds {values.size} — the model file is inconsistent; re-export it")
    coords = [None] * rank
    for level, dim in enumerate(order[:rank]):
        coords[dim] = idx[:, level]
    for level, dim in enumerate(order[rank:], start=rank):
        block = dim - rank
        coords[block_map[block]] = coords[block_map[block]] * sizes[rank + block] + idx[:, level]
    out = np.zeros(shape, values.dtype)
    out[tuple(coords)] = values
    return out


def _shape(tensor) -> tuple:
    """A tensor's shape; () where the flatbuffer has none (the converter's calibrated model leaves it out)."""
    return tuple(int(d) for d in tensor.shape) if tensor.shape is not None else ()


def load(path: Path) -> tuple[list[Tensor], list[Op], list[int], list[int]]:
    """Tensors, ops, graph inputs and outputs of a .tflite file's main subgraph."""
    model = read_model(path)
    graph = model.subgraphs[0]
    names, types = op_names(), type_names()
    tensors = []
    for t in graph.tensors:
        q = t.quantization
        scale = np.asarray(q.scale if q is not None and q.scale is not None else [0.0], np.float32)
        zero = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [0], np.int64)
        tensors.append(Tensor(t.name.decode() if isinstance(t.name, bytes) else t.name, _shape(t), types[t.type],
                              scale, zero, constant(model, t)))
    ops = []
    for k, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        ops.append(Op(k, names[max(code.builtinCode, code.deprecatedBuiltinCode)], list(op.inputs), list(op.outputs),
                      op.builtinOptions))
    return tensors, ops, list(graph.inputs), list(graph.outputs)


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

