"""Fuzzing the front door (issue #11): valid .onnx, .tflite, .keras, .h5, .npz and profile .toml files,
mutated by hypothesis (byte flips, truncation, insertion, splices; hostile values in TOML and in
arrays), go through what `edgekit convert` does before it builds anything: detect the kind, load
the model (on a private copy), run it on generated inputs, read and check --data, read and check a
profile. Each case must end in success or in an EdgekitError (exit 2, one line); anything else
would be an `internal error`. The input must be untouched and nothing left behind.

A few cases per kind also run the real `edgekit convert` in a subprocess.

The surfaces added since (issue #25) are fuzzed in-process too, cheaply: profiles with compiler
flags (an accepted flag is always on the allow-list), `tune --cluster` URLs, report.json files given
to `edgekit report`, and plug-in names in $EDGEKIT_BACKENDS / $EDGEKIT_PROBES / $EDGEKIT_PASSES.

Cases: EDGEKIT_FUZZ_CASES (default 1200 for the model, data and profile files, ~1-2 minutes on 2
cores; the new surfaces get 444 more in proportion) is shared out by weight; EDGEKIT_FUZZ_SEED
explores other cases (default: derandomized, the same cases every run). test_fuzz_summary prints the
count (>= 1,500 by default) and asserts it.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fake_backend as fake
from edgekit import data, sources, targets
from edgekit.errors import EdgekitError

TOTAL = int(os.environ.get("EDGEKIT_FUZZ_CASES", "1200"))
SEED = os.environ.get("EDGEKIT_FUZZ_SEED")
WEIGHTS = {"toml": 0.30, "npz": 0.25, "onnx": 0.17, "tflite": 0.17, "keras": 0.055, "h5": 0.055}
WEIGHTS.update({"flags": 0.15, "cluster": 0.10, "report": 0.08, "plugin": 0.04})  # the issue #25 surfaces
RAN: dict[str, int] = {}
OUTCOMES: dict[str, int] = {}
STARTED: list[float] = []  # when the first fuzz case ran (not when pytest imported this module)


def budget(kind: str):
    cases = max(5, int(TOTAL * WEIGHTS[kind]))
    return settings(max_examples=cases, deadline=None, database=None, derandomize=SEED is None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """`seed` with 1-6 edits: bit flips, boundary bytes, truncation, inserted/removed runs, a repeated run."""
    out = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["flip", "byte", "cut", "insert", "delete", "repeat"]))
        if op == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            out[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del out[at:at + draw(st.integers(1, 256))]
        else:
            out[at:at] = out[at:at + draw(st.integers(1, 64))]
    return bytes(out)


class Case:
    """One fuzz case in a scratch directory; checks the input and the surroundings afterwards."""

    def __init__(self, root: Path, name: str, content: bytes):
        self.dir = Path(tempfile.mkdtemp(dir=root))
        self.path = self.dir / name
        self.path.write_bytes(content)
        self.content = content

    def check(self, run, kind: str) -> None:
        try:
            run(self.path, self.dir / "work")
            OUTCOMES["accepted"] = OUTCOMES.get("accepted", 0) + 1
        except EdgekitError as exc:
            line = exc.one_line()
            assert line and "\n" not in line, repr(line)
            OUTCOMES["refused"] = OUTCOMES.get("refused", 0) + 1
        count(kind)
        # anything else propagates: the CLI would print `internal error` for it
        assert self.path.read_bytes() == self.content, "the input was modified"
        assert sorted(p.name for p in self.dir.iterdir()) in ([self.path.name], sorted([self.path.name, "work"]))
        shutil.rmtree(self.dir)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    STARTED[:] = STARTED or [time.monotonic()]
    return tmp_path_factory.mktemp("fuzz")


def count(kind: str) -> None:
    RAN[kind] = RAN.get(kind, 0) + 1


def load_model(path: Path, work: Path) -> None:
    """What convert does first with MODEL: kind from content, load a copy, run it on generated inputs."""
    source = sources.load(path, sources.LoadOptions(workdir=work))
    source.predict(sources.make_inputs(source.inputs, 2))


@pytest.fixture(scope="module")
def seeds(make_model):
    STARTED[:] = STARTED or [time.monotonic()]
    return {kind: make_model(kind).read_bytes() for kind in ("onnx", "tflite", "keras", "h5")}


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_fuzz_model_files(kind, seeds, root):
    @budget(kind)
    @given(content=mutated(seeds[kind]))
    def case(content):
        Case(root, f"model.{kind}", content).check(load_model, kind)
    case()


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_fuzz_keras_files(kind, seeds, root):
    """Keras archives: mutate the whole file, or one member of the zip (config.json, weights)."""
    seed = seeds[kind]

    @st.composite
    def keras_mutation(draw):
        if kind == "h5" or draw(st.booleans()):
            return draw(mutated(seed))
        with zipfile.ZipFile(io.BytesIO(seed)) as z:
            members = {n: z.read(n) for n in z.namelist()}
        name = draw(st.sampled_from(sorted(members)))
        members[name] = draw(mutated(members[name]))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for n, content in members.items():
                z.writestr(n, content)
        return buffer.getvalue()

    @budget(kind)
    @given(content=keras_mutation())
    def case(content):
        Case(root, f"model.{kind}", content).check(load_model, kind)
    case()


HOSTILE_NUMBERS = ["0", "-1", "-0.0", "nan", "inf", "-inf", "1e308", "99999999999999999999", "1e-320", "2.5",
                   "true", '"12"', "[]", "[1, -3]", "{}", '"\\u0000"']
PROFILE = """name = "fz"
description = "fuzz"
[device]
kind = "arm"
arch = "aarch64"
cores = 4
clock_ghz = 1.5
fp32_macs_per_cycle = 8.0
int8_macs_per_cycle = 16.0
memory_gbps = 4.0
compute_efficiency = 0.2
ram_kib = 512
[build]
formats = ["tflite", "onnx"]
batch = 1
input_shape = [1, 8, 8, 1]
[quantize]
precision = "int8"
calib_samples = 50
[preprocess]
scale = 0.5
mean = [0.1]
std = [0.2]
[bench]
threads = 2
warmup = 3
runs = 20
eval_samples = 10
"""


@st.composite
def profile_text(draw) -> bytes:
    lines = PROFILE.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "value", "drop", "duplicate", "garbage"]))
        if op == "value" and "=" in lines[at]:
            key = lines[at].split("=")[0].strip()
            lines[at] = f"{key} = {draw(st.sampled_from(HOSTILE_NUMBERS))}"
        elif op == "drop":
            del lines[at]
        elif op == "duplicate":
            lines.insert(at, lines[at])
        else:
            lines.insert(at, draw(st.text(max_size=20)))
    text = "\n".join(lines).encode("utf-8", "surrogatepass")
    return draw(mutated(text)) if draw(st.integers(0, 4)) == 0 else text


def test_fuzz_profiles(root):
    def load(path: Path, work: Path) -> None:
        targets.load_profile(path)

    @budget("toml")
    @given(content=profile_text())
    def case(content):
        Case(root, "fz.toml", content).check(load, "toml")
    case()


SPECS = [sources.TensorSpec("image", (1, 8, 8, 1), "float32")]
CLASSES = 4


@st.composite
def npz_content(draw) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    n = draw(st.sampled_from([0, 1, 5, 12]))
    arrays = {"x": rng.random((n, 8, 8, 1), dtype=np.float32), "y": np.arange(n) % CLASSES}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["x", "y"]))
        op = draw(st.sampled_from(["dtype", "shape", "nonfinite", "drop", "rename", "values", "onehot"]))
        a = arrays.get(key)
        if a is None:
            continue
        if op == "dtype":
            arrays[key] = a.astype(draw(st.sampled_from(["int8", "float16", "float64", "complex64", "bool", "U3",
                                                         "uint64", "int64"])))
        elif op == "shape" and a.size:
            arrays[key] = a.reshape(draw(st.sampled_from([(a.size,), (1, a.size), (a.size, 1), (*a.shape, 1)])))
        elif op == "nonfinite" and a.size and a.dtype.kind == "f":
            a = a.copy()
            a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            arrays[key] = a
        elif op == "drop":
            del arrays[key]
        elif op == "rename":
            arrays[draw(st.sampled_from(["X", "inputs", "image", "labels"]))] = arrays.pop(key)
        elif op == "values" and a.size:
            a = a.astype(np.float64)
            a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([-1, 0.5, 1e30, CLASSES, 2 ** 40]))
            arrays[key] = a
        elif op == "onehot" and key == "y" and a.ndim == 1 and a.dtype.kind in "iu" and a.size:
            arrays[key] = np.eye(CLASSES)[a % CLASSES]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    content = buffer.getvalue()
    return draw(mutated(content)) if draw(st.integers(0, 3)) == 0 else content


def test_fuzz_data_files(root):
    def load(path: Path, work: Path) -> None:
        evalset = data.load_evalset(path, SPECS, 0)
        if evalset.labels is not None:
            data.check_classes(evalset.labels, CLASSES, evalset.origin)

    @budget("npz")
    @given(content=npz_content())
    def case(content):
        Case(root, "val.npz", content).check(load, "npz")
    case()


CLI_CASES = int(os.environ.get("EDGEKIT_FUZZ_CLI_CASES", "2"))


@pytest.mark.parametrize("kind", ["onnx", "tflite", "toml", "npz"])
def test_fuzz_through_the_real_cli(kind, seeds, tmp_path):
    """The whole command in a subprocess, on a few mutated files: exit 0, or exit 2 with exactly one
    line on stderr; the input untouched; nothing left in $TMPDIR or beside --out."""
    rng = np.random.default_rng(0 if SEED is None else int(SEED))
    model = fake.save_model(tmp_path / "fake.npz", (1, 8, 8, 1), classes=CLASSES)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "plumb.toml").write_text('name = "plumb"\n[build]\nformats = ["fake"]\n[bench]\nruns = 2\nwarmup = 0\n')
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for i in range(CLI_CASES):
        if kind in ("onnx", "tflite"):
            content = _flip(seeds[kind], rng)
            target = tmp_path / f"m{i}.{kind}"
            args = [target, "--format", "onnx" if kind == "onnx" else "tflite"]
        elif kind == "toml":
            content = _flip(PROFILE.replace('name = "fz"', f'name = "p{i}"').encode(), rng)
            target = profiles / f"p{i}.toml"
            args = [model, "--target", f"p{i}", "--targets-dir", profiles, "--format", "fake"]
        else:
            buffer = io.BytesIO()
            np.savez(buffer, x=np.random.default_rng(i).random((6, 8, 8, 1), dtype=np.float32), y=np.arange(6) % 4)
            content = _flip(buffer.getvalue(), rng)
            target = tmp_path / f"d{i}.npz"
            args = [model, "--target", "plumb", "--targets-dir", profiles, "--data", target]
        target.write_bytes(content)
        out = tmp_path / "outs" / f"o{i}"
        proc = subprocess.run([sys.executable, "-m", "edgekit", "convert", *map(str, args), "--runs", "1", "--warmup",
                               "0", "--out", str(out), "--quiet"], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "TMPDIR": str(scratch)}, timeout=600)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 0 or (proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")), \
            proc.stderr
        assert target.read_bytes() == content
        assert [p.name for p in scratch.iterdir() if p.name != ".ses"] == []
        assert all(p.name.startswith("o") for p in (tmp_path / "outs").iterdir()) if (tmp_path / "outs").exists() \
            else True
        count("cli")


def _flip(content: bytes, rng) -> bytes:
    out = bytearray(content)
    for at in rng.integers(0, len(out), size=int(rng.integers(1, 6))):
        out[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


# --- the surfaces added since the first fuzz pass (issue #25) ----------------------------------------

FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2", "-Os", "-ffast-math",
         "-fno-exceptions", "-march=armv8.1-m.main+mve", "-wrapper", "sh,-c,id", "-B/tmp", "@/etc/passwd",
         "-specs=nosys.specs", "-fplugin=x", "-fplugin-arg-x-y=z", "-fprofile-use=/p", "-fdump-tree-all", "-o",
         "/etc/passwd", "-include", "-isystem/usr", "-L.", "-Wl,-T,/x.ld", "-mcpu=../x", "-f", "-O9", "--help",
         "-fstack-usage", "-fmacro-prefix-map=/a=/b", "-mfloat-abi=nope", ""]


@st.composite
def flags_profile(draw) -> bytes:
    import json
    flag = st.one_of(st.sampled_from(FLAGS), st.text(max_size=24),
                     st.builds(lambda a, b: a + b, st.sampled_from(["-f", "-m", "-O", "-mcpu=", "-fno-", "-march="]),
                               st.text(max_size=16)))
    flags = draw(st.lists(flag, max_size=5))
    text = (f'name = "fz"\ndescription = {json.dumps(draw(st.text(max_size=20)))}\n[device]\nkind = "mcu"\n'
            f'arch = "armv6m"\ngcc_flags = [{", ".join(json.dumps(f) for f in flags)}]\n')
    data = text.encode("utf-8", "surrogatepass")
    return draw(mutated(data)) if draw(st.integers(0, 5)) == 0 else data


def test_fuzz_profiles_with_compiler_flags(root):
    def load(path: Path, work: Path) -> None:
        for flag in targets.load_profile(path).profile.device.gcc_flags:  # accepted: on the allow-list only
            assert targets.ALLOWED_FLAGS.fullmatch(flag) and "/" not in flag and not flag.startswith("@"), flag

    @budget("flags")
    @given(content=flags_profile())
    def case(content):
        Case(root, "fz.toml", content).check(load, "flags")
    case()


URLS = ["sqlite:///{root}/s.db", "postgresql://u:pw@127.0.0.1:5432/study", "postgres://u@h/db",
        "mysql://u@h/db", "sqlite://", "sqlite:///:memory:", "oracle://a/b", "mssql+pyodbc://x", "http://h/x"]


@st.composite
def cluster_url(draw, folder: str) -> bytes:
    url = draw(st.one_of(st.sampled_from(URLS).map(lambda u: u.format(root=folder)), st.text(max_size=40),
                         st.builds(lambda a, b: f"{a}://{b}", st.sampled_from(["sqlite", "postgresql", "mysql",
                                                                               "x", ""]), st.text(max_size=30))))
    data = url.encode("utf-8", "surrogatepass")
    return draw(mutated(data)) if data and draw(st.integers(0, 3)) == 0 else data


def test_fuzz_cluster_urls(root):
    from edgekit.tune.study import check_url

    def check(path: Path, work: Path) -> None:
        check_url(path.read_bytes().decode("utf-8", "surrogateescape"))

    @budget("cluster")
    @given(content=cluster_url(str(root)))
    def case(content):
        Case(root, "url.txt", content).check(check, "cluster")
    case()


HOSTILE_JSON = [None, [], {}, "", "x", -1, 0, 1e308, 2 ** 70, True, [None], {"a": None}, "<script>", "\u0000"]


@pytest.fixture(scope="module")
def report_seed(tmp_path_factory):
    """A real report.json (convert with the numpy-only fake backend)."""
    from edgekit import pipeline
    folder = tmp_path_factory.mktemp("report-seed")
    model = fake.save_model(folder / "fake.npz", (1, 2, 3), classes=4)
    pipeline.convert(model, formats=["fake"], runs=1, warmup=0, out=folder / "o")
    return (folder / "o" / "report.json").read_bytes()


@st.composite
def report_json(draw, seed: bytes) -> bytes:
    import json
    doc = json.loads(seed)
    for _ in range(draw(st.integers(1, 4))):
        node, path = doc, []
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
            path.append((node, key))
            node = node[key]
        if not path:
            continue
        parent, key = path[-1]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(st.sampled_from(HOSTILE_JSON))
    data = json.dumps(doc).encode()
    return draw(mutated(data)) if draw(st.integers(0, 3)) == 0 else data


def test_fuzz_report_json(root, report_seed):
    from edgekit import html_report

    def render(path: Path, work: Path) -> None:
        html_report.write([path.parent], work / "page.html")

    @budget("report")
    @given(content=report_json(report_seed))
    def case(content):
        Case(root, "report.json", content).check(render, "report")
    case()


BROKEN_PLUGINS = {"fz_raises": "raise ValueError('bug')\n", "fz_syntax": "def (:\n", "fz_exits": "raise SystemExit(3)\n",
                  "fz_empty": "", "fz_imports": "import fz_no_such_module\n"}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    for name, code in BROKEN_PLUGINS.items():
        (folder / f"{name}.py").write_text(code)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


PLUGIN_NAMES = [*BROKEN_PLUGINS, "fake_backend", "command_probe", "edgekit.backends.onnx", "json", "fz_absent",
                "fz_absent.deeper", "../fz", "fz-dash", "fz..dots", ".fz", "fz.", " ", "9fz"]


def test_fuzz_plugin_names(root, plugin_dir):
    from edgekit import backends, passes, probes
    loaders = {"EDGEKIT_BACKENDS": backends.available, "EDGEKIT_PROBES": probes.all_probes,
               "EDGEKIT_PASSES": passes.all_passes}

    @st.composite
    def names(draw) -> bytes:
        variable = draw(st.sampled_from(sorted(loaders)))
        name = draw(st.one_of(st.sampled_from(PLUGIN_NAMES), st.text(max_size=20),
                              st.from_regex(r"fz_[a-z]{1,6}(\.[a-z]{1,4})?", fullmatch=True)))
        return f"{variable}\n{name}".encode("utf-8", "surrogatepass")

    def load(path: Path, work: Path) -> None:
        variable, _, name = path.read_bytes().decode("utf-8", "surrogateescape").partition("\n")
        saved = os.environ.get(variable)
        os.environ[variable] = name
        try:
            loaders[variable]()
        except EdgekitError as exc:
            assert f"${variable}" in exc.one_line() or "contract" in exc.one_line(), exc.one_line()
            raise
        finally:
            os.environ.pop(variable) if saved is None else os.environ.__setitem__(variable, saved)
            for cached in (backends._load, probes._load, passes._load):
                cached.cache_clear()

    @budget("plugin")
    @given(content=names())
    def case(content):
        Case(root, "plugin.txt", content).check(load, "plugin")
    case()


def test_fuzz_summary(capsys):
    """How many cases ran and how long they took (printed for the closing note; -s shows it)."""
    total = sum(RAN.values())
    with capsys.disabled():
        print(f"\nfuzz: {total} cases ({', '.join(f'{k} {v}' for k, v in sorted(RAN.items()))}; in-process "
              f"{OUTCOMES.get('accepted', 0)} accepted, {OUTCOMES.get('refused', 0)} refused with one line) in "
              f"{time.monotonic() - STARTED[0]:.0f} s" if STARTED else "no case ran")
    if set(RAN) >= set(WEIGHTS) and TOTAL >= 1000:
        assert total >= 1.25 * TOTAL  # 1,500 by default
