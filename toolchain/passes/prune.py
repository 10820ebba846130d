"""Pruning, written once over a small channel graph; Keras and ONNX supply the hooks.

* `magnitude:S` (unstructured): zero the fraction S of weights with the smallest magnitude, per
  layer or over all layers at once (`scope`). Dense runtimes run such a model no faster; it
  compresses better (the report shows gzip sizes and the real sparsity of each layer).
* `channels:R` (structured): remove the fraction R of the output channels of Conv/Dense layers,
  lowest L1 norm of their filters first, and rewrite every layer that depends on them. Layers
  whose channels are tied (the inputs of a residual Add, a depthwise conv and the conv before
  it) form one group and lose the same channels. The result is a smaller dense model.

Each framework describes its model as `ChannelNode`s (`keras_prune.py`, `onnx_prune.py`); the
grouping and the choice of channels happen here.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgekitError
from ..schema import option

METHODS = ("none", "magnitude", "channels")


@dataclass(frozen=True)
class PruneConfig:
    method: str = option("none", "none, magnitude (unstructured) or channels (structured).", choices=METHODS)
    amount: float = option(0.0, "Target sparsity (magnitude) or fraction of channels removed (channels), 0..1.")
    scope: str = option("per-layer", "magnitude: rank weights within each layer, or over all layers at once.",
                        choices=("per-layer", "global"))
    skip: list[str] = option([], "Layer names or types (e.g. Dense) never pruned.")
    skip_first_last: bool = option(True, "Never prune the first and the last prunable layer.")
    finetune_epochs: int = option(0, "Epochs of fine-tuning after pruning (Keras inputs with labelled --data).")


def parse(spec: str) -> tuple[str, float]:
    """`magnitude:0.8` -> ("magnitude", 0.8)."""
    match = re.fullmatch(r"(magnitude|channels):([0-9.]+)", spec.strip())
    if not match or not 0 < float(match.group(2)) < 1:
        raise EdgekitError(f"--prune '{spec}' is not METHOD:AMOUNT", "write magnitude:0.8 or channels:0.5 "
                           "(the amount strictly between 0 and 1)")
    return match.group(1), float(match.group(2))


def validate(config: PruneConfig) -> PruneConfig:
    if config.method != "none" and not 0 < config.amount < 1:
        raise EdgekitError(f"prune amount {config.amount} is out of range", "use a value strictly between 0 and 1")
    return config


def skipped(names_and_types: list[tuple[str, str]], config: PruneConfig) -> set[str]:
    """Names of prunable layers left alone: by name or type, and the first and last when asked."""
    names = {n for n, t in names_and_types if n in config.skip or t in config.skip}
    if config.skip_first_last and names_and_types:
        names |= {names_and_types[0][0], names_and_types[-1][0]}
    return names


# --- unstructured -------------------------------------------------------------------------------

def magnitude_masks(weights: dict[str, np.ndarray], config: PruneConfig) -> dict[str, np.ndarray]:
    """Boolean keep-masks zeroing the smallest-magnitude weights of each array (or of all together)."""
    if config.scope == "global":
        everything = np.concatenate([np.abs(w).ravel() for w in weights.values()])
        threshold = np.quantile(everything, config.amount) if everything.size else 0.0
        return {name: np.abs(w) > threshold for name, w in weights.items()}
    return {name: np.abs(w) > np.quantile(np.abs(w), config.amount) for name, w in weights.items()}


def sparsity_row(layer: str, weights: np.ndarray) -> dict:
    return {"layer": layer, "params": int(weights.size), "zeros": int(np.sum(weights == 0)),
            "sparsity": float(np.mean(weights == 0))}


# --- structured ---------------------------------------------------------------------------------

@dataclass
class ChannelNode:
    """One layer as the channel grouping sees it.

    role: "producer" makes a new channel space (Conv/Dense outputs); "pass" keeps its input's
    channels (BN, ReLU, pooling, depthwise conv) and slices its own per-channel parameters;
    "merge" ties its inputs' channels together (residual Add); "block" is anything else: the
    channels that reach it cannot change. `importance` is the L1 norm of each output filter.
    """
    name: str
    role: str
    inputs: list[str]
    kind: str = ""
    importance: np.ndarray | None = None
    prunable: bool = True


@dataclass
class ChannelPlan:
    keep: dict[str, np.ndarray] = field(default_factory=dict)  # channel-space root -> kept channel indices
    space: dict[str, str] = field(default_factory=dict)        # node -> root of the space its output lives in
    blocked: dict[str, str] = field(default_factory=dict)      # frozen producer -> the node that froze it

    def kept_out(self, node: str) -> np.ndarray | None:
        return self.keep.get(self.space.get(node, ""))

    def kept_in(self, producer_of_input: str) -> np.ndarray | None:
        return self.kept_out(producer_of_input)


def plan_channels(nodes: list[ChannelNode], outputs: list[str], ratio: float) -> ChannelPlan:
    """Group tied channel spaces and choose which channels each group keeps."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    plan = ChannelPlan()
    frozen: dict[str, str] = {}
    by_name = {n.name: n for n in nodes}
    for node in nodes:
        if node.role == "producer":
            plan.space[node.name] = root(node.name)
            if not node.prunable:
                frozen.setdefault(root(node.name), f"{node.name} (not pruned)")
        elif node.role in ("pass", "merge"):
            spaces = [plan.space[i] for i in node.inputs if i in plan.space]
            for other in spaces[1:]:
                parent[root(other)] = root(spaces[0])
            if spaces:
                plan.space[node.name] = root(spaces[0])
        else:  # block: whatever reaches it stays as it is
            for i in node.inputs:
                if i in plan.space:
                    frozen.setdefault(root(plan.space[i]), f"{node.name} ({node.kind or 'unsupported'})")
    for out in outputs:
        if out in plan.space:
            frozen.setdefault(root(plan.space[out]), "the model output")
    plan.space = {n: root(s) for n, s in plan.space.items()}
    frozen = {root(s): why for s, why in frozen.items()}
    importance: dict[str, np.ndarray] = {}
    for node in nodes:
        if node.role == "producer" and node.importance is not None:
            r = plan.space[node.name]
            importance[r] = importance.get(r, 0) + node.importance
    for r, score in importance.items():
        if r in frozen:
            continue
        keep = max(1, int(round(len(score) * (1 - ratio))))
        plan.keep[r] = np.sort(np.argsort(-score, kind="stable")[:keep])
    plan.blocked = {n.name: frozen[plan.space[n.name]] for n in nodes
                    if n.role == "producer" and n.prunable and plan.space[n.name] in frozen
                    and by_name[n.name].importance is not None}
    return plan


