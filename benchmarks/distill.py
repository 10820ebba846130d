"""Distillation figures (a benchmark that prints figures; not a test).

ResNet-8 trained on the bundled digits (32x32x3, 10 classes) is the teacher. At each student
width (the teacher's channels times R, from the channel planner, so every student of one width
has the same architecture, params and MACs), five ways to train the student:

  scratch          fresh weights, labels only (cross-entropy)
  pruned + FT      the teacher's strongest filters (= channel pruning at 1-R), fine-tuned on labels only
  KD               the same start, distilled: soft targets (T, alpha) + labels
  KD, no labels    the same start, the teacher's soft targets alone (--train-data without y)
  KD, fresh        fresh weights, distilled with labels (decides the default init)
  KD, ONNX teacher the teacher exported to ONNX (run by onnxruntime), into the inherited Keras student

Every variant trains with the same loop (Adam, batch 32, early stopping on a held-apart tenth of
the train split, best weights kept, seed 0); only the loss and the start differ. Each runs through
`edgekit convert --target cpu-int8 --format tflite`, so accuracy is the int8 artifact's on the test
split (calibration slice held apart), latency is measured on this host (1 thread), and params/MACs
are counted from the graph.

    python benchmarks/distill.py [--widths 0.5 0.25] [--epochs 30] [--runs 200] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {  # name: (init, alpha, labels, ONNX teacher)
    "scratch (labels)": ("fresh", 0.0, True, False),
    "pruned + fine-tuned (labels)": ("inherit", 0.0, True, False),
    "KD (labels + soft targets)": ("inherit", None, True, False),
    "KD, no labels": ("inherit", None, False, False),
    "KD, fresh start": ("fresh", None, True, False),
    "KD from the ONNX teacher": ("inherit", None, True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("edgekit-out/bench-distill"))
    args = parser.parse_args()
    import numpy as np

    import edgekit
    from edgekit import pipeline, zoo
    args.out.mkdir(parents=True, exist_ok=True)
    paths = zoo.trained_reference("resnet8", pipeline.cache_dir())
    with np.load(paths["train"]) as npz:
        np.savez(args.out / "train-unlabelled.npz", x=npz["x"])
    common = dict(target="cpu-int8", formats=["tflite"], data=paths["eval"], runs=args.runs, force=True)
    onnx_teacher = _onnx_teacher(edgekit, paths["model"], args.out)
    from edgekit import analysis
    counted = analysis.totals(analysis.layer_stats(onnx_teacher))
    teacher = _int8(edgekit.convert(paths["model"], out=args.out / "teacher", **common), counted)
    rows = [{"width": 1.0, "variant": "teacher (int8)", **teacher}]
    for width in args.widths:
        student_file = _inherited_student(paths["model"], width, args.out)
        for name in args.variants:
            init, alpha, labelled, from_onnx = VARIANTS[name]
            options = dict(common, distill=str(student_file) if from_onnx else f"width:{width:g}", distill_init=init,
                           distill_alpha=alpha, distill_epochs=args.epochs,
                           train_data=paths["train"] if labelled else args.out / "train-unlabelled.npz",
                           out=args.out / f"w{width:g}-{name.split(' ')[0].lower()}{'-onnx' if from_onnx else ''}"
                                          f"{'' if labelled else '-nolabels'}-{init}")
            report = edgekit.convert(onnx_teacher if from_onnx else paths["model"], **options)
            row = {"width": width, "variant": name, **_int8(report), "epochs": report["distillation"]["epochs_run"]}
            rows.append(row)
            print(_line(row), flush=True)
    print("\n## ResNet-8 students on digits (int8 TFLite, cpu-int8, this host, 1 thread)\n")
    print("| width | variant | accuracy | params | MACs | int8 size KiB | median ms | epochs |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_line(row))
    for width in args.widths:
        best = {r["variant"]: r["accuracy"] for r in rows if r["width"] == width}
        kd = best.get("KD (labels + soft targets)")
        others = {k: v for k, v in best.items() if k.startswith(("scratch", "pruned"))}
        if kd is not None and others:
            print(f"\nwidth {width:g}: KD {kd:.2%} vs " + ", ".join(f"{k} {v:.2%} ({(kd - v) * 100:+.2f} points)"
                                                               for k, v in others.items()))
    print(f"\nTeacher int8 accuracy {teacher['accuracy']:.2%}; scored on {teacher['scored']} test samples "
          f"(one sample = {100 / teacher['scored']:.2f} points). Latency measured on this host, which is shared: "
          "compare latencies only roughly.")
    (args.out / "distill.json").write_text(json.dumps(rows, indent=2) + "\n")


def _int8(report: dict, counted: dict | None = None) -> dict:
    art = next(a for a in report["artifacts"] if a["role"] == "target")
    counted = counted or report["distillation"]["stages"][-2]  # the distilled student, before int8
    return {"accuracy": art["accuracy"]["value"], "params": counted["params"], "macs": counted["macs"],
            "bytes": art["size"]["bytes"], "latency_ms": art["latency_ms"]["median"], "scored": report["data"]["samples"]}


def _onnx_teacher(edgekit, model: Path, out: Path) -> Path:
    report = edgekit.convert(model, target="cpu", formats=["onnx"], out=out / "teacher-onnx", runs=2, warmup=0,
                             force=True)
    return Path(report["out_dir"]) / "model.onnx"


def _inherited_student(model: Path, width: float, out: Path) -> Path:
    """The width-R student with the teacher's strongest filters, as a .keras file (the ONNX teacher's student)."""
    from types import SimpleNamespace

    import keras

    from edgekit.passes import distill
    teacher = keras.saving.load_model(model)
    student, _ = distill.make_student(SimpleNamespace(kind="keras", handle=(None, None, teacher)),
                                      distill.DistillConfig(student=f"width:{width:g}"), None)
    path = out / f"student-w{width:g}.keras"
    student.save(path)
    return path


def _line(row: dict) -> str:
    return (f"| {row['width']:g} | {row['variant']} | {row['accuracy']:.2%} | {row['params']:,} | {row['macs']:,} | "
            f"{row['bytes'] / 1024:.1f} | {row['latency_ms']:.4f} | {row.get('epochs', '-')} |")


if __name__ == "__main__":
    main()
