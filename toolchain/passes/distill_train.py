"""Distillation training (the pass is `distill.py`): Hinton's loss, the student's logits, feature
matching through learned projections, and the seeded training loop with early stopping."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgekitError
from .prune_keras import recalibrate_batchnorm

if TYPE_CHECKING:
    from .distill import DistillConfig

PROBABILITY_SLACK = 0.02  # rows of non-negative outputs summing to 1 within this are probabilities

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
