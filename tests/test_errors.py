"""Every user error: one line naming the problem and the fix, exit code 2, nothing half-written."""
from __future__ import annotations

import numpy as np
import pytest

from clihelp import assert_user_error, run_cli


def convert(capsys, *args):
    return run_cli(capsys, "convert", *args, "--runs", "1", "--warmup", "0")


def truncated_copy(src, tmp_path, keep=0.5):
    dst = tmp_path / f"cut{src.suffix}"
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_missing_model_file(capsys):
    assert_user_error(convert(capsys, "nope.keras"), "not found", "nope.keras")


def test_empty_model_file(capsys, tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert_user_error(convert(capsys, tmp_path / "empty.onnx"), "empty")


@pytest.mark.parametrize("kind", ["keras", "onnx", "tflite", "h5"])
def test_truncated_model(kind, make_model, capsys, tmp_path):
    assert_user_error(convert(capsys, truncated_copy(make_model(kind), tmp_path)), "cut")


def test_garbage_with_a_model_extension(capsys, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07this is not protobuf" * 10)
    assert_user_error(convert(capsys, tmp_path / "junk.onnx"), "corrupt")


def test_kind_comes_from_content_not_extension(make_model, capsys, tmp_path):
    disguised = tmp_path / "model.bin"
    disguised.write_bytes(make_model("tflite").read_bytes())
    result = convert(capsys, disguised, "--format", "onnx", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    assert '"kind": "tflite"' in (tmp_path / "o" / "report.json").read_text()


def test_unknown_target(tiny_keras, capsys):
    assert_user_error(convert(capsys, tiny_keras, "--target", "toaster"), "unknown target", "toaster", "cpu")


def test_unknown_format(tiny_keras, capsys):
    assert_user_error(convert(capsys, tiny_keras, "--format", "coreml"), "unknown artifact format", "coreml")


def test_unsupported_onnx_op(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "custom.onnx"))
    assert_user_error(convert(capsys, tmp_path / "custom.onnx"), "unsupported op", "FancyOp")


def test_lambda_is_refused_without_trust(capsys, tmp_path):
    import keras
    from conftest import build_tiny_keras
    path = tmp_path / "lambda.keras"
    build_tiny_keras(keras, with_lambda=True).save(path)
    assert_user_error(convert(capsys, path), "lambda", "--trust-model")
    assert not (tmp_path / "edgekit-out").exists()
    trusted = convert(capsys, path, "--trust-model", "--format", "tflite")
    assert trusted.code == 0, trusted.err


def test_dynamic_spatial_dims_need_a_shape(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "dyn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dyn.onnx"))
    assert_user_error(convert(capsys, tmp_path / "dyn.onnx"), "dynamic dims", "--input-shape")
    assert_user_error(convert(capsys, tmp_path / "dyn.onnx", "--input-shape", "1,3,x,8"), "not a list of integers")
    assert_user_error(convert(capsys, tmp_path / "dyn.onnx", "--input-shape", "1,3,8"), "rank")
    ok = convert(capsys, tmp_path / "dyn.onnx", "--input-shape", "1,3,8,8", "--format", "onnx")
    assert ok.code == 0, ok.err


def test_data_file_missing(tiny_keras, capsys):
    assert_user_error(convert(capsys, tiny_keras, "--data", "val.npz"), "data file not found")


def test_data_with_wrong_shape(tiny_keras, capsys, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4))
    assert_user_error(convert(capsys, tiny_keras, "--data", tmp_path / "bad.npz"), "shape", "(4, 8, 8)")


