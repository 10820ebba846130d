"""SavedModels that reach outside the model (issue #25): one per class of op that touches the file
system or the process, each refused without --trust-model; the variable restore loading performs
is not refused. The refused ops come from TensorFlow's op registry by category (edgekit.graph_ops)."""
from __future__ import annotations

import pytest

from clihelp import assert_user_error, run_cli
from edgekit import graph_ops

SPEC = [((1, 4), "float32")]


def _served(body):
    """A SavedModel whose serving function runs `body(tf, x, folder)`; returns its directory."""
    def build(tf, folder):
        class M(tf.Module):
            def __init__(self):
                self.v = tf.Variable(tf.ones([1, 4]))  # a variable: the saver's Save/Restore are in the graph

            @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
            def __call__(self, x):
                return {"y": body(tf, x, folder) * self.v}
        module = M()
        tf.saved_model.save(module, str(folder / "sm"), signatures={"serving_default": module.__call__})
    return build


def _print_to_file(tf, x, folder):
    tf.print(x, output_stream=f"file://{folder / 'printed'}")
    return x


def _read_file(tf, x, folder):
    return x + tf.cast(tf.strings.length(tf.io.read_file(str(folder / "secret"))), tf.float32)


def _matching_files(tf, x, folder):
    return x + tf.cast(tf.size(tf.io.matching_files(str(folder / "*"))), tf.float32)


def _save_restore(tf, x, folder):
    tf.raw_ops.SaveV2(prefix=str(folder / "ckpt"), tensor_names=["x"], shape_and_slices=[""], tensors=[x])
    return tf.raw_ops.RestoreV2(prefix=str(folder / "ckpt"), tensor_names=["x"], shape_and_slices=[""],
                                dtypes=[tf.float32])[0]


def _dataset_reader(tf, x, folder):
    lines = tf.data.TextLineDataset(str(folder / "secret")).reduce(tf.constant(0.0), lambda a, _: a + 1.0)
    return x + lines


def _py_func(tf, x, folder):
    y = tf.py_function(lambda v: v * 2.0, [x], tf.float32)
    y.set_shape([1, 4])
    return y


def _lookup_table(tf, folder):
    (folder / "vocab.txt").write_text("a\nb\n")

    class M(tf.Module):
        def __init__(self):
            init = tf.lookup.TextFileInitializer(str(folder / "vocab.txt"), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                                 tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
            self.table = tf.lookup.StaticHashTable(init, -1)

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return {"y": x + tf.cast(self.table.lookup(tf.constant("b")), tf.float32)}
    module = M()
    tf.saved_model.save(module, str(folder / "sm"), signatures={"serving_default": module.__call__})


CLASSES = {"print to a file": (_served(_print_to_file), "PrintV2", "prints to file://"),
           "read a file": (_served(_read_file), "ReadFile", "file I/O"),
           "list files": (_served(_matching_files), "MatchingFiles", "file I/O"),
           "save/restore when served": (_served(_save_restore), "SaveV2", "file I/O"),
           "dataset reader": (_served(_dataset_reader), "TextLineDataset", "takes a filenames"),
           "py_func": (_served(_py_func), "EagerPyFunc", "runs Python"),
           "lookup table from a file": (_lookup_table, "InitializeTableFromTextFileV2", "takes a filename")}


@pytest.mark.parametrize("case", list(CLASSES))
def test_each_class_of_outside_op_is_refused(case, tmp_path):
    import tensorflow as tf
    build, op, why = CLASSES[case]
    (tmp_path / "secret").write_text("x\n")
    build(tf, tmp_path)
    found = graph_ops.unsafe_ops(tmp_path / "sm")
    assert found.get(op, "").startswith(why), found
    assert not (tmp_path / "printed").exists() and not (tmp_path / "ckpt.index").exists()


def test_the_variable_restore_of_loading_is_not_refused_and_the_cli_says_one_line(capsys, tmp_path):
    import tensorflow as tf
    (tmp_path / "plain").mkdir()
    _served(lambda tf, x, folder: x)(tf, tmp_path / "plain")
    assert graph_ops.unsafe_ops(tmp_path / "plain" / "sm") == {}  # SaveV2/RestoreV2 only in the saver's functions
    _served(_print_to_file)(tf, tmp_path)
    assert_user_error(run_cli(capsys, "convert", tmp_path / "sm", "--format", "onnx", "--out", tmp_path / "o"),
                      "PrintV2: prints to file://", "--trust-model")
    assert not (tmp_path / "printed").exists() and not (tmp_path / "o").exists()


def test_the_list_comes_from_the_registry_by_category():
    refused = graph_ops.registry()
    assert {"WriteFile", "ReadFile", "MatchingFiles", "SaveV2", "RestoreV2", "PyFunc", "EagerPyFunc",
            "TFRecordDataset", "CreateSummaryFileWriter", "InitializeTableFromTextFileV2", "ImmutableConst"} <= set(refused)
    assert not {"MatMul", "Conv2D", "ReadVariableOp", "StaticRegexReplace", "PrintV2", "Identity"} & set(refused)
    assert len(refused) > 80  # whole categories, not a hand list
