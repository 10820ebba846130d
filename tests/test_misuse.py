"""Misuse of the surface added since the first safety pass (issue #25): report --out, unwritable
destinations, broken result files. Each case through the CLI, in-process; the user's files are
checked byte for byte afterwards."""
from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest

import fake_backend as fake
from clihelp import assert_user_error, run_cli
from conftest import tree_digest

PROFILE = 'name = "plumb"\n[build]\nformats = ["fake"]\n[bench]\nruns = 1\nwarmup = 0\neval_samples = 4\n'


@pytest.fixture(scope="module")
def converted_once(tmp_path_factory):
    """A convert output directory (numpy-only fake backend: fast), made once for the module."""
    from edgekit import pipeline
    folder = tmp_path_factory.mktemp("converted")
    model = fake.save_model(folder / "fake.npz", (1, 2, 3), classes=4)
    pipeline.convert(model, formats=["fake"], runs=1, warmup=0, out=folder / "o")
    return folder / "o"


@pytest.fixture
def converted(converted_once, tmp_path):
    """A private copy of it for one test."""
    import shutil
    shutil.copytree(converted_once, tmp_path / "o")
    return tmp_path / "o"


def test_report_out_replaces_an_existing_file_only_with_force(converted, capsys, tmp_path):
    model = tmp_path / "model.tflite"  # the case: a user's model where the page would go
    model.write_bytes(b"TFL3 a user's model")
    assert_user_error(run_cli(capsys, "report", converted, "--out", model), "already exists", "--force")
    assert model.read_bytes() == b"TFL3 a user's model"
    assert run_cli(capsys, "report", converted, "--out", tmp_path / "page.html").code == 0
    assert_user_error(run_cli(capsys, "report", converted, "--out", tmp_path / "page.html"), "already exists")
    assert run_cli(capsys, "report", converted, "--out", tmp_path / "page.html", "--force").code == 0
    assert "<html>" in (tmp_path / "page.html").read_text()


def test_report_never_writes_over_what_it_reads(converted, capsys):
    before = tree_digest(converted)
    for target in (converted / "report.json", converted):
        result = run_cli(capsys, "report", converted, "--out", target, "--force")
        assert result.code == 2 and "Traceback" not in result.err
    assert tree_digest(converted) == before


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"artifacts": 3}', "", "\xff\xfe"])
def test_a_broken_report_json_is_one_line(content, capsys, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "report.json").write_text(content, encoding="latin-1")
    assert_user_error(run_cli(capsys, "report", tmp_path / "o", "--out", tmp_path / "p.html"), "report.json",
                      "not a result edgekit can read")
    assert not (tmp_path / "p.html").exists()


def test_an_unwritable_out_parent_is_one_line(converted, capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a user's file")
    assert_user_error(run_cli(capsys, "report", converted, "--out", blocker / "p.html"), "cannot write", "file.txt")
    model = fake.save_model(tmp_path / "m.npz", (1, 2, 3), classes=4)
    for out in (blocker / "o", "/proc/edgekit-nowhere/o", "/sys/edgekit-nowhere"):
        result = run_cli(capsys, "convert", model, "--format", "fake", "--runs", "1", "--out", out)
        assert_user_error(result, "cannot write")
    assert blocker.read_text() == "a user's file"


SHADOW = "import pathlib\npathlib.Path({sentinel!r}).write_text('ran')\nraise SystemExit(97)\n"


@pytest.fixture
def shadowing_cwd(tmp_path, monkeypatch):
    """A downloaded-model folder as the cwd, holding numpy.py and edgekit.py (and an empty PYTHONPATH
    entry, which means the cwd): none of it may ever run."""
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for name in ("numpy", "edgekit", "onnx", "tensorflow"):
        (folder / f"{name}.py").write_text(SHADOW.format(sentinel=str(tmp_path / f"{name}-ran")))
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PYTHONPATH", os.pathsep + os.environ.get("PYTHONPATH", ""))
    yield folder
    assert sorted(p.name for p in tmp_path.glob("*-ran")) == []


def test_python_children_never_import_from_the_cwd(shadowing_cwd, capsys, tmp_path):
    from edgekit import children, isolate
    proc = children.run([sys.executable, "-c", "import numpy, edgekit; print(numpy.__file__)"], 60)
    assert proc.returncode == 0 and "downloaded" not in proc.stdout, proc
    assert isolate.run("os.path:abspath", "x", step="probe") == str(shadowing_cwd / "x")  # started, ran, answered
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in ("a", "b"):
        (profiles / f"{name}.toml").write_text(PROFILE.replace("plumb", name))
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    # the runner (numpy + the fake backend) in a child, and each target in an isolate worker
    result = run_cli(capsys, "convert", model, "--target", "a,b", "--targets-dir", profiles, "--out", tmp_path / "o")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "o" / "a" / "report.json").read_text())["artifacts"][0]["status"] == "ok"


