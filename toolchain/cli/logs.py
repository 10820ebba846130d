"""Native libraries' log output (TensorFlow, absl, onnxruntime, OpenVINO) kept off the terminal."""
from __future__ import annotations

import os
import sys
from typing import Callable


NOISY_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3", "TF_CPP_MIN_VLOG_LEVEL": "0",
             "ORT_LOGGING_LEVEL": "3", "OPENVINO_LOG_LEVEL": "0", "KERAS_BACKEND": "tensorflow"}
NOISY_LOGGERS = ("tensorflow", "absl", "keras", "tf2onnx", "onnx2tf", "nncf", "openvino", "onnxruntime", "h5py")


def silence_native_logs() -> Callable[[], None]:
    """Until the returned function is called, what native libraries (TensorFlow, absl, onnxruntime,
    OpenVINO) write to file descriptor 2 goes to a scratch log instead of the terminal: their
    start-up chatter must not come before our one-line errors. Python's own stderr stays on the
    terminal. `--verbose` (or EDGEKIT_VERBOSE=1) keeps everything."""
    import logging
    import tempfile
    import warnings
    for key, value in NOISY_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("", *NOISY_LOGGERS):  # "": the root logger, which onnxruntime.quantization warns through
        logging.getLogger(name).setLevel(logging.CRITICAL)  # their errors reach us as exceptions
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|tf2onnx|onnx2tf|nncf|openvino|onnxruntime|ai_edge_litert|h5py|google)")
    try:
        real_stderr = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real_stderr = False  # already captured (in-process tests): nothing native reaches it anyway
    if not real_stderr:
        return lambda: None
    sys.stderr.flush()
    terminal = os.dup(2)
    log = tempfile.TemporaryFile(prefix="edgekit-log-")
    os.dup2(log.fileno(), 2)
    previous = sys.stderr
    sys.stderr = open(os.dup(terminal), "w", encoding=previous.encoding, errors=previous.errors, buffering=1)

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        sys.stderr.close()
        sys.stderr = previous
        log.close()
    return restore
