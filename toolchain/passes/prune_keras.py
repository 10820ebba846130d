"""Pruning hooks for Keras models (see prune.py for the algorithm)."""
from __future__ import annotations

import numpy as np

from ..errors import EdgekitError
from .prune_plan import ChannelNode, PruneConfig, flatten_rows, magnitude_masks, plan_channels, skipped, sparsity_row

PRODUCERS = {"Conv1D", "Conv2D", "Dense"}
PASS = {"BatchNormalization", "ReLU", "Activation", "Dropout", "SpatialDropout2D", "LeakyReLU", "ZeroPadding2D",
        "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
        "GlobalAveragePooling2D", "GlobalMaxPooling2D", "DepthwiseConv2D", "Flatten"}
MERGE = {"Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average"}
WEIGHTED = {"Conv1D", "Conv2D", "Dense", "DepthwiseConv2D"}


def _inputs(layer) -> list[str]:
    tensors = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    return [t._keras_history.operation.name for t in tensors]


def _kind(layer) -> str:
    return type(layer).__name__


def magnitude(model, config: PruneConfig):
    """A copy of `model` with the smallest weights zeroed; and the real sparsity of every weighted layer."""
    import keras
    weighted = [layer for layer in model.layers if _kind(layer) in WEIGHTED]
    skip = skipped([(layer.name, _kind(layer)) for layer in weighted], config)
    kernels = {layer.name: layer.get_weights()[0] for layer in weighted if layer.name not in skip}
    if not kernels:
        raise EdgekitError("no layer left to prune after skipping", "skip fewer layers (--prune-skip, skip_first_last)")
    masks = magnitude_masks(kernels, config)
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    for name, mask in masks.items():
        layer = pruned.get_layer(name)
        weights = layer.get_weights()
        layer.set_weights([weights[0] * mask, *weights[1:]])
    rows = [sparsity_row(layer.name, pruned.get_layer(layer.name).get_weights()[0]) for layer in weighted]
    return pruned, masks, rows


def channel_graph(model, config: PruneConfig) -> tuple[list[ChannelNode], list[str], dict[str, int]]:
    """The model as ChannelNodes; `spatial` gives, per Flatten-fed layer, the flattened spatial size."""
    nodes, spatial = [], {}
    for layer in model.layers:
        kind = _kind(layer)
        if kind == "InputLayer":
            nodes.append(ChannelNode(layer.name, "producer", [], kind, prunable=False))
            continue
        inputs = _inputs(layer)
        if kind == "Conv2D" and layer.groups != 1 or kind == "DepthwiseConv2D" and layer.depth_multiplier != 1:
            nodes.append(ChannelNode(layer.name, "block", inputs, f"{kind} with groups"))
        elif kind in PRODUCERS:
            kernel = layer.get_weights()[0]
            importance = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
            nodes.append(ChannelNode(layer.name, "producer", inputs, kind, importance,
                                     prunable=layer.name not in config.skip and kind not in config.skip))
        elif kind in PASS or kind in MERGE:
            nodes.append(ChannelNode(layer.name, "pass" if kind in PASS else "merge", inputs, kind))
        else:
            nodes.append(ChannelNode(layer.name, "block", inputs, kind))
        if kind == "Flatten":
            spatial[layer.name] = int(np.prod(layer.input.shape[1:-1]))
        elif kind in PASS and inputs and inputs[0] in spatial and not kind.startswith("Global"):
            spatial[layer.name] = spatial[inputs[0]]
    outputs = [t._keras_history.operation.name for t in model.outputs]
    return nodes, outputs, spatial


def channels(model, config: PruneConfig):
    """A smaller dense copy of `model` without the fraction `config.amount` of channels; and the plan."""
    nodes, outputs, spatial = channel_graph(model, config)
    plan = plan_channels(nodes, outputs, config.amount)
    if not plan.keep:
        raise EdgekitError(f"no channel can be removed: {_why(plan)}", "prune a model whose Conv/Dense channels "
                           "reach only supported layers, or use --prune magnitude")
    by_name = {n.name: n for n in nodes}
    model_config = model.get_config()
    for entry in model_config["layers"]:
        entry.pop("build_config", None)  # stale input shapes; layers rebuild from their new inputs
        node = by_name.get(entry["config"]["name"])
        keep = plan.kept_out(node.name) if node and node.role == "producer" else None
        if keep is not None:
            key = "units" if entry["class_name"] == "Dense" else "filters"
            entry["config"][key] = int(len(keep))
    smaller = type(model).from_config(model_config)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            smaller.get_layer(layer.name).set_weights(_slice(layer, weights, by_name[layer.name], plan, spatial))
    return smaller, plan


def _slice(layer, weights: list[np.ndarray], node: ChannelNode, plan, spatial: dict[str, int]) -> list[np.ndarray]:
    kind = _kind(layer)
    out_keep = plan.kept_out(node.name)
    if kind in PRODUCERS:
        kernel = weights[0]
        in_keep = plan.kept_out(node.inputs[0])
        if in_keep is not None:
            if kind == "Dense" and spatial.get(node.inputs[0], 1) > 1:
                channels = layer.input.shape[-1] // spatial[node.inputs[0]]
                in_keep = flatten_rows(in_keep, channels, spatial[node.inputs[0]], channels_last=True)
            kernel = np.take(kernel, in_keep, axis=-2)
        if out_keep is not None:
            kernel = np.take(kernel, out_keep, axis=-1)
            weights = [kernel, *[w[out_keep] for w in weights[1:]]]
        return [kernel, *weights[1:]]
    if out_keep is None:
        return weights
    if kind == "DepthwiseConv2D":
        return [np.take(weights[0], out_keep, axis=2), *[w[out_keep] for w in weights[1:]]]
    return [w[out_keep] for w in weights]  # BatchNormalization: gamma, beta, mean, variance


def _why(plan) -> str:
    reasons = sorted(set(plan.blocked.values()))
    return "every channel group reaches " + ", ".join(reasons[:3]) if reasons else "no prunable Conv/Dense layer"


def finetune(model, x: np.ndarray, y: np.ndarray, epochs: int, masks: dict[str, np.ndarray] | None = None,
             seed: int = 0):
    """A short, deterministic fine-tune; zeroed weights stay zero when masks are given."""
    import keras
    keras.utils.set_random_seed(seed)

    class KeepZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for name, mask in (masks or {}).items():
                layer = self.model.get_layer(name)
                weights = layer.get_weights()
                layer.set_weights([weights[0] * mask, *weights[1:]])

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0, callbacks=[KeepZeros()] if masks else [])
    return model


def recalibrate_batchnorm(model, x: np.ndarray, limit: int = 512) -> bool:
    """Re-estimate every BatchNorm's moving statistics from `x` (no labels needed).

    Removing a layer's input channels shifts its output distribution, so the moving mean and
    variance learned before pruning no longer fit; one forward pass in training mode with
    momentum 0 replaces them by the statistics of `x`. Returns whether the model has BatchNorm.
    """
    norms = [layer for layer in model.layers if _kind(layer) == "BatchNormalization"]
    saved = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x[:limit], training=True)
    for layer, momentum in zip(norms, saved):
        layer.momentum = momentum
    return bool(norms)