MCU = 'name = "{name}"\ndescription = "{description}"\n[device]\nkind = "mcu"\narch = "armv6m"\n{device}\n'


@pytest.mark.parametrize("flag", ["-wrapper", "-B/tmp/evil", "@/etc/flags", "-specs=/tmp/x.specs", "-fplugin=x",
                                  "-fplugin=/tmp/evil.so", "-fprofile-generate", "-fdump-tree-all", "-include",
                                  "-o/etc/passwd", "-mcpu=../../x", "-fx=/abs", "-O2 -wrapper", ""])
def test_compiler_flags_outside_the_allow_list_are_refused(flag, capsys, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "m.toml").write_text(MCU.format(name="m", description="", device=f"gcc_flags = ['-mthumb', {flag!r}]"))
    result = run_cli(capsys, "targets", "--targets-dir", d, "show", "m")
    assert_user_error(result, "m.toml", "device.gcc_flags", repr(flag), "not allowed")


def test_allowed_compiler_flags_load(capsys, tmp_path):
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2", "-Os", "-ffast-math",
             "-fno-exceptions", "-fstack-protector-strong"]
    (tmp_path / "m.toml").write_text(MCU.format(name="m", description="", device=f"gcc_flags = {flags!r}"))
    shown = run_cli(capsys, "targets", "--json", "show", tmp_path / "m.toml")
    assert shown.code == 0 and json.loads(shown.out)["device"]["gcc_flags"] == flags  # pure JSON


def test_a_profile_cannot_shadow_a_builtin_silently(capsys, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "cpu.toml").write_text('name = "cpu"\n[build]\nformats = ["fake"]\n')
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    assert_user_error(run_cli(capsys, "convert", model, "--target", "cpu", "--targets-dir", d),
                      "built-in target 'cpu'", "--target")
    shown = run_cli(capsys, "targets", "--targets-dir", d, "--json", "show", d / "cpu.toml")
    assert shown.code == 0 and json.loads(shown.out)["path"] == str(d / "cpu.toml")


def test_a_device_model_without_memory_bandwidth_is_refused_at_load(capsys, tmp_path):
    (tmp_path / "d.toml").write_text('name = "d"\n[device]\nclock_ghz = 1.0\nfp32_macs_per_cycle = 4\n')
    assert_user_error(run_cli(capsys, "targets", "show", tmp_path / "d.toml"), "d.toml", "memory_gbps")


def test_targets_json_show_is_pure_json_and_markup_is_text(capsys, tmp_path, monkeypatch):
    shown = run_cli(capsys, "targets", "--json", "show", "cpu")
    assert shown.code == 0 and json.loads(shown.out)["name"] == "cpu"
    d = tmp_path / "p"
    d.mkdir()
    text = "[bold red]loud[/] [/oops] [link=file:///etc/passwd]x[/link]"
    (d / "rich.toml").write_text(MCU.format(name="rich", description=text, device=""))
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich renders as on a terminal
    monkeypatch.setenv("COLUMNS", "400")
    listing = run_cli(capsys, "targets", "--targets-dir", d)
    assert listing.code == 0 and "Traceback" not in listing.err, listing.err
    assert "[bold red]loud[/] [/oops]" in listing.out


def test_bench_takes_a_file_named_like_an_option(make_model, capsys, tmp_path):
    (tmp_path / "-x.tflite").write_bytes(make_model("tflite").read_bytes())
    result = run_cli(capsys, "bench", "--runs", "1", "--warmup", "0", "--processes", "1", "--json", "--", "-x.tflite")
    assert result.code == 0, result.err
    assert json.loads(result.out)["latency_ms"]["median"] > 0


@pytest.mark.parametrize("args, words", [(["--runs", "0"], "--runs: 0 is below 1"),
                                         (["--threads", "x"], "'x' is not a whole number"),
                                         (["--warmup", "-1"], "--warmup"), ([], "required")])
