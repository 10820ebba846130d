"""Pruning, written once over a small channel graph; Keras and ONNX supply the hooks.

* `magnitude:S` (unstructured): zero the fraction S of weights with the smallest magnitude, per
  layer or over all layers at once (`scope`). Dense runtimes run such a model no faster; it
  compresses better (the report shows gzip sizes and the real sparsity of each layer).
* `channels:R` (structured): remove the fraction R of the output channels of Conv/Dense layers,
  lowest L1 norm of their filters first, and rewrite every layer that depends on them. Layers
  whose channels are tied (the inputs of a residual Add, a depthwise conv and the conv before
  it) form one group and lose the same channels. The result is a smaller dense model.

Each framework describes its model as `ChannelNode`s (`prune_keras.py`, `prune_onnx.py`); the
grouping and the choice of channels happen in `prune_plan.py`; this module runs the pass.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass

from ..errors import EdgekitError
from ..schema import option
from .prune_plan import (  # noqa: F401  (re-exported: the pass's public names)
    METHODS, ChannelNode, ChannelPlan, PruneConfig, flatten_rows, magnitude_masks, parse, plan_channels, skipped,
    sparsity_row, validate)

NAME, STAGE, ORDER, FORMATS = "prune", "source", 20, ()
REPORT_KEY = "pruning"  # the report's key for what it did (older than the pass contract)
DESCRIPTION = "magnitude or channel pruning of the float model (then optional fine-tuning), before export"
Config = PruneConfig
TUNE_CHOICES = ("none", "magnitude:0.5", "channels:0.25", "channels:0.5")


@dataclass
class Flags:
    prune: str | None = option(None, "Pruning before quantization: magnitude:S (unstructured, sparsity S) or "
                                     "channels:R (structured, remove fraction R of channels).")
    prune_scope: str | None = option(None, "magnitude: per-layer or global ranking.", choices=("per-layer", "global"))
    prune_skip: list[str] = option([], "Layer names or types never pruned (adds to the profile's).")
    finetune_epochs: int | None = option(None, "Fine-tune a pruned Keras model for N epochs (needs labels).")


def configure(profile, flags: Flags | None) -> PruneConfig:
    flags = flags or Flags()
    return with_overrides(profile.prune, flags.prune, flags.prune_scope, flags.prune_skip, flags.finetune_epochs)


def applies(recipe, source) -> bool:
    return recipe[NAME].method != "none"


def run(ctx, config: PruneConfig, source):
    """Prune the model the earlier passes left; fine-tuning uses ctx.train, BatchNorm statistics the
    calibration inputs when there is no training data."""
    ctx.progress(f"pruning ({config.method}:{config.amount:g})")
    np = __import__("numpy")
    calib, train = ctx.calib, ctx.train
    unlabelled = np.concatenate([s[0] for s in calib.samples]) if calib and len(source.inputs) == 1 else None
    x = (np.concatenate([s[0] for s in train[0]]), train[1], train[2]) if train is not None else None
    stages, info = apply(source, config, ctx.load_opts, x, unlabelled)
    if train is not None and config.finetune_epochs:
        info["finetune"]["data"] = train[2]
    return stages, info


def needs_training(config: PruneConfig) -> str | None:
    return "labelled" if config.finetune_epochs else None


def search_space(trial, setup) -> dict:
    """Keras models: every method and fine-tuning; ONNX models: magnitude only (no fine-tuning)."""
    spec = trial.suggest_categorical("prune", TUNE_CHOICES if setup.keras else ("none", "magnitude:0.5"))
    if spec == "none":
        return {}
    epochs = trial.suggest_categorical("finetune_epochs", [0, 2]) if setup.keras else 0
    return {"prune": spec, "finetune_epochs": epochs or None}


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
    stages = [(f"pruned ({config.method}:{config.amount:g})", as_source(pruned, path, load_opts, source))]
    if config.finetune_epochs:
        if source.kind == "onnx" or train is None:
            raise EdgekitError("--finetune-epochs needs a Keras model and labelled training data",
                               "give a .keras/.h5 model and --train-data (or labelled --data)")
        hooks.finetune(pruned, train[0], train[1], config.finetune_epochs, masks)
        if config.method == "channels":
            hooks.recalibrate_batchnorm(pruned, train[0])
        info["finetune"] = {"epochs": config.finetune_epochs, "samples": len(train[0])}
        tuned_path = path.with_name("finetuned" + path.suffix)
        stages.append((f"fine-tuned ({config.finetune_epochs} epochs)", as_source(pruned, tuned_path, load_opts, source)))
    return stages, info


def as_source(model, path, load_opts, source):
    """Save a model made by a pass (.onnx or .keras, by `path`) and load it as an input model of its own."""
    from .. import sources
    path.parent.mkdir(exist_ok=True)
    if path.suffix == ".onnx":
        __import__("onnx").save(model, str(path))
    else:
        model.save(path)
    loaded = sources.load(path, load_opts, copy_to=f"source-{path.stem}")
    loaded.name = source.name
    return loaded