def flatten_rows(keep: np.ndarray, channels: int, spatial: int, channels_last: bool) -> np.ndarray:
    """Rows of a Dense/Gemm weight fed by a flattened feature map, for the kept channels."""
    if channels_last:  # index = s * C + c
        return np.sort((np.arange(spatial)[:, None] * channels + keep[None, :]).ravel())
    return np.sort((keep[:, None] * spatial + np.arange(spatial)[None, :]).ravel())  # index = c * S + s


def with_overrides(config: PruneConfig, spec: str | None, scope: str | None, skip: list[str],
                   finetune_epochs: int | None) -> PruneConfig:
    changes: dict = {}
    if spec:
        changes["method"], changes["amount"] = parse(spec)
    if scope:
        changes["scope"] = scope
    if skip:
        changes["skip"] = [*config.skip, *skip]
    if finetune_epochs is not None:
        changes["finetune_epochs"] = finetune_epochs
    return validate(dataclasses.replace(config, **changes))


# --- running the pass on a loaded source ----------------------------------------------------------

def apply(source, config: PruneConfig, load_opts, train: tuple | None = None, unlabelled=None):
    """Prune (and optionally fine-tune) `source`.

    Returns the stages as [(name, Source)] (pruned, then fine-tuned when asked) and what was
    done. `train` is (x, y) for fine-tuning; `unlabelled` (inputs only, e.g. the calibration set)
    re-estimates BatchNorm statistics after structured pruning when there is no `train`. Each
    stage is saved in the workdir and loaded again like any input, so every backend converts
    the pruned model.
    """
    from .sensitivity import layer_of
    if source.kind in ("keras", "h5"):
        from . import prune_keras as hooks
        model = source.handle[2]
        path = load_opts.workdir / "pruned" / "model.keras"
    elif source.kind == "onnx":
        from . import prune_onnx as hooks
        onnx = __import__("onnx")
        model = onnx.load(str(source.onnx_fixed_path))
        path = load_opts.workdir / "pruned" / "model.onnx"
    else:
        raise EdgekitError(f"pruning needs a Keras or ONNX model, not {source.kind}",
                           "give the .keras/.h5 or .onnx form of the model")
    info: dict = {"method": config.method, "amount": config.amount}
    masks = None
    if config.method == "magnitude":
        pruned, masks, rows = hooks.magnitude(model, config)
        info.update(scope=config.scope, layers=[{**r, "layer": layer_of(r["layer"])} for r in rows])
    else:
        pruned, plan = hooks.channels(model, config)
        info.update(criterion="L1 norm of each output filter", groups=len(plan.keep),
                    not_pruned={layer_of(k): v for k, v in plan.blocked.items()})
        stats_from = train[0] if train is not None else unlabelled
        if hasattr(hooks, "recalibrate_batchnorm") and stats_from is not None:
            if hooks.recalibrate_batchnorm(pruned, stats_from):
                info["batchnorm_recalibrated_on"] = "training data" if train is not None else "calibration data"
    stages = [(f"pruned ({config.method}:{config.amount:g})", _reload(pruned, path, load_opts, source))]
    if config.finetune_epochs:
        if source.kind == "onnx" or train is None:
            raise EdgekitError("--finetune-epochs needs a Keras model and labelled training data",
                               "give a .keras/.h5 model and --train-data (or labelled --data)")
        hooks.finetune(pruned, train[0], train[1], config.finetune_epochs, masks)
        if config.method == "channels":
            hooks.recalibrate_batchnorm(pruned, train[0])
        info["finetune"] = {"epochs": config.finetune_epochs, "samples": len(train[0])}
        tuned_path = path.with_name("finetuned" + path.suffix)
        stages.append((f"fine-tuned ({config.finetune_epochs} epochs)", _reload(pruned, tuned_path, load_opts, source)))
    return stages, info


def _reload(model, path, load_opts, source):
    """Save a pruned model and load it as an input model of its own."""
    from .. import sources
    path.parent.mkdir(exist_ok=True)
    if source.kind == "onnx":
        __import__("onnx").save(model, str(path))
    else:
        model.save(path)
    loaded = sources.load(path, load_opts, copy_to=f"source-{path.stem}")
    loaded.name = source.name
    return loaded
