"""TFLite pre-pass for the converters that read a .tflite (tf2onnx, OpenVINO's TFLite frontend, and
through tf2onnx the rebuild the TFLite quantizer starts from): on a copy, rewrite what they cannot
read into builtin ops of the same meaning.

- Custom ops, by the table CUSTOM_OPS (custom code -> rewrite), e.g. MediaPipe's
  Convolution2DTransposeBias. Those tf2onnx reads itself (READABLE, Flex*) stay; any other custom op
  is refused, naming it and its output tensor.
- Sparse constants (TFLite sparsity, decoded by a DENSIFY op at run time) are stored dense and the
  DENSIFY op dropped: tf2onnx reads the sparse buffer as if it were dense.

The LiteRT artifact of a .tflite input stays the user's model as it is; this copy only feeds converters.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .. import tflite_file
from ..errors import ConversionError


def for_converters(source) -> tuple[Path, list[str]]:
    """The .tflite the converters should read (the source itself when nothing needs rewriting) and notes
    naming the rewrites; made once per source, in its workdir."""
    cached = getattr(source, "builtin_tflite", None)
    if cached is None:
        cached = source.builtin_tflite = rewrite(source.path, source.path.parent / "builtin.tflite")
    return cached


def rewrite(path: Path, out: Path) -> tuple[Path, list[str]]:
    from ..tflite_file import read_model, write_model
    model = read_model(path)
    counts: dict[str, int] = {}
    for graph in model.subgraphs:
        dense = _densify_constants(model, graph)
        if dense:
            counts["sparse constants stored dense (DENSIFY dropped)"] = dense
        for kind in _rewrite_custom_ops(model, graph):
            counts[kind] = counts.get(kind, 0) + 1
    if not counts:
        return path, []
    _drop_unused_codes(model)
    write_model(model, out)
    return out, ["TFLite pre-pass: " + ", ".join(f"{what} x{n}" for what, n in counts.items())]


def consumers(path: Path, tensor_name: str) -> list[str]:
    """The ops that read a tensor, as 'OPNAME #index' (for failure reasons)."""
    from ..tflite_file import op_names, read_model
    model, names = read_model(path), op_names()
    found = []
    for graph in model.subgraphs:
        wanted = {i for i in range(len(graph.tensors)) if _tensor_name(graph, i) == tensor_name}
        for index, op in enumerate(graph.operators):
            code = model.operatorCodes[op.opcodeIndex]
            kind = names.get(_builtin(code), "?") if _builtin(code) != _schema().BuiltinOperator.CUSTOM \
                else _custom_code(code)
            if wanted & set(int(i) for i in op.inputs):
                found.append(f"{kind} op #{index}")
    return found[:3]


# ---- custom ops ------------------------------------------------------------------------------------

def _rewrite_custom_ops(model, graph) -> list[str]:
    schema = _schema()
    done = []
    new_ops = []
    for index, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        if _builtin(code) != schema.BuiltinOperator.CUSTOM:
            new_ops.append(op)
            continue
        name = _custom_code(code)
        output = _tensor_name(graph, op.outputs[0]) if len(op.outputs) else "?"
        if name in READABLE or name.startswith("Flex"):
            new_ops.append(op)
            continue
        if name not in CUSTOM_OPS:
            known = ", ".join(sorted(CUSTOM_OPS))
            raise ConversionError(
                f"TFLite custom op '{name}' (op #{index}, output tensor '{output}') has no builtin equivalent "
                f"that tf2onnx or OpenVINO can read (edgekit rewrites only: {known}) — re-export the model "
                f"without it, or add its rewrite to CUSTOM_OPS in backends/_tflite_rewrite.py")
        new_ops += CUSTOM_OPS[name](model, graph, op, f"op #{index}, output tensor '{output}'")
        done.append(f"custom op {name} -> builtins")
    graph.operators = new_ops
    return done


def _transpose_conv_bias(model, graph, op, where: str) -> list:
    """MediaPipe's Convolution2DTransposeBias (mediapipe/util/tflite/operations/transpose_conv_bias.cc):
    inputs (data NHWC, weights OHWI, bias [O]); custom options are a TfLiteTransposeConvParams struct
    (int32 padding: 1 SAME, 2 VALID; stride_w; stride_h). Output size and top/left padding follow its
    Prepare/Eval: SAME pads max(0, f - (in-1) % s - 1) in all, half of it (rounded down) before.
    -> TRANSPOSE_CONV with that output shape (whose builtin SAME/VALID padding works out to the same
    placement) + ADD of the bias."""
    schema = _schema()
    options = bytes(op.customOptions if op.customOptions is not None else b"")
    if len(op.inputs) != 3 or len(options) < 12:
        raise ConversionError(f"Convolution2DTransposeBias ({where}): expected 3 inputs and 12 bytes of options, "
                              f"got {len(op.inputs)} inputs and {len(options)} bytes — re-export the model")
    padding, stride_w, stride_h = struct.unpack_from("<iii", options)
    data, weights, bias = (graph.tensors[i] for i in op.inputs)
    shapes = [list(map(int, t.shape if t.shape is not None else [])) for t in (data, weights)]
    if any(t.type != schema.TensorType.FLOAT32 for t in (data, weights, bias)):
        raise ConversionError(f"Convolution2DTransposeBias ({where}): MediaPipe's kernel is float32 only, these "
                              "tensors are not — re-export the model in float32")
    if padding not in (1, 2) or min(stride_w, stride_h) < 1 or [len(s) for s in shapes] != [4, 4] \
            or min(shapes[0] + shapes[1]) < 1:
        raise ConversionError(f"Convolution2DTransposeBias ({where}): padding {padding}, strides {stride_w}x"
                              f"{stride_h}, input/weight shapes {shapes[0]}/{shapes[1]} are not a valid "
                              "4-D transposed convolution — re-export the model with fixed shapes")
    (n, in_h, in_w, _), (out_c, f_h, f_w, _) = shapes

    def size(length, f, s):
        pad = max(0, f - (length - 1) % s - 1) if padding == 1 else 0
        return s * (length - 1) + f - pad

    out_shape = _constant(model, graph, f"{_tensor_name(graph, op.outputs[0])}/output_shape",
                          np.array([n, size(in_h, f_h, stride_h), size(in_w, f_w, stride_w), out_c], np.int32))
    conv_out = _add_tensor(graph, f"{_tensor_name(graph, op.outputs[0])}/transpose_conv", graph.tensors[op.outputs[0]])
    conv = _operator(model, schema.BuiltinOperator.TRANSPOSE_CONV, [out_shape, op.inputs[1], op.inputs[0]], [conv_out],
                     schema.BuiltinOptions.TransposeConvOptions,
                     _options(schema.TransposeConvOptionsT, padding=schema.Padding.SAME if padding == 1
                              else schema.Padding.VALID, strideW=stride_w, strideH=stride_h))
    add = _operator(model, schema.BuiltinOperator.ADD, [conv_out, op.inputs[2]], list(op.outputs),
                    schema.BuiltinOptions.AddOptions, _options(schema.AddOptionsT))
    return [conv, add]


CUSTOM_OPS = {"Convolution2DTransposeBias": _transpose_conv_bias}  # custom code -> rewrite(model, graph, op, where)
# custom ops tf2onnx reads as they are (its tflite_handlers), as are Flex* (TF ops carried by TFLite)
READABLE = {"TFLite_Detection_PostProcess"}


# ---- sparse constants ------------------------------------------------------------------------------

def _densify_constants(model, graph) -> int:
    """Store every sparse constant dense; a DENSIFY op of a constant becomes that constant's dense copy."""
    schema = _schema()
    count = 0
    for tensor in graph.tensors:
        if tensor.sparsity is not None and _data(model, tensor) is not None:
            where = f"sparse constant '{tensor.name.decode(errors='replace') if isinstance(tensor.name, bytes) else tensor.name}'"
            model.buffers[tensor.buffer].data = np.ascontiguousarray(tflite_file.dense(tensor, _data(model, tensor), where)).ravel().view(np.uint8)
            tensor.sparsity = None
            count += 1
    kept = []
    for op in graph.operators:
        if _builtin(model.operatorCodes[op.opcodeIndex]) == schema.BuiltinOperator.DENSIFY \
                and _data(model, graph.tensors[op.inputs[0]]) is not None:
            source, target = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
            target.buffer = source.buffer
            continue
        kept.append(op)
    graph.operators = kept
    return count


