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

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgekitError
from ..schema import option
from .distill_train import as_logits, fit, is_probability, kd_loss, teacher_targets  # noqa: F401
from .prune import as_source
from .prune_plan import PruneConfig

INITS = ("inherit", "fresh")
NAME, STAGE, ORDER, FORMATS = "distill", "source", 10, ()
REPORT_KEY = "distillation"  # the report's key for what it did (older than the pass contract)
DESCRIPTION = "knowledge distillation into a smaller Keras student, before pruning and quantization"
TUNE_CHOICES = ("none", "width:0.5", "width:0.25")  # Keras models: a narrower student, distilled
TUNE_EPOCHS = 15  # per trial, with early stopping


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


Config = DistillConfig


@dataclass
class Flags:
    distill: str | None = option(None, "Distil into a smaller Keras student before pruning and quantization: width:R "
                                       "(the teacher with the fraction R of its channels) or student.keras.")
    distill_temperature: float | None = option(None, "Softmax temperature of the soft targets, instead of the profile's.")
    distill_alpha: float | None = option(None, "Weight of the soft targets against the labels (0..1), instead of the "
                                               "profile's.")
    distill_epochs: int | None = option(None, "Most distillation epochs (early stopping may end sooner).")
    distill_init: str | None = option(None, "width:R students: inherit the teacher's strongest filters or start fresh.",
                                      choices=INITS)
    distill_features: list[str] = option([], "Layers (same name in teacher and student) to match, or auto.")


def configure(profile, flags: Flags | None) -> DistillConfig:
    f = flags or Flags()
    return with_overrides(profile.distill, f.distill, temperature=f.distill_temperature, alpha=f.distill_alpha,
                          epochs=f.distill_epochs, init=f.distill_init, features=f.distill_features)


def applies(recipe, source) -> bool:
    """Asked for: checks first that the student can be made from this teacher (one line if not)."""
    config = recipe[NAME]
    if config.student:
        precheck(source, config)
    return bool(config.student)


def run(ctx, config: DistillConfig, source):
    """The teacher stays first in the stages; the student and the distilled student follow."""
    ctx.progress(f"distilling into a student ({config.student})")
    students, info = apply(source, config, ctx.load_opts, ctx.train, ctx.progress)
    return [("teacher", source), *students], info


def needs_training(config: DistillConfig) -> str:
    return "unlabelled"


def search_space(trial, setup) -> dict:
    """Keras models only: a narrower student and its temperature."""
    student = trial.suggest_categorical("distill", TUNE_CHOICES) if setup.keras else "none"
    if student == "none":
        return {}
    return {"distill": student, "distill_temperature": trial.suggest_categorical("temperature", [2.0, 4.0]),
            "distill_epochs": TUNE_EPOCHS}


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