def test_data_with_nan(tiny_keras, capsys, tmp_path):
    x = np.zeros((4, 8, 8, 1), np.float32)
    x[1, 2, 3, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    assert_user_error(convert(capsys, tiny_keras, "--data", tmp_path / "nan.npz"), "NaN")


def test_data_without_x(tiny_keras, capsys, tmp_path):
    np.savez(tmp_path / "nox.npz", inputs=np.zeros((4, 8, 8, 1), np.float32))
    assert_user_error(convert(capsys, tiny_keras, "--data", tmp_path / "nox.npz"), "no array named 'x'", "inputs")


def test_data_that_is_not_npz(tiny_keras, capsys, tmp_path):
    (tmp_path / "val.npz").write_text("hello")
    assert_user_error(convert(capsys, tiny_keras, "--data", tmp_path / "val.npz"), "not a readable .npz")


def test_existing_out_dir_needs_force(tiny_keras, capsys, tmp_path):
    out = tmp_path / "out"
    assert convert(capsys, tiny_keras, "--out", out, "--format", "onnx").code == 0
    assert_user_error(convert(capsys, tiny_keras, "--out", out, "--format", "onnx"), "already exists", "--force")
    (out / "model.onnx").write_bytes(b"old")
    assert convert(capsys, tiny_keras, "--out", out, "--format", "onnx", "--force").code == 0
    assert (out / "model.onnx").read_bytes() != b"old"


def test_force_never_replaces_a_directory_edgekit_did_not_write(tiny_keras, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(convert(capsys, tiny_keras, "--out", out, "--format", "onnx", "--force"),
                      "not written by edgekit", "choose another --out")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_bench_missing_artifact(capsys):
    assert_user_error(run_cli(capsys, "bench", "missing.tflite"), "artifact not found")


def test_one_line_means_one_line_in_a_real_process(tiny_keras, tmp_path):
    """TensorFlow's C++ start-up lines (absl, oneDNN, cpu_feature_guard) never come before the error."""
    import subprocess
    import sys
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 8, 8), np.float32))
    args = [sys.executable, "-m", "edgekit", "convert", str(tiny_keras), "--data", str(tmp_path / "bad.npz")]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("TF_CPP", "GLOG"))}
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert quiet.returncode == 2 and quiet.stdout == ""
    assert len(quiet.stderr.splitlines()) == 1 and quiet.stderr.startswith("error: "), quiet.stderr
    verbose = subprocess.run([*args, "--verbose"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert verbose.returncode == 2 and verbose.stderr.splitlines()[-1] == quiet.stderr.strip()
    assert len(verbose.stderr.splitlines()) > 1  # the libraries' own lines, when asked for


def test_library_log_records_stay_off_the_terminal(tmp_path):
    """tf2onnx logs an ERROR record for every TF op it leaves untranslated (Keras' exact GELU gives
    Erfc, which edgekit then rewrites): a run that succeeds prints none of them."""
    import subprocess
    import sys
    import tensorflow as tf

    class Gelu(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def serve(self, x):
            return tf.nn.gelu(x, approximate=False)  # 0.5 x erfc(-x / sqrt 2)
    module = Gelu()
    tf.saved_model.save(module, str(tmp_path / "gelu"), signatures=module.serve)
    args = [sys.executable, "-m", "edgekit", "convert", str(tmp_path / "gelu"), "--format", "onnx",
            "--runs", "2", "--warmup", "1", "--out", str(tmp_path / "out")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Erfc" not in done.stderr and "not supported" not in done.stderr, done.stderr


def test_a_native_library_error_fails_that_artifact_only(tiny_keras, capsys, tmp_path, monkeypatch):
    """A RuntimeError out of a native library (LiteRT's 'Node number 22 (DIV) failed to invoke') while one
    artifact is built fails that artifact with the library's line; the others are still built."""
    import json
    from edgekit.backends import tflite

    def native_failure(*args, **kwargs):
        raise RuntimeError("tflite/kernels/div.cc:262 data[i] != zero_point was not true.Node number 22 (DIV) failed")
    monkeypatch.setattr(tflite, "quantize", native_failure)
    result = run_cli(capsys, "convert", tiny_keras, "--target", "cpu-int8", "--format", "tflite", "--format", "onnx",
                     "--calib", "random", "--runs", "1", "--warmup", "0", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    artifacts = {(a["format"], a["precision"]): a for a in json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"]}
    failed = artifacts[("tflite", "int8")]
    assert failed["status"] == "failed" and "native library" in failed["reason"] and "DIV" in failed["reason"]
    assert artifacts[("onnx", "int8")]["status"] == "ok"