# ---- flatbuffer helpers ----------------------------------------------------------------------------

def _drop_unused_codes(model) -> None:
    """Operator codes no op uses any more (a rewritten custom op, DENSIFY): some interpreters resolve
    every code in the table, used or not."""
    used = sorted({int(op.opcodeIndex) for graph in model.subgraphs for op in graph.operators})
    new_index = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for graph in model.subgraphs:
        for op in graph.operators:
            op.opcodeIndex = new_index[int(op.opcodeIndex)]


def _schema():
    from ..tflite_file import schema
    return schema()


def _builtin(code) -> int:
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def _custom_code(code) -> str:
    return code.customCode.decode(errors="replace") if isinstance(code.customCode, bytes) else str(code.customCode or "")


def _tensor_name(graph, index: int) -> str:
    name = graph.tensors[index].name
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _data(model, tensor) -> np.ndarray | None:
    buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
    if buffer is None or buffer.data is None or not len(buffer.data):
        return None
    return np.frombuffer(bytes(buffer.data), np.uint8)


def _add_tensor(graph, name: str, like=None, shape=None, dtype: int = 0, buffer: int = 0) -> int:
    schema = _schema()
    tensor = schema.TensorT()
    tensor.name = name.encode()
    tensor.shape = np.array(shape if shape is not None else like.shape, np.int32)
    tensor.type = like.type if like is not None else dtype
    tensor.buffer = buffer
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _constant(model, graph, name: str, value: np.ndarray) -> int:
    schema = _schema()
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value.tobytes(), np.uint8)
    model.buffers.append(buffer)
    dtype = {np.dtype(np.int32): schema.TensorType.INT32}[value.dtype]
    return _add_tensor(graph, name, shape=list(value.shape), dtype=dtype, buffer=len(model.buffers) - 1)