def test_the_runner_refuses_bad_arguments_in_one_line(args, words, tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "edgekit.runner", *args, *(["m.tflite"] if args else [])],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def _bomb_npz(path, rows: int, row_shape=(1000, 1000)):
    """An .npz whose x member inflates to rows x row_shape float32 (4 MB a row: 4.4 GB for 1,100 rows)
    from a few MB: one deflated block of zero rows, flushed so it stands alone, repeated; the zip is
    written by hand (zip64) so nothing is inflated or compressed here. Its CRC is not that of the
    data: a reader that inflates the whole member only finds out after 4.4 GB."""
    import struct
    import zlib
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (rows, *row_shape)})
    row = 4 * int(np.prod(row_shape))
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header.getvalue()) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(bytes(row)) + co.flush(zlib.Z_FULL_FLUSH)
    tail = co.flush()
    size, packed = len(header.getvalue()) + rows * row, len(head) + rows * len(block) + len(tail)
    name, zip64 = b"x.npy", struct.pack("<HHQQ", 1, 16, size, packed)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, 0, 0xFFFFFFFF, 0xFFFFFFFF, len(name), 20))
        f.write(name + zip64 + head)
        for _ in range(rows):
            f.write(block)
        f.write(tail)
        central = f.tell()
        f.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, 0, 0xFFFFFFFF, 0xFFFFFFFF,
                            len(name), 20, 0, 0, 0, 0, 0) + name + zip64)
        end = f.tell()
        f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, end - central, central))
        f.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, end - central, central, 0))
    return path


def test_data_is_read_only_as_far_as_the_samples_used(tmp_path):
    import resource
    from edgekit import data
    from edgekit.sources import TensorSpec
    spec = [TensorSpec("x", (1, 1000, 1000), "float32")]
    bomb = _bomb_npz(tmp_path / "bomb.npz", 1100)  # inflates to 4.4 GB; the file is a few MB
    assert bomb.stat().st_size < 8 * 2 ** 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert data.sample_shapes(bomb) == {None: (1000, 1000)}
    evalset = data.load_evalset(bomb, spec, 0, scored=3)
    assert len(evalset.samples) == 3
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 400 * 1024  # KiB: far below 4.4 GB
    big = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.float32, (1100, 1000, 1000))  # sparse file
    del big
    evalset = data.load_evalset(tmp_path / "big.npy", spec, 0, scored=4, held=2)  # the first 4 and the last 2
    assert len(evalset.samples) == 6 and evalset.held == 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 400 * 1024


def test_an_npz_member_that_would_not_fit_in_memory_is_refused_from_its_header(capsys, tmp_path, monkeypatch):
    from edgekit import bounds
    monkeypatch.setattr(bounds, "available_memory", lambda: 2 ** 30)  # 1 GiB left on this host
    _bomb_npz(tmp_path / "bomb.npz", 1100)
    model = fake.save_model(tmp_path / "fake.npz", (1, 1000, 1000), classes=2)
    result = run_cli(capsys, "convert", model, "--format", "fake", "--precision", "int8", "--calib",
                     tmp_path / "bomb.npz", "--calib-samples", "1000", "--out", tmp_path / "o")
    assert_user_error(result, "bomb.npz", "GiB")
    assert not (tmp_path / "o").exists()


def test_an_image_decompression_bomb_is_one_line(capsys, tmp_path):
    from PIL import Image
    folder = tmp_path / "calib"
    folder.mkdir()
    Image.new("L", (10_000, 10_000)).save(folder / "bomb.png")  # 100 Mpx, a few hundred KB of PNG
    model = fake.save_model(tmp_path / "fake.npz", (1, 8, 8, 1), classes=2)
    result = run_cli(capsys, "convert", model, "--format", "fake", "--precision", "int8", "--calib", folder,
                     "--out", tmp_path / "o")
    assert_user_error(result, "bomb.png", "decompression bomb")


@pytest.mark.parametrize("rows, scored, held", [(40, 8, 10), (40, 30, 10), (9, 200, 100), (7, 3, 100), (40, 8, 0)])
def test_reading_only_the_rows_used_scores_and_calibrates_the_same_samples(rows, scored, held, tmp_path):
    from edgekit import data
    from edgekit.sources import TensorSpec
    x = np.arange(rows * 6, dtype=np.float32).reshape(rows, 3, 2)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(rows) % 3)
    spec = [TensorSpec("x", (1, 3, 2), "float32")]
    whole = data.load_evalset(tmp_path / "d.npz", spec, 0)
    part = data.load_evalset(tmp_path / "d.npz", spec, 0, scored=scored, held=held)
    if held:
        (whole, calib_w), (part, calib_p) = data.hold_out(whole, held), data.hold_out(part, held)
        assert np.array_equal(np.stack([s[0] for s in calib_w.samples]), np.stack([s[0] for s in calib_p.samples]))
    whole, part = data.take(whole, scored), data.take(part, scored)
    assert np.array_equal(np.stack([s[0] for s in whole.samples]), np.stack([s[0] for s in part.samples]))
    assert np.array_equal(whole.labels, part.labels)


