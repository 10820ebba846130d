"""The pruning types and the framework-free planning, with no hooks imported.

`prune.py` runs a pass; `prune_keras.py` and `prune_onnx.py` describe a model as `ChannelNode`s
and apply a `ChannelPlan`. All three import from here, so none imports another.
"""
from __future__ import annotations

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
