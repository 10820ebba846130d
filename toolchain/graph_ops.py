"""Which TensorFlow graph ops reach outside the model (files, the process, the network), and which
of them a SavedModel holds: such a model is refused without --trust-model, as a Keras Lambda is
(loading or converting it would run them).

The list is built from TensorFlow's own op registry, by category, not by hand:

* every op of the generated op modules that exist to touch files or the process: `gen_io_ops`
  (ReadFile, WriteFile, MatchingFiles, Save/Restore, readers), `gen_script_ops` (py_func),
  `gen_summary_ops` (summary writers), `gen_checkpoint_ops` (vocabulary and checkpoint files),
  `gen_filesystem_ops`, `gen_debug_ops` (tensor dumps to `file://` URLs);
* every registered op with an input or attribute that names a file, a directory or an address
  (`filename`, `filenames`, `file_pattern`, `path`, `logdir`, `address`, ...): lookup-table
  initialisers from text files, dataset readers and writers (TFRecord, text line, CSV, LMDB,
  cache, snapshot, save/load), data-service and RPC ops, memory-mapped constants;
* `PrintV2` whose `output_stream` is not stdout, stderr or the log (`file://...`).

Save/Restore ops are allowed only in the functions the SavedModel's saver runs (the variable
restore that loading itself performs), never in anything the served signature or an
initialiser can call.
"""
from __future__ import annotations

import functools
from pathlib import Path

from .errors import EdgekitError

CATEGORIES = {"gen_io_ops": "file I/O", "gen_script_ops": "runs Python", "gen_summary_ops": "writes summaries",
              "gen_checkpoint_ops": "reads checkpoint or vocabulary files", "gen_filesystem_ops": "file system",
              "gen_debug_ops": "dumps tensors to files"}
FILE_ARGS = frozenset({"filename", "filenames", "file_pattern", "path", "logdir", "debug_urls", "dump_root",
                       "address", "server_address", "memory_region_name"})
PRINT_STREAMS = frozenset({"stdout", "stderr", "log(info)", "log(warning)", "log(error)"})
CHECKPOINT_PREFIXES = ("Save", "Restore", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec")


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, str]:
    """op name -> why it is refused, for every such op TensorFlow registers."""
    import tensorflow as tf
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session as c_api
    ops = op_def_pb2.OpList()
    ops.ParseFromString(c_api.TF_GetBuffer(c_api.TF_GetAllOpList()))
    refused = {}
    for op in ops.op:
        module = getattr(getattr(tf.raw_ops, op.name, None), "__module__", "").rpartition(".")[2]
        named = sorted(FILE_ARGS & {a.name for a in (*op.input_arg, *op.attr)})
        if module in CATEGORIES:
            refused[op.name] = CATEGORIES[module]
        elif named:
            refused[op.name] = f"takes a {named[0]}"
    return refused


def _called(node) -> set[str]:
    """Functions a node calls (StatefulPartitionedCall's f, If/While branches, map functions...)."""
    names = set()
    for value in node.attr.values():
        if value.func.name:
            names.add(value.func.name)
        names |= {f.name for f in value.list.func}
    return names


def _closure(roots: set[str], functions: dict) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        todo += [c for n in functions[name].node_def for c in _called(n)]
    return seen


def _saver_nodes(graph) -> set[str]:
    """Top-level nodes of the saver (TF2: the save and restore calls; TF1: its whole name scope)."""
    saver = graph.saver_def
    names = {t.split(":")[0] for t in (saver.save_tensor_name, saver.restore_op_name, saver.filename_tensor_name) if t}
    scopes = tuple(n.rpartition("/")[0] + "/" for n in names if "/" in n)
    return {n.name for n in graph.graph_def.node if n.name in names or (scopes and n.name.startswith(scopes))}


def _why(node, refused: dict[str, str], in_saver: bool) -> str | None:
    if node.op == "PrintV2":
        stream = node.attr["output_stream"].s.decode(errors="replace") if "output_stream" in node.attr else "stderr"
        return None if stream in PRINT_STREAMS else f"prints to {stream[:60]}"
    if in_saver and node.op.startswith(CHECKPOINT_PREFIXES):
        return None
    return refused.get(node.op)


def unsafe_ops(saved_model_dir: Path) -> dict[str, str]:
    """op -> why, for each op of a SavedModel that reaches outside the model (read from saved_model.pb)."""
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EdgekitError(f"{Path(saved_model_dir).name}/saved_model.pb is corrupt ({text})",
                           "re-export the SavedModel") from None
    refused, found = registry(), {}
    for graph in proto.meta_graphs:
        functions = {f.signature.name: f for f in graph.graph_def.library.function}
        saver = _saver_nodes(graph)
        top = graph.graph_def.node
        served = _closure({c for n in top if n.name not in saver for c in _called(n)}
                          | (set(functions) - _closure({c for n in top if n.name in saver for c in _called(n)},
                                                       functions)), functions)
        scanned = [(n, n.name in saver) for n in top]
        scanned += [(n, name not in served) for name, f in functions.items() for n in f.node_def]
        for node, in_saver in scanned:
            why = _why(node, refused, in_saver)
            if why:
                found[node.op] = why
    return found
