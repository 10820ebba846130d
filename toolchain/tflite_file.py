"""The one .tflite reader: a .tflite file's flatbuffer object (read, written back), and its main graph as
numpy tensors and ops, with LiteRT's flatbuffer schema (no TensorFlow import); single-op models cut
from it for op-by-op runs; the canonical op order quantized artifacts are written in (`canonicalize`).
Used by the accelerator, the MCU probe, per-op profiles, the TFLite rewrites and passes that edit a .tflite."""
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


# ---- canonical op order -----------------------------------------------------------------------------
# TF's MLIR quantizer emits the QUANTIZE/DEQUANTIZE ops it inserts in an order that changes from build to
# build when ops are denylisted (the DEQUANTIZEs of one SPLIT's outputs feeding kept-float ADDs: ddddocr's
# CRNN, 258 bytes differing between two builds); the other ops keep the source graph's order.

_BOUNDARY = ("QUANTIZE", "DEQUANTIZE")


def canonicalize(path: Path) -> None:
    """Rewrite a .tflite in place in one order that depends only on its graph: every QUANTIZE/DEQUANTIZE
    of an op's output right when that is ready (several at once: by input tensor, then output), every other
    op in the order it had; op outputs renumbered in that order over the slots op outputs had (the graph's inputs and
    constants keep theirs), with subgraph outputs, op intermediates and signature defs following."""
    if Path(path).stat().st_size >= 2**31 - 1:  # flatbuffers cannot hold it: left as the converter wrote it
        return
    model = read_model(path)
    names = op_names()
    kinds = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in model.operatorCodes]
    for index, graph in enumerate(model.subgraphs):
        remap = _reorder(graph, kinds)
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == index:
                for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
                    entry.tensorIndex = remap.get(int(entry.tensorIndex), int(entry.tensorIndex))
    write_model(model, path)


def _reorder(graph, kinds: list[str | None]) -> dict[int, int]:
    """Put `graph`'s ops in canonical order and renumber their outputs; returns old -> new tensor index."""
    import heapq
    ops = graph.operators or []
    producer = {int(t): k for k, op in enumerate(ops) for t in op.outputs}
    waiting = [{producer[int(t)] for t in op.inputs if int(t) in producer} for op in ops]
    users: dict[int, list[int]] = {}
    for k, deps in enumerate(waiting):
        for d in deps:
            users.setdefault(d, []).append(k)
    slots = iter(sorted(producer))
    remap: dict[int, int] = {}
    fed = [bool(deps) for deps in waiting]  # Q/DQ of a constant or graph input: where the converter put it
    key = lambda k: ((0, [remap.get(int(t), int(t)) for t in ops[k].inputs], _out_key(graph, ops[k]))  # noqa: E731
                     if kinds[ops[k].opcodeIndex] in _BOUNDARY and fed[k] else (1, k))
    ready = [(key(k), k) for k, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(k)
        remap.update((int(t), next(slots)) for t in ops[k].outputs)
        for user in users.get(k, []):
            waiting[user].discard(k)
            if not waiting[user]:
                heapq.heappush(ready, (key(user), user))
    if len(order) != len(ops):
        raise ConversionError("the .tflite graph has a cycle: no op order to write")
    groups: dict[int, list[int]] = {}  # Q/DQ outputs by the op feeding them (a graph input or constant: by tensor)
    for op in ops:
        if kinds[op.opcodeIndex] in _BOUNDARY and len(op.inputs):
            feed = int(op.inputs[0])
            groups.setdefault(producer.get(feed, -1 - feed), []).extend(int(t) for t in op.outputs)
    _renumber(graph, remap, list(groups.values()))
    graph.operators = [ops[k] for k in order]
    return remap


def _out_key(graph, op) -> tuple:
    """What tells apart Q/DQ ops reading one tensor (not the name: the converter numbers it in its own order)."""
    t = graph.tensors[int(op.outputs[0])]
    q = t.quantization
    return (t.type, [] if t.shape is None else [int(d) for d in t.shape],
            [] if q is None or q.scale is None else [float(s) for s in q.scale],
            [] if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint])


def _renumber(graph, remap: dict[int, int], groups: list[list[int]]) -> None:
    """Move each op output to its new slot (taking the buffer index the slot had: op outputs hold no data)
    and point every op, op intermediate and subgraph output at the new indices. The outputs of the Q/DQ ops
    one op feeds take their names in slot order: the converter numbers those names in its emission order."""
    old = list(graph.tensors)
    for was, now in remap.items():
        tensor = copy.copy(old[was])
        tensor.buffer = old[now].buffer
        graph.tensors[now] = tensor
    for group in groups:
        for name, now in zip([old[i].name for i in sorted(group)], sorted(remap[i] for i in group)):
            graph.tensors[now].name = name
    fix = lambda ids: None if ids is None else [remap.get(int(i), int(i)) for i in ids]  # noqa: E731
    for op in graph.operators or []:
        op.inputs, op.outputs, op.intermediates = fix(op.inputs), fix(op.outputs), fix(op.intermediates)
    graph.outputs = fix(graph.outputs)