def _operator(model, builtin: int, inputs: list[int], outputs: list[int], options_type: int, options):
    schema = _schema()
    for index, code in enumerate(model.operatorCodes):
        if _builtin(code) == builtin and not code.customCode:
            break
    else:
        code = schema.OperatorCodeT()
        code.builtinCode = builtin
        code.deprecatedBuiltinCode = min(builtin, 127)
        code.version = 1
        model.operatorCodes.append(code)
        index = len(model.operatorCodes) - 1
    op = schema.OperatorT()
    op.opcodeIndex = index
    op.inputs, op.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _options(cls, **values):
    options = cls()
    for key, value in values.items():
        setattr(options, key, value)
    return options


# ---- output layout ---------------------------------------------------------------------------------

CHANNELS_LAST = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}  # NCHW-style -> NHWC-style


def channels_first(shape: tuple) -> tuple | None:
    """The channels-first shape a channels-last output stands for (None for ranks without a layout)."""
    perm = CHANNELS_LAST.get(len(shape))
    return None if perm is None else tuple(shape[perm.index(i)] for i in range(len(shape)))


def transpose_outputs(path: Path, positions: list[int]) -> None:
    """Append a TRANSPOSE channels-last -> channels-first after each listed output of the main graph,
    in place (onnx2tf leaves 4-D outputs NHWC; the ONNX model, and whoever reads its outputs, has NCHW).
    The new output keeps the old one's name, type and quantization."""
    from ..tflite_file import read_model, write_model
    schema = _schema()
    model = read_model(path)
    graph = model.subgraphs[0]
    for position in positions:
        old = int(graph.outputs[position])
        tensor = graph.tensors[old]
        back = [CHANNELS_LAST[len(tensor.shape)].index(i) for i in range(len(tensor.shape))]
        name = _tensor_name(graph, old)
        tensor.name = f"{name}/channels_last".encode()
        new = _add_tensor(graph, name, like=tensor, shape=[int(tensor.shape[i]) for i in back])
        graph.tensors[new].quantization = tensor.quantization
        perm = _constant(model, graph, f"{name}/to_channels_first", np.array(back, np.int32))
        graph.operators.append(_operator(model, schema.BuiltinOperator.TRANSPOSE, [old, perm], [new],
                                         schema.BuiltinOptions.TransposeOptions, schema.TransposeOptionsT()))
        graph.outputs[position] = new
        for signature in model.signatureDefs or []:
            for output in signature.outputs or []:
                if int(output.tensorIndex) == old:
                    output.tensorIndex = new
    write_model(model, path)
