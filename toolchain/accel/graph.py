"""The accelerator's view of a .tflite graph: edgekit.tflite_file (the one .tflite reader), re-exported
under the name the accelerator modules use."""
from ..tflite_file import (DTYPES, Op, Tensor, constant, load, model_bytes, op_names, read_model,  # noqa: F401
                           schema, single_op_models, type_names, write_model)
