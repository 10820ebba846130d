"""One layout for a quantized .tflite, whatever build of TF's MLIR quantizer wrote it (same input and flags,
same bytes). Given denylisted ops (XNNPACK's kept-float op types, --keep-float, --mixed auto, the run-once
check) the quantizer varies from build to build, even within one process, in what it adds:

- the order of the QUANTIZE/DEQUANTIZE ops it inserts (ddddocr's CRNN: the DEQUANTIZEs of one SPLIT's
  outputs swapped, 258 bytes apart); the other ops keep the source graph's order;
- where a SPLIT with an unused output is dequantized: int8 SPLIT then a DEQUANTIZE per used output, or one
  DEQUANTIZE then a float SPLIT (ddddocr: the first step of one LSTM direction or the other). The values are
  the same (a SPLIT copies); the float form is written as the int8 one;
- the names it numbers in that order (`tfl.dequantize11`, a SPLIT location's `split3`..`split36`).

`canonicalize` rewrites the file: Q/DQ ops fed by an op right when their input is ready (ties by input
tensor), every other op in the converter's order; tensors laid out as the converter does (graph inputs and
constants first, then op outputs in op order, one buffer per tensor in tensor order, metadata buffers last),
with every reference following; constant data 16-byte aligned (tflite_file.model_bytes)."""
from __future__ import annotations

import copy
import heapq
import re
from pathlib import Path

from .errors import ConversionError
from .tflite_file import op_names, read_model, schema, write_model

_BOUNDARY = ("QUANTIZE", "DEQUANTIZE")
_COUNTED = re.compile(r"(tfl\.(?:de)?quantize)\d*")  # the converter's own Q/DQ names: a counter in op order


def canonicalize(path: Path) -> None:
    """Rewrite a quantized .tflite in place in its canonical layout (module docstring)."""
    if Path(path).stat().st_size >= 2**31 - 1:  # flatbuffers cannot hold it: left as the converter wrote it
        return
    model = read_model(path)
    names = op_names()
    kinds = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in model.operatorCodes]
    for index, graph in enumerate(model.subgraphs):
        dropped = _split_in_int8(graph, kinds, _pinned(model, graph, index))
        remap = _reorder(graph, kinds, dropped)
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == index:
                for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
                    entry.tensorIndex = remap[int(entry.tensorIndex)]
        _renumber_counted(graph)
    _order_codes(model)
    _lay_out_buffers(model)
    write_model(model, path)


def _pinned(model, graph, index: int) -> set[int]:
    """Tensors a reader names from outside the op list: graph inputs/outputs and signature entries."""
    pinned = {int(t) for t in [*(graph.inputs if graph.inputs is not None else []),
                               *(graph.outputs if graph.outputs is not None else [])]}
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == index:
            pinned |= {int(e.tensorIndex) for e in [*(signature.inputs or []), *(signature.outputs or [])]}
    return pinned


def _split_in_int8(graph, kinds: list[str | None], pinned: set[int]) -> set[int]:
    """DEQUANTIZE -> float SPLIT (the DEQUANTIZE read by that SPLIT alone) -> int8 SPLIT, then a DEQUANTIZE per
    output that is read, named as the converter names them (the SPLIT's first output name + a counter).
    Returns the tensors no longer used (the float SPLIT input, float outputs nothing reads)."""
    dropped: set[int] = set()
    ops = list(graph.operators or [])
    readers: dict[int, int] = {}
    for op in ops:
        for t in op.inputs if op.inputs is not None else []:
            readers[int(t)] = readers.get(int(t), 0) + 1
    producer = {int(t): op for op in ops for t in op.outputs}
    for split in [op for op in ops if kinds[op.opcodeIndex] == "SPLIT"]:
        fed = int(split.inputs[1])
        dq = producer.get(fed)
        if dq is None or kinds[dq.opcodeIndex] != "DEQUANTIZE" or readers.get(fed) != 1 or fed in pinned \
                or any(graph.tensors[int(t)].type != graph.tensors[fed].type for t in split.outputs):
            continue
        source = graph.tensors[int(dq.inputs[0])]
        if source.quantization is None or source.quantization.scale is None or len(source.quantization.scale) != 1:
            continue
        split.inputs[1] = int(dq.inputs[0])
        ops.remove(dq)
        dropped.add(fed)
        base = graph.tensors[int(split.outputs[0])].name or b""
        added = []
        for j, out in enumerate([int(t) for t in split.outputs]):
            quantized = copy.deepcopy(graph.tensors[out])
            quantized.type, quantized.quantization = source.type, copy.deepcopy(source.quantization)
            graph.tensors.append(quantized)
            split.outputs[j] = len(graph.tensors) - 1
            if readers.get(out) or out in pinned:
                graph.tensors[out].name = base + str(len(split.outputs) + len(added)).encode()
                added.append(_op_like(dq, [len(graph.tensors) - 1], [out]))
            else:
                dropped.add(out)
        ops[ops.index(split) + 1:ops.index(split) + 1] = added
    graph.operators = ops
    return dropped


def _op_like(op, inputs: list[int], outputs: list[int]):
    new = copy.deepcopy(op)
    new.inputs, new.outputs = inputs, outputs
    return new