def _external_onnx(folder, location="weights.bin"):
    """A MatMul + Softmax ONNX model whose weights live in an external data file (as over 2 GB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"])],
                              "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return folder / "m.onnx"


def test_onnx_with_external_data_converts(capsys, tmp_path):
    model = _external_onnx(tmp_path / "in")
    assert (tmp_path / "in" / "weights.bin").stat().st_size == 8 * 4 * 4
    result = run_cli(capsys, "convert", model, "--format", "onnx", "--runs", "1",
                     "--warmup", "0", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert {a["format"] for a in report["artifacts"]} == {"onnx"} and (tmp_path / "o" / "model.onnx").is_file()
    assert all(a["status"] == "ok" for a in report["artifacts"]), report["artifacts"]
    assert all(a["fidelity"]["verified"] for a in report["artifacts"])


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "sub/../../secret.bin", "link.bin"])
def test_onnx_external_data_outside_the_models_folder_is_refused(location, capsys, tmp_path):
    import onnx
    (tmp_path / "secret.bin").write_bytes(bytes(128))
    model = _external_onnx(tmp_path / "in")
    (tmp_path / "in" / "link.bin").symlink_to(tmp_path / "secret.bin")
    proto = onnx.load(str(model), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(proto, str(model))
    result = run_cli(capsys, "convert", model, "--format", "onnx", "--runs", "1", "--out", tmp_path / "o")
    assert_user_error(result, "m.onnx", "outside the model's folder", repr(location))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("url, words", [
    ("nonsense", "is not a database URL"), ("http://example.org/db", "is not a database URL"),
    ("postgresql://u:secret@h:notaport/db", "is not a database URL"),
    ("mysql://u@localhost/db", "driver is not installed"), ("sqlite://", "in-memory"),
    ("sqlite:////nonexistent-folder/x/study.db", "does not exist")])
def test_tune_cluster_urls_are_checked_before_anything_is_written(url, words, capsys, tmp_path):
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 2, 3), np.float32), y=np.arange(8) % 4)
    result = run_cli(capsys, "tune", model, "--data", tmp_path / "d.npz", "--out", tmp_path / "t", "--cluster", url)
    assert_user_error(result, "--cluster", words)
    assert "secret" not in result.err
    assert not (tmp_path / "t").exists()


BROKEN = {"raises": "raise RuntimeError('plug-in bug\\nsecond line')\n", "syntax": "def (:\n",
          "exits": "import sys\nsys.exit(3)\n", "imports": "import no_such_module_anywhere\n"}


@pytest.mark.parametrize("variable", ["EDGEKIT_BACKENDS", "EDGEKIT_PROBES", "EDGEKIT_PASSES"])
@pytest.mark.parametrize("case", [*BROKEN, "../evil", "a b", "x..y"])
def test_a_plugin_that_fails_at_import_is_one_line_naming_it_and_the_variable(case, variable, capsys, tmp_path,
                                                                             monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    name = f"broken_{case}" if case in BROKEN else case
    if case in BROKEN:
        (plugins / f"{name}.py").write_text(BROKEN[case])
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv(variable, ",".join(filter(None, [os.environ.get(variable), name])))
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    result = run_cli(capsys, "convert", model, "--format", "fake", "--runs", "1", "--out", tmp_path / "o")
    assert_user_error(result, repr(name), f"${variable}")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, why", [(["--mixed", "auto", "--keep-float", "dense"], "target cpu builds fp32"),
                                        (["--target", "cpu-int8", "--precision", "fp32", "--per-tensor"],
                                         "--precision fp32 builds fp32")])
def test_quantization_flags_on_an_fp32_build_are_said_to_do_nothing(flags, why, capsys, tmp_path):
    model = fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4)
    result = run_cli(capsys, "convert", model, "--format", "fake", "--runs", "1", "--warmup", "0", *flags,
                     "--out", tmp_path / "o", "--json")
    assert result.code == 0, result.err
    said = [w for w in json.loads(result.out)["warnings"] if "no effect" in w]
    assert len(said) == 1 and why in said[0] and "--precision" not in said[0].split(":")[0], said
    assert said[0].startswith(("--mixed", "--keep-float", "--per-tensor"))
