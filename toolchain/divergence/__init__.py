"""Layer-wise divergence of a quantized artifact from its float model, tensor by tensor.

The artifact and its float reference (the fp32 artifact of the same format, as `edgekit convert` writes it
in `fp32/`: the same converter's graph, verified against the source model) run side by side on the same
samples, every intermediate tensor read back (one module per format: tflite, onnx, openvino, fpga).
Each artifact node is mapped to a reference node by name first (TFLite tensor names, ONNX node names,
OpenVINO friendly names survive quantization), else by shape + order between two name-matched neighbours;
QUANTIZE/DEQUANTIZE ops share their input's match. The source layer is read from the reference name
(`passes.sensitivity.layer_of`: TF scopes, PyTorch module paths).

API (used by `edgekit explain` and by automatic mixed precision):

    layer_divergence(artifact: Path, fmt: str, reference: Path, samples, spec=None) -> list[LayerDivergence]
        fmt: "tflite" | "onnx" | "openvino" | "fpga" (the int8 .tflite run on the accelerator emulator;
        `spec` = the profile's AcceleratorSpec, reference = the fp32 .tflite).
        samples: list of batch-1 samples, each a list of arrays (one per input; each tap casts it to the type
        the artifact declares: int32 token ids stay integers, int8-io inputs take floats quantized), as
        `Calibration.samples` / `EvalSet.samples`; or one ndarray stacked on axis 0 (single-input model).
        Returns every compute node of the artifact in topological order; snr_db is None where no
        reference tensor was found.
    first_divergent(rows, gate_db) -> LayerDivergence | None   the first row below the gate
    worst(rows, n=5) -> list[LayerDivergence]                    lowest SNR first
    gate_db(precision) -> float                                  measure.TOLERANCE[precision]["min_snr_db"]
    summary(artifact, fmt, reference, samples, precision, spec=None) -> dict   the JSON `edgekit explain`
        prints and convert's report keeps for a MISMATCH (first, worst, every op, how many were mapped)
    reason(summary) -> str                                       its one line
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import measure
from ..passes.sensitivity import layer_of
from .base import Node

FORMATS = ("tflite", "onnx", "openvino", "fpga")


@dataclass(frozen=True)
class LayerDivergence:
    index: int                 # position in the artifact's topological order
    op: str                    # artifact op/node name (TFLite: its output tensor's name)
    tensor: str                # artifact output tensor name
    op_type: str               # FULLY_CONNECTED, Conv, MatMul, ...
    reference: str | None      # the matched node of the float model (ONNX node / OpenVINO op / TFLite tensor)
    layer: str | None          # source layer it belongs to (Keras layer, PyTorch module path, ONNX node)
    matched_by: str | None     # "name", "name family + order", "shape+order" (+ ", fused chain": the last of
    #                            float ops the quantizer fused), "through its input/consumer (QUANTIZE)"; None
    snr_db: float | None       # output tensor vs the float model's, over all samples
    input_scales: tuple        # quantization scale of each non-constant input (None: float, per-channel)
    output_scale: float | None
    samples: int

    def as_dict(self) -> dict:
        return {**asdict(self), "input_scales": list(self.input_scales)}


def gate_db(precision: str) -> float:
    return measure.TOLERANCE[precision]["min_snr_db"]


def first_divergent(rows: list[LayerDivergence], gate: float) -> LayerDivergence | None:
    return next((r for r in rows if r.snr_db is not None and r.snr_db < gate), None)


def worst(rows: list[LayerDivergence], n: int = 5) -> list[LayerDivergence]:
    return sorted((r for r in rows if r.snr_db is not None), key=lambda r: (r.snr_db, r.index))[:n]


def summary(artifact: Path, fmt: str, reference: Path, samples, precision: str, spec=None, top: int = 5) -> dict:
    rows = layer_divergence(artifact, fmt, reference, samples, spec)
    gate = gate_db(precision)
    first = first_divergent(rows, gate)
    mapped: dict[str, int] = {}
    for r in rows:
        how = (r.matched_by or "unmatched").split(" (")[0]
        mapped[how] = mapped.get(how, 0) + 1
    return {"format": fmt, "gate_db": gate, "precision": precision, "samples": rows[0].samples if rows else 0,
            "first_divergent": first.as_dict() if first else None, "worst": [r.as_dict() for r in worst(rows, top)],
            "ops": [r.as_dict() for r in rows], "mapped": mapped, "how": measure.how(
                measure.EMULATED if fmt == "fpga" else measure.MEASURED,
                "accelerator emulator vs LiteRT" if fmt == "fpga" else f"{fmt} runtime, every tensor")}


def reason(result: dict) -> str:
    """One line: the first op below the gate, or that none is."""
    first = result["first_divergent"]
    if first is None:
        lowest = result["worst"][0] if result["worst"] else None
        return f"no op falls below {result['gate_db']:g} dB on {result['samples']} sample(s)" + (
            f" (lowest: {describe(lowest)})" if lowest else "")
    return f"first op below {result['gate_db']:g} dB: {describe(first)}"


def describe(row: dict) -> str:
    scales = ", ".join("float" if s is None else f"{s:.3g}" for s in row["input_scales"]) or "-"
    out = "float" if row["output_scale"] is None else f"{row['output_scale']:.3g}"
    layer = f" (layer {row['layer']})" if row["layer"] and row["layer"] != row["op"] else ""
    name = row["op"].split(";")[0] + (";..." if ";" in row["op"] else "")
    return (f"{row['op_type']} '{name}'{layer}, SNR {row['snr_db']:.1f} dB, "
            f"input scale {scales}, output scale {out}")


def layer_divergence(artifact: Path, fmt: str, reference: Path, samples, spec=None) -> list[LayerDivergence]:
    """Every compute node of `artifact` in topological order with its SNR against `reference` (see the
    module docstring)."""
    samples = _as_samples(samples)
    art, ref = open_graph(fmt, Path(artifact), spec), open_graph("tflite" if fmt == "fpga" else fmt, Path(reference))
    got, want = art.run(samples[0]), ref.run(samples[0])
    pairs = match(art.nodes, ref.nodes, got, want)
    sums = {key: [0.0, 0.0, 0] for key in pairs}  # signal, noise, samples compared
    for n in range(len(samples)):
        if n:
            got, want = art.run(samples[n]), ref.run(samples[n])
        for key, pair in pairs.items():
            a, r = _flat(got.get(key)), _flat(want.get(ref.nodes[pair[0]].key))
            if a is None or r is None or a.size != r.size:
                continue
            sums[key][0] += float(np.sum(r ** 2))
            sums[key][1] += float(np.sum((r - a) ** 2))
            sums[key][2] += 1
    return [_row(k, node, ref.nodes, pairs.get(node.key), sums.get(node.key), len(samples))
            for k, node in enumerate(art.nodes)]


def open_graph(fmt: str, path: Path, spec=None):
    if fmt == "tflite":
        from . import tflite
        return tflite.Graph(path)
    if fmt == "onnx":
        from . import onnx
        return onnx.Graph(path)
    if fmt == "openvino":
        from . import openvino
        return openvino.Graph(path)
    if fmt == "fpga":
        from . import fpga
        return fpga.Graph(path, spec)
    raise ValueError(f"no divergence tap for format {fmt!r} (have: {', '.join(FORMATS)})")


def match(art: list[Node], ref: list[Node], got: dict, want: dict) -> dict[str, tuple[int, str]]:
    """Artifact node key -> (reference node index, how): by name; then the k-th node of a name family
    (a positional name with its counter dropped) to the k-th of the same family where both graphs have
    as many; then by shape + order between matched neighbours; QUANTIZE-like nodes through their input."""
    shape = lambda values, key: None if values.get(key) is None else np.squeeze(values[key]).shape  # noqa: E731
    same_shape = lambda a, j: shape(got, a.key) is not None and shape(got, a.key) == shape(want, ref[j].key)  # noqa: E731
    by_name: dict[str, int] = {}
    for j, node in enumerate(ref):
        for name in sorted(node.names):
            by_name.setdefault(name, j)
    pairs: dict[str, tuple[int, str]] = {}
    for node in art:
        j = next((by_name[n] for n in sorted(node.names) if n in by_name and same_shape(node, by_name[n])), None)
        if j is not None:
            pairs[node.key] = (j, "name")
    _by_family(art, ref, pairs, same_shape)
    for node in art:  # a requantizing op matched by name passes its match back to its input (TFLite's output)
        if node.key in pairs and node.same_as is not None and node.same_as not in pairs:
            pairs[node.same_as] = (pairs[node.key][0], f"through its consumer ({node.op_type})")
    _fused_chains(art, ref, pairs, same_shape, got, want)
    _by_order(art, ref, pairs, same_shape, got, want)
    for node in art:
        if node.key not in pairs and node.same_as in pairs:
            pairs[node.key] = (pairs[node.same_as][0], f"through its input ({node.op_type})")
    return pairs


def _fused_chains(art: list[Node], ref: list[Node], pairs: dict, same_shape, got: dict, want: dict) -> None:
    """A quantizer's optimiser fuses ops and keeps the first one's name (onnxruntime: Conv + BatchNormalization
    -> `Conv`, whose output is the BatchNormalization's): a matched node may stand for a chain of float ops
    up to the next match. Its output is compared with the chain member of its shape closest to it, when that
    one is FUSED_MARGIN_DB closer than the matched op (a broken op is far from all of them)."""
    used = {pair[0] for pair in pairs.values()}
    order = [pairs[a.key][0] if a.key in pairs else None for a in art]
    for i, node in enumerate(art):
        if order[i] is None or node.op_type == "input" or node.same_as is not None:
            continue
        j, how = pairs[node.key][:2]
        end = min((k for k in order[i + 1:] if k is not None and k > j), default=len(ref))
        chain = [c for c in range(j + 1, end) if c not in used and same_shape(node, c)]
        if not chain:
            continue
        snr = {c: _snr(want[ref[c].key], got[node.key]) for c in [j, *chain]}
        best = max(chain, key=lambda c: (snr[c], -c))
        if snr[best] >= snr[j] + FUSED_MARGIN_DB:
            pairs[node.key] = (best, f"{how}, fused chain", j)  # the layer is still the chain's head
            used.add(best)


def _by_family(art: list[Node], ref: list[Node], pairs: dict, same_shape) -> None:
    families: dict[str, tuple[list, list]] = {}
    for i, node in enumerate(art):
        if node.family:
            families.setdefault(node.family, ([], []))[0].append(i)
    for j, node in enumerate(ref):
        if node.family in families:
            families[node.family][1].append(j)
    used = {pair[0] for pair in pairs.values()}
    for mine, theirs in families.values():
        if len(mine) != len(theirs):
            continue  # a quantizer fused or added some: order within the family says nothing
        for i, j in zip(mine, theirs):
            if art[i].key not in pairs and j not in used and same_shape(art[i], j):
                pairs[art[i].key] = (j, "name family + order")
                used.add(j)


def _by_order(art: list[Node], ref: list[Node], pairs: dict, same_shape, got: dict, want: dict) -> None:
    """The nodes left, run by run between two matched neighbours: within the reference nodes between those
    neighbours' matches, pairs of the same shape, the closest on the first sample first (SNR, then same op
    type), down to MIN_ORDER_SNR_DB. A quantizer that splits or fuses ops leaves look-alikes of the right
    shape (HardSwish -> HardSigmoid + Mul, Conv + Relu -> Conv): the one that really is the float op wins, a
    node with no float counterpart stays unmatched."""
    used = {pair[0] for pair in pairs.values()}
    run: list[int] = []
    for i in range(len(art) + 1):
        if i < len(art) and art[i].key not in pairs and art[i].same_as is None:
            run.append(i)
            continue
        if run:
            low = max((pairs[a.key][0] for a in art[:run[0]] if a.key in pairs), default=-1)
            high = min((pairs[a.key][0] for a in art[run[-1] + 1:] if a.key in pairs), default=len(ref))
            scored = sorted(((_snr(want[ref[j].key], got[art[k].key]), art[k].op_type == ref[j].op_type, -j, k)
                             for k in run for j in range(low + 1, high) if j not in used and same_shape(art[k], j)),
                            reverse=True)
            for snr, _, j, k in scored:
                if snr >= MIN_ORDER_SNR_DB and -j not in used and art[k].key not in pairs:
                    pairs[art[k].key] = (-j, "shape+order")
                    used.add(-j)
            run = []


FUSED_MARGIN_DB = 3.0  # a chain member replaces the matched op only when it is this much closer
MIN_ORDER_SNR_DB = 0.0  # closer to the float tensor than zeros are: a weaker match is no match


def _snr(reference, actual) -> float:
    r, a = _flat(reference), _flat(actual)
    return measure.snr_db(float(np.sum(r ** 2)), float(np.sum((r - a) ** 2)))


def _row(index: int, node: Node, ref: list[Node], pair, sums, samples: int) -> LayerDivergence:
    matched = ref[pair[0]] if pair else None
    head = ref[pair[2]] if pair and len(pair) > 2 else matched
    snr = measure.snr_db(sums[0], sums[1]) if sums and sums[2] else None
    return LayerDivergence(index, node.op, node.tensor, node.op_type, matched.op if matched else None,
                           source_layer(head) if head else None, pair[1] if pair else None, snr,
                           tuple(node.input_scales), node.output_scale, samples)


def source_layer(node: Node) -> str:
    """The source layer of a reference node: from its name, else from its weights' name (TFLite names a
    model's last op after the output, `Identity`, and its weights after the layer)."""
    name = node.op.split(";")[0]
    name = name if "/" in name or not node.scope else node.scope.split(";")[0]
    parts = [p for p in name.split("/") if p]
    lead = 0
    while lead < len(parts) - 1 and _MODEL_SCOPE.fullmatch(parts[lead]):
        lead += 1
    if lead >= 2 and lead < len(parts) - 1:  # nested models (`model_1/model/bn_11/FusedBatchNormV3`): the scope
        return parts[lead]                   # under the models', as written (layers.matches_layer)
    return layer_of(name)


_MODEL_SCOPE = re.compile(r"(model|functional|sequential)(_\d+)?")


def _flat(values) -> np.ndarray | None:
    return None if values is None else np.ravel(values).astype(np.float64)


def _as_samples(samples) -> list[list[np.ndarray]]:
    if isinstance(samples, np.ndarray):
        return [[samples[n:n + 1]] for n in range(len(samples))]
    samples = [list(s) for s in samples]
    if not samples:
        raise ValueError("layer_divergence needs at least one sample")
    return samples