def _reorder(graph, kinds: list[str | None], dropped: set[int]) -> dict[int, int]:
    """Put `graph`'s ops in canonical order and lay its tensors out (inputs and constants in their order, then
    op outputs in op order; `dropped` left out); returns old -> new tensor index."""
    ops = graph.operators or []
    producer = {int(t): k for k, op in enumerate(ops) for t in op.outputs}
    waiting = [{producer[int(t)] for t in op.inputs if int(t) in producer} for op in ops]
    users: dict[int, list[int]] = {}
    for k, deps in enumerate(waiting):
        for d in deps:
            users.setdefault(d, []).append(k)
    kept = [t for t in range(len(graph.tensors)) if t not in producer and t not in dropped]
    remap = {t: n for n, t in enumerate(kept)}
    fed = [bool(deps) for deps in waiting]  # Q/DQ of a constant or graph input: where the converter put it
    key = lambda k: ((0, [remap.get(int(t), -1) for t in ops[k].inputs], _out_key(graph, ops[k]))  # noqa: E731
                     if kinds[ops[k].opcodeIndex] in _BOUNDARY and fed[k] else (1, k))
    ready = [(key(k), k) for k, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(k)
        remap.update((int(t), len(remap)) for t in ops[k].outputs)
        for user in users.get(k, []):
            waiting[user].discard(k)
            if not waiting[user]:
                heapq.heappush(ready, (key(user), user))
    if len(order) != len(ops):
        raise ConversionError("the .tflite graph has a cycle: no op order to write")
    _renumber(graph, remap, _groups(ops, kinds, producer))
    graph.operators = [ops[k] for k in order]
    return remap


def _groups(ops, kinds, producer) -> list[list[int]]:
    """Q/DQ outputs by what feeds them (an op; a graph input or constant: by tensor)."""
    groups: dict[int, list[int]] = {}
    for op in ops:
        if kinds[op.opcodeIndex] in _BOUNDARY and len(op.inputs):
            feed = int(op.inputs[0])
            groups.setdefault(producer.get(feed, -1 - feed), []).extend(int(t) for t in op.outputs)
    return list(groups.values())


def _out_key(graph, op) -> tuple:
    """What tells apart Q/DQ ops reading one tensor (not the name: the converter numbers it in its own order)."""
    t = graph.tensors[int(op.outputs[0])]
    q = t.quantization
    return (t.type, [] if t.shape is None else [int(d) for d in t.shape],
            [] if q is None or q.scale is None else [float(s) for s in q.scale],
            [] if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint])


def _renumber(graph, remap: dict[int, int], groups: list[list[int]]) -> None:
    """Tensors in their new order (one not in `remap` is dropped) and every op, op intermediate and subgraph
    input/output pointing at them. The outputs of the Q/DQ ops one op feeds take their names in the new order:
    the converter numbers those names in its emission order."""
    old = list(graph.tensors)
    graph.tensors = [None] * len(remap)
    for was, now in remap.items():
        graph.tensors[now] = copy.copy(old[was])
    for group in groups:
        for name, now in zip([old[i].name for i in sorted(group)], sorted(remap[i] for i in group)):
            graph.tensors[now].name = name
    fix = lambda ids: None if ids is None else [remap[int(i)] if int(i) >= 0 else -1 for i in ids]  # noqa: E731
    for op in graph.operators or []:
        op.inputs, op.outputs, op.intermediates = fix(op.inputs), fix(op.outputs), fix(op.intermediates)
    graph.inputs, graph.outputs = fix(graph.inputs), fix(graph.outputs)


def _renumber_counted(graph) -> None:
    """`tfl.quantize`, `tfl.quantize1`, ... (and `tfl.dequantize...`) numbered again in tensor order."""
    seen: dict[bytes, int] = {}
    for tensor in graph.tensors:
        match = _COUNTED.fullmatch((tensor.name or b"").decode(errors="replace"))
        if match:
            n = seen.get(match.group(1).encode(), 0)
            seen[match.group(1).encode()] = n + 1
            tensor.name = match.group(1).encode() + (str(n).encode() if n else b"")


def _order_codes(model) -> None:
    """Operator codes in order of first use (the converter's order, which follows its own op order)."""
    first = list(dict.fromkeys([int(op.opcodeIndex) for g in model.subgraphs for op in g.operators or []]
                               + list(range(len(model.operatorCodes)))))
    position = {old: new for new, old in enumerate(first)}
    model.operatorCodes = [model.operatorCodes[k] for k in first]
    for graph in model.subgraphs:
        for op in graph.operators or []:
            op.opcodeIndex = position[int(op.opcodeIndex)]


def _lay_out_buffers(model) -> None:
    """Buffer 0 empty, then one per tensor in tensor order (a shared constant keeps one), metadata last."""
    fb = schema()
    old, new, moved = model.buffers or [], [fb.BufferT()], {}

    def place(index: int, share: bool) -> int:
        if share and index in moved:
            return moved[index]
        new.append(old[index] if 0 < index < len(old) else fb.BufferT())
        moved.setdefault(index, len(new) - 1)
        return len(new) - 1

    for graph in model.subgraphs:
        for tensor in graph.tensors:
            data = 0 < tensor.buffer < len(old) and old[tensor.buffer].data is not None and len(old[tensor.buffer].data)
            tensor.buffer = place(tensor.buffer, share=bool(data)) if data else place(-1, share=False)
    for entry in model.metadata or []:
        entry.buffer = place(entry.buffer, share=True)
    if model.metadataBuffer is not None:
        model.metadataBuffer = [place(int(b), share=True) for b in model.metadataBuffer]
    model.buffers = new
