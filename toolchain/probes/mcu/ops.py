"""TFLite Micro's operators and figures every part of the MCU engine shares: the op resolver's
lists, the .tflite read (operators, I/O tensors, execution order), the arena to allocate."""
from __future__ import annotations

import re
from pathlib import Path

HOW = "emulated (TFLite Micro host build)"
COMPILED = "compiled (arm-none-eabi-g++, section size from arm-none-eabi-size)"
STATED = "stated in the target profile"
ARENA_ALIGNMENT = 16  # TFLM: an arena that is not 16-byte aligned needs arena_used_bytes() + 16
TIMEOUT_S = 900

# Builtin operators the op resolver of the tflite-micro wheel registers (python_ops_resolver.cc
# of the pinned build; requirements/lock.txt), and its custom operators.
BUILTIN_OPS = frozenset("""
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND BROADCAST_ARGS
BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV
DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER
GATHER_ND GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND
LOGICAL_NOT LOGICAL_OR LOGISTIC LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL PACK PAD
PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_ALL REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH
SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV
UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE""".split())
CUSTOM_OPS = frozenset("""
CIRCULAR_BUFFER SignalDelay SignalEnergy SignalFftAutoScale SignalFilterBank SignalFilterBankLog
SignalFilterBankSpectralSubtraction SignalFilterBankSquareRoot SignalFramer SignalIrfft SignalOverlapAdd SignalPCAN
SignalRfft SignalStacker SignalWindow TFLM_DECODE TFLite_Detection_PostProcess ethos-u""".split())
MISSING_OP = re.compile(r"Didn't find op for (?:builtin opcode|custom op(?:code)?) '([^']+)'")
TFLITE_TYPES = {"float32": 1, "int32": 2, "uint8": 3, "int64": 4, "bool": 6, "int16": 7, "int8": 9}


def read_model(path: Path) -> dict:
    """Operator names (builtin, or custom codes as 'CUSTOM:name') and I/O tensors of a .tflite file."""
    from ...tflite_file import op_names, read_model as read_flatbuffer, type_names
    model = read_flatbuffer(path)
    names, types = op_names(), type_names()
    ops = set()
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), f"BUILTIN_{code.builtinCode}")
            ops.add(f"CUSTOM:{_text(code.customCode)}" if name == "CUSTOM" else name)
    graph = model.subgraphs[0]

    def tensor(i):
        t = graph.tensors[i]
        q = t.quantization
        scale = [float(s) for s in (q.scale if q is not None and q.scale is not None else [])]
        zero = [int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else [])]
        return {"name": _text(t.name), "shape": [int(d) for d in t.shape], "dtype": types[t.type],
                "scale": scale, "zero_point": zero}
    sequence = []
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        sequence.append((names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"),
                         [int(o) for o in op.outputs], [_text(graph.tensors[o].name) for o in op.outputs]))
    return {"ops": sorted(ops), "inputs": [tensor(i) for i in graph.inputs], "outputs": [tensor(i) for i in graph.outputs],
            "sequence": sequence}


def missing_ops(ops: list[str]) -> list[str]:
    return [op for op in ops if not (op.removeprefix("CUSTOM:") in CUSTOM_OPS if op.startswith("CUSTOM:")
                                     else op in BUILTIN_OPS)]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")



def arena_to_allocate(used_bytes: int) -> int:
    """TFLM's advice: arena_used_bytes() + 16 when the buffer may not be 16-byte aligned; rounded up to 16."""
    return -(-(used_bytes + ARENA_ALIGNMENT) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
