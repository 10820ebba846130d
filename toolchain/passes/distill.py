"""Knowledge distillation: a smaller Keras student trained on the teacher's soft targets.

* Students. `width:R` is the teacher narrowed to the fraction R of its channels by the channel
  planner of structured pruning (prune.py: coupled groups lose the same channels), starting from
  the teacher's strongest filters (`init = "inherit"`) or from fresh random weights ("fresh").
  A path is a student of the user's own (.keras/.h5) with the teacher's input and output shapes.
* Teacher. Any input kind: its outputs on the training data come from its own runtime
  (`Source.predict`), once, before training. Only the student, which is trained, must be Keras.
* Loss (Hinton, Vinyals & Dean, 2015), for each class-vector output (rank 2):
  alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, softmax(s)).
  The cross-entropy needs labels; without them the soft term is the whole loss. Probabilities
  become logits by log p (softmax ignores a constant shift), and a student's final softmax is set
  aside while it trains. Other outputs are matched by mean squared error. Optional feature
  matching (FitNets): named layers of a Keras teacher and the student, through a learned linear
  projection where their channel counts differ.
* Training. Adam on seeded shuffles; a held-apart slice of the training data stops training when
  its loss no longer improves, and the best weights are kept.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgekitError
from ..schema import option
from .prune import as_source
from .prune_keras import recalibrate_batchnorm
from .prune_plan import PruneConfig

INITS = ("inherit", "fresh")
PROBABILITY_SLACK = 0.02  # rows of non-negative outputs summing to 1 within this are probabilities


@dataclass(frozen=True)
class DistillConfig:
    student: str = option("", "The student: width:R (the teacher with the fraction R of its channels, 0 < R < 1), "
                              "the path of a student .keras/.h5, or empty for no distillation.")
    init: str = option("inherit", "width:R students: start from the teacher's strongest filters, or from fresh "
                                  "random weights.", choices=INITS)
    temperature: float = option(4.0, "Softmax temperature T of the soft targets (higher is softer).")
    alpha: float = option(0.7, "Weight of the soft-target term; 1 - alpha weighs cross-entropy on the labels. "
                               "Unlabelled data trains on soft targets alone; 0 trains on labels alone.")
    epochs: int = option(30, "Most training epochs; training stops sooner when the held-apart loss stops improving.")
    patience: int = option(5, "Epochs without improvement on the held-apart slice before training stops.")
    batch_size: int = option(32, "Training batch size.")
    learning_rate: float = option(1e-3, "Adam learning rate.")
    val_fraction: float = option(0.1, "Fraction of the training data held apart for early stopping.")
    features: list[str] = option([], "Layers (same name in teacher and student) whose outputs the student learns to "
                                     "match; Keras teachers only. 'auto': every same-named Conv/Dense layer whose "
                                     "output has the same spatial size.")
    feature_weight: float = option(1.0, "Weight of the feature-matching term.")
    seed: int = option(0, "Seed of the initialisation, the shuffles and the held-apart split.")


def parse(spec: str) -> tuple[str, float | Path]:
    """`width:0.5` -> ("width", 0.5); anything else is the path of a student model."""
    match = re.fullmatch(r"width:([0-9.eE+-]+)", spec.strip())
    if match:
        try:
            ratio = float(match.group(1))
        except ValueError:
            ratio = -1.0
        if not 0 < ratio < 1:
            raise EdgekitError(f"--distill '{spec}' needs a width strictly between 0 and 1", "write width:0.5")
        return "width", ratio
    if spec.startswith("width"):
        raise EdgekitError(f"--distill '{spec}' is not width:R", "write width:0.5, or give a student .keras file")
    return "file", Path(spec)


def validate(config: DistillConfig) -> DistillConfig:
    checks = {"temperature": config.temperature > 0, "alpha": 0 <= config.alpha <= 1, "epochs": config.epochs >= 1,
              "patience": config.patience >= 1, "batch_size": config.batch_size >= 1,
              "learning_rate": config.learning_rate > 0, "val_fraction": 0 < config.val_fraction < 0.5,
              "feature_weight": config.feature_weight >= 0}
    for name, ok in checks.items():
        if not ok:
            raise EdgekitError(f"distillation {name} {getattr(config, name)!r} is out of range",
                               "temperature > 0, 0 <= alpha <= 1, epochs/patience/batch_size >= 1, learning_rate > 0, "
                               "0 < val_fraction < 0.5, feature_weight >= 0")
    if config.student:
        parse(config.student)
    return config


def with_overrides(config: DistillConfig, student: str | None = None, **changes) -> DistillConfig:
    """The profile's [distill] table with the command line's values on top (None: keep the profile's)."""
    changes = {k: v for k, v in changes.items() if v is not None and v != []}
    if student:
        changes["student"] = student
    if "features" in changes:
        changes["features"] = [*config.features, *changes["features"]]
    return validate(dataclasses.replace(config, **changes))


# --- the loss -----------------------------------------------------------------------------------

def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """Hinton's loss, averaged over the batch; `labels` None means soft targets alone."""
    from keras import ops
    t = temperature
    soft_teacher = ops.softmax(teacher_logits / t, axis=-1)
    kl = ops.sum(soft_teacher * (ops.log_softmax(teacher_logits / t, axis=-1)
                                 - ops.log_softmax(student_logits / t, axis=-1)), axis=-1)
    soft = t * t * ops.mean(kl)
    if labels is None:
        return soft
    hard = ops.mean(ops.sparse_categorical_crossentropy(labels, student_logits, from_logits=True))
    return alpha * soft + (1 - alpha) * hard


def is_probability(outputs: np.ndarray) -> bool:
    rows = outputs.reshape(len(outputs), -1)
    return bool(rows.size and np.all(rows >= 0) and np.all(np.abs(rows.sum(axis=1) - 1) < PROBABILITY_SLACK))


def as_logits(outputs: np.ndarray) -> np.ndarray:
    """Class scores as logits: probabilities by log p (softmax is shift-invariant), logits as they are."""
    return np.log(np.clip(outputs, 1e-8, None)).astype(np.float32) if is_probability(outputs) \
        else outputs.astype(np.float32)


def _class_vector(outputs: np.ndarray) -> bool:
    return outputs.ndim == 2 and outputs.shape[1] >= 2


# --- students -----------------------------------------------------------------------------------

def precheck(source, config: DistillConfig) -> None:
    """Fail before any work on a student that cannot be: width:R of a non-Keras teacher, a missing or non-Keras file."""
    session = getattr(getattr(source, "predict_one", None), "__self__", None)
    if any(getattr(session, "input_quant", None) or []) or any(getattr(session, "output_quant", None) or []):
        raise EdgekitError(f"the teacher {source.path.name} has integer (quantized) inputs or outputs",
                           "distil from the float model (its soft targets are what the student learns)")
    kind, value = parse(config.student)
    if kind == "width" and not (source.kind in ("keras", "h5") and source.handle):
        raise EdgekitError(f"--distill width:R derives the student from a Keras teacher, and this one is {source.kind}",
                           "give a student of your own: --distill student.keras (same input and output shapes)")
    if kind == "file":
        from ..sources import detect_kind
        if detect_kind(value) not in ("keras", "h5"):
            raise EdgekitError(f"the student {value.name} is a {detect_kind(value)} model; it must be Keras because it "
                               "is trained", "give a .keras or .h5 student")


def make_student(source, config: DistillConfig, load_opts):
    """(Keras student, description) for the teacher `source`."""
    import keras
    keras.utils.set_random_seed(config.seed)
    precheck(source, config)
    kind, value = parse(config.student)
    if kind == "file":
        from ..sources import _load_keras
        return _load_keras(value, load_opts), f"student {value.name}"
    teacher = source.handle[2]
    from .prune_keras import channels
    try:
        student, _ = channels(teacher, PruneConfig(method="channels", amount=1 - value, skip_first_last=False))
    except EdgekitError as exc:
        raise EdgekitError(f"no width:{value:g} student can be derived: {exc.problem}",
                           "give a student of your own: --distill student.keras") from None
    if config.init == "fresh":
        student = keras.models.clone_model(student)  # same architecture, new initial weights (seeded above)
    return student, f"width {value:g} of the teacher, {'fresh' if config.init == 'fresh' else 'inherited'} weights"


def check_student(student, specs, targets: list[np.ndarray], name: str) -> None:
    """The student takes the teacher's inputs and gives its outputs (per sample), or a one-line error."""
    ins = [tuple(t.shape[1:]) for t in student.inputs]
    want_ins = [tuple(s.shape[1:]) for s in specs]
    if ins != want_ins:
        raise EdgekitError(f"{name} takes inputs {_shapes(ins)} but the teacher takes {_shapes(want_ins)}",
                           "give the student the teacher's input shapes (same layout, per sample)")
    outs = [tuple(t.shape[1:]) for t in student.outputs]
    want_outs = [tuple(t.shape[1:]) for t in targets]
    if outs != want_outs:
        raise EdgekitError(f"{name} gives outputs {_shapes(outs)} but the teacher gives {_shapes(want_outs)}",
                           "give the student the teacher's output shapes (e.g. the same number of classes)")


def _shapes(shapes) -> str:
    return ", ".join("(N, " + ", ".join(map(str, s)) + ")" for s in shapes)


@contextlib.contextmanager
def _logit_outputs(student):
    """Output tensors of the student with a final softmax set aside: [(tensor, still_probability)]."""
    import keras
    swapped, outputs = [], []
    for tensor in student.outputs:
        layer = tensor._keras_history.operation
        activation = getattr(layer, "activation", None)
        is_softmax = activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax"
        if type(layer).__name__ == "Softmax" or type(layer).__name__ == "Activation" and is_softmax:
            outputs.append(layer.input)
        else:
            if is_softmax and type(layer).__name__ != "Activation":
                swapped.append((layer, activation))
                layer.activation = keras.activations.linear
            outputs.append(tensor)
    try:
        yield outputs
    finally:
        for layer, activation in swapped:
            layer.activation = activation


def _feature_pairs(names: list[str], teacher, student) -> list[str]:
    if not names:
        return []
    if teacher is None:
        raise EdgekitError("feature matching needs a Keras teacher", "drop --distill-features, or give the Keras model")
    teacher_layers = {layer.name: layer for layer in teacher.layers}
    student_layers = {layer.name: layer for layer in student.layers}
    if names == ["auto"]:
        outputs = {t._keras_history.operation.name for t in student.outputs}
        names = [n for n, layer in student_layers.items() if type(layer).__name__ in ("Conv1D", "Conv2D", "Dense")
                 and n in teacher_layers and n not in outputs]
        names = [n for n in names if _spatial(teacher_layers[n]) == _spatial(student_layers[n])]
    for n in names:
        if n not in teacher_layers or n not in student_layers:
            raise EdgekitError(f"feature layer '{n}' is not in both the teacher and the student",
                               "name layers present in both (or use auto)")
        if _spatial(teacher_layers[n]) != _spatial(student_layers[n]):
            raise EdgekitError(f"feature layer '{n}' has output {teacher_layers[n].output.shape} in the teacher and "
                               f"{student_layers[n].output.shape} in the student", "match layers of the same spatial size")
    return names


def _spatial(layer) -> tuple:
    return tuple(layer.output.shape[1:-1])


# --- training -----------------------------------------------------------------------------------

def teacher_targets(source, samples: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The teacher's outputs on `samples`, run in its own runtime, stacked per output."""
    outputs = source.predict(samples)
    return [np.concatenate([s[i] for s in outputs]) for i in range(len(outputs[0]))]


def fit(student, inputs: list[np.ndarray], targets: list[np.ndarray], labels: np.ndarray | None,
        config: DistillConfig, teacher=None, progress=lambda msg: None) -> dict:
    """Train `student` in place; returns what happened (epochs, losses, the held-apart slice)."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    if labels is None and config.alpha == 0:
        raise EdgekitError("distillation alpha 0 trains on labels alone, and the training data has none",
                           "give labelled --train-data (x, y), or a larger --distill-alpha")
    count = len(inputs[0])
    held = max(1, int(round(count * config.val_fraction)))
    if count - held < 1:
        raise EdgekitError(f"distillation needs at least 2 training samples, got {count}", "give more --train-data")
    order = np.random.default_rng(config.seed).permutation(count)
    held_idx, fit_idx = order[:held], order[held:]
    kinds = ["kd" if _class_vector(t) else "mse" for t in targets]
    goals = [as_logits(t) if k == "kd" else t.astype(np.float32) for t, k in zip(targets, kinds)]
    use_labels = labels is not None and config.alpha < 1 and kinds.count("kd") == 1
    y = np.asarray(labels if use_labels else np.zeros(count), np.int64).reshape(count, -1)[:, 0]
    features = _feature_pairs(config.features, teacher, student)
    with _logit_outputs(student) as logit_tensors:
        probe = keras.Model(student.inputs, logit_tensors)([x[:2] for x in inputs])
        probe = probe if isinstance(probe, (list, tuple)) else [probe]
        still_prob = [k == "kd" and is_probability(np.asarray(p)) for p, k in zip(probe, kinds)]
        train_model = keras.Model(student.inputs, [*logit_tensors, *[student.get_layer(n).output for n in features]])
        teacher_features = keras.Model(teacher.inputs, [teacher.get_layer(n).output for n in features]) \
            if features else None
        projections = [_projection(student.get_layer(n), teacher.get_layer(n), config.seed + i)
                       for i, n in enumerate(features)]
        weights = [*train_model.trainable_variables, *[p for p in projections if p is not None]]
        optimizer = keras.optimizers.Adam(config.learning_rate)

        def loss(xs, goals_batch, y_batch, training):
            outs = train_model(list(xs), training=training)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            total = 0.0
            for i, (kind, goal) in enumerate(zip(kinds, goals_batch)):
                out = tf.math.log(tf.maximum(outs[i], 1e-8)) if still_prob[i] else outs[i]
                if kind == "kd":
                    total += kd_loss(out, goal, y_batch if use_labels else None, config.temperature,
                                     config.alpha if use_labels else 1.0)
                else:
                    total += tf.reduce_mean(tf.square(out - goal))
            if features:
                wanted = teacher_features(list(xs), training=False)
                wanted = wanted if isinstance(wanted, (list, tuple)) else [wanted]
                for got, want, proj in zip(outs[len(kinds):], wanted, projections):
                    got = tf.tensordot(got, proj, axes=1) if proj is not None else got
                    total += config.feature_weight * tf.reduce_mean(tf.square(got - want)) / \
                        (tf.reduce_mean(tf.square(want)) + 1e-8)
            return total

        @tf.function(reduce_retracing=True)
        def step(xs, goals_batch, y_batch):
            with tf.GradientTape() as tape:
                value = loss(xs, goals_batch, y_batch, True)
            optimizer.apply_gradients(zip(tape.gradient(value, weights), weights))
            return value

        evaluate = tf.function(lambda xs, g, yb: loss(xs, g, yb, False), reduce_retracing=True)

        def batches(index, shuffle_seed=None):
            index = np.random.default_rng(shuffle_seed).permutation(index) if shuffle_seed is not None else index
            for start in range(0, len(index), config.batch_size):
                b = index[start:start + config.batch_size]
                yield [x[b] for x in inputs], [g[b] for g in goals], y[b], len(b)

        def mean_loss(index):
            # BatchNorm's moving statistics lag the weights by many steps (momentum 0.99): measure the
            # weights as they are, with statistics re-estimated on training inputs (never the held-apart ones).
            stats_from = [x[fit_idx[:512]] for x in inputs]
            recalibrate_batchnorm(student, stats_from if len(stats_from) > 1 else stats_from[0])
            total = sum(float(evaluate(xs, g, yb)) * n for xs, g, yb, n in batches(index))
            return total / len(index)

        history = {"train_loss": [], "held_apart_loss": []}
        best, best_weights, stale = mean_loss(held_idx), student.get_weights(), 0
        history["initial_held_apart_loss"] = best
        steps = -(-len(fit_idx) // config.batch_size)
        for epoch in range(1, config.epochs + 1):
            total = 0.0
            for i, (xs, g, yb, n) in enumerate(batches(fit_idx, config.seed * 1000 + epoch), 1):
                total += float(step(xs, g, yb)) * n
                if i % max(1, steps // 10) == 0:
                    progress(_bar(epoch, config.epochs, i / steps, total / min(len(fit_idx), i * config.batch_size)))
            history["train_loss"].append(total / len(fit_idx))
            held_loss = mean_loss(held_idx)
            history["held_apart_loss"].append(held_loss)
            progress(_bar(epoch, config.epochs, 1.0, history["train_loss"][-1], held_loss))
            if held_loss < best - 1e-6:
                best, best_weights, stale = held_loss, student.get_weights(), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    if not np.isfinite(history["train_loss"][-1]):
        raise EdgekitError(f"distillation diverged (loss {history['train_loss'][-1]}) at epoch {len(history['train_loss'])}",
                           "lower learning_rate or temperature in the profile's [distill] table")
    student.set_weights(best_weights)
    best_epoch = int(np.argmin(history["held_apart_loss"])) + 1 if best < history["initial_held_apart_loss"] else 0
    return {**history, "epochs_run": len(history["train_loss"]), "best_epoch": best_epoch,
            "stopped_early": len(history["train_loss"]) < config.epochs, "samples": len(fit_idx), "held_apart": held,
            "outputs": kinds, "labels_used": use_labels, "features": features}


def _projection(student_layer, teacher_layer, seed: int):
    """A learned (C_student, C_teacher) map where channel counts differ (FitNets' regressor); None where equal."""
    import tensorflow as tf
    c_s, c_t = student_layer.output.shape[-1], teacher_layer.output.shape[-1]
    if c_s == c_t:
        return None
    init = np.random.default_rng(seed).normal(0, np.sqrt(1 / c_s), (c_s, c_t)).astype(np.float32)
    return tf.Variable(init, name=f"project_{student_layer.name}")


def _bar(epoch: int, epochs: int, done: float, loss: float, held: float | None = None) -> str:
    filled = int(round(20 * (epoch - 1 + done) / epochs))
    tail = f", held-apart {held:.4f}" if held is not None else ""
    return f"distilling: epoch {epoch}/{epochs} [{'#' * filled}{'.' * (20 - filled)}] loss {loss:.4f}{tail}"


# --- running the pass on a loaded source ----------------------------------------------------------

def apply(source, config: DistillConfig, load_opts, train: tuple, progress=lambda msg: None):
    """Distill `source` (the teacher) into a student.

    `train` is (samples, labels or None, origin): samples batched like the teacher's inputs,
    never the ones that are scored. Returns the stages [(name, Source)] (the student as it
    starts, then trained) and what was done.
    """
    samples, labels, origin = train
    progress(f"running the teacher on {len(samples)} training samples")
    targets = teacher_targets(source, samples)
    if not all(np.all(np.isfinite(t)) for t in targets if np.issubdtype(t.dtype, np.floating)):
        raise EdgekitError("the teacher's outputs on the training data contain NaN or infinite values",
                           "check the training inputs are preprocessed like the evaluation data")
    student, described = make_student(source, config, load_opts)
    check_student(student, source.inputs, targets, f"the student ({described})")
    inputs = [np.concatenate([s[i] for s in samples]) for i in range(len(source.inputs))]
    if labels is not None and len(labels) != len(inputs[0]):
        raise EdgekitError(f"{origin}: {len(labels)} labels for {len(inputs[0])} training inputs",
                           "give one label per input in --train-data")
    workdir = load_opts.workdir / "distilled"
    stages = [(f"student ({described})", as_source(student, workdir / "student.keras", load_opts, source))]
    teacher = source.handle[2] if source.kind in ("keras", "h5") and source.handle else None
    history = fit(student, inputs, targets, labels, config, teacher, progress)
    stages.append((f"distilled ({history['epochs_run']} epochs, T={config.temperature:g}, "
                   f"alpha={config.alpha if history['labels_used'] else 1:g})",
                   as_source(student, workdir / "distilled.keras", load_opts, source)))
    info = {"student": described, "init": config.init if parse(config.student)[0] == "width" else "user's",
            "params": {"teacher": _params(source), "student": int(student.count_params())},
            "temperature": config.temperature, "alpha": config.alpha, "data": origin,
            "teacher_outputs": ["probabilities (logits taken as log p)" if is_probability(t) else "as given"
                                for t in targets],
            "teacher_runtime": source.kind, **history}
    return stages, info


def _params(source) -> int | None:
    return int(source.handle[2].count_params()) if source.kind in ("keras", "h5") and source.handle else None
