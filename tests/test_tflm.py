"""MCU targets: TFLite Micro's own kernels and arena report, the C artifact compiled for Cortex-M,
and the board verdicts, on models made here."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clihelp import run_cli
from edgekit.probes.mcu import c_artifact, child, engine, ops, parity


def _keras(path: Path, body) -> Path:
    import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    keras.Model(inputs, body(keras.layers, inputs)).save(path)
    return path


@pytest.fixture(scope="module")
def gelu_keras(models_dir) -> Path:
    """GELU converts to a TFLite builtin that LiteRT runs and TFLite Micro has no kernel for."""
    return _keras(models_dir / "gelu.keras", lambda L, x: L.Dense(4)(L.Flatten()(L.Conv2D(4, 3, activation="gelu")(x))))


@pytest.fixture(scope="module")
def wide_keras(models_dir) -> Path:
    """An 8x8x384 int8 activation (24 KiB) beside the next conv's output: fits a Cortex-M4's SRAM, not a 32 KiB
    M0+ board's; small weights, so flash fits both."""
    return _keras(models_dir / "wide.keras", lambda L, x: L.Dense(4, activation="softmax")(L.GlobalAveragePooling2D()(
        L.Conv2D(64, 1, activation="relu")(L.Conv2D(384, 3, padding="same", activation="relu")(x)))))


@pytest.fixture(scope="module")
def m4_report(small_keras, tiny_eval, tmp_path_factory):
    from edgekit import pipeline
    out = tmp_path_factory.mktemp("m4") / "o"
    report = pipeline.convert(small_keras, target="arm-m-int8", data=tiny_eval, calib_samples=8, runs=2, out=out)
    return out, report


def test_arena_agrees_with_tflm_allocation_report(m4_report):
    out, report = m4_report
    mcu = report["artifacts"][1]["mcu"]
    arena = mcu["emulated"]["arena"]
    # TFLite Micro's own report, printed by its interpreter in a separate process
    code = ("import numpy as np, sys\nfrom tflite_micro.python.tflite_micro import runtime\n"
            "it = runtime.Interpreter.from_file(sys.argv[1], arena_size=1 << 22)\n"
            "d = it.get_input_details(0); o = it.get_output_details(0)\n"
            "it.set_input(np.zeros(d['shape'], d['dtype']), 0); it.invoke(); it.print_allocations()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out / "model.tflite")], capture_output=True, text=True,
                          check=True)
    total = int(re.search(r"Arena allocation total (\d+) bytes", proc.stderr).group(1))
    head = int(re.search(r"Arena allocation head (\d+) bytes", proc.stderr).group(1))
    assert arena["used_bytes"] == total and arena["head_bytes"] == head
    assert arena["head_bytes"] + arena["tail_bytes"] == total
    assert mcu["emulated"]["how"] == "emulated (TFLite Micro host build)"
    # the header's arena size is enough for TFLite Micro; half of the planned activations is not
    header = (out / "mcu" / "model_data.h").read_text()
    size = int(re.search(r"kTensorArenaSize = (\d+);", header).group(1))
    assert size == ops.arena_to_allocate(total) and size % 16 == 0
    load = "import sys\nfrom tflite_micro.python.tflite_micro import runtime\n" \
           "runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))\n"
    assert subprocess.run([sys.executable, "-c", load, str(out / "model.tflite"), str(size)]).returncode == 0
    assert subprocess.run([sys.executable, "-c", load, str(out / "model.tflite"), str(total - head // 2)],
                          capture_output=True).returncode != 0
    # the RAM verdict uses the measured arena plus the profile's stated runtime, and shows the estimate too
    ram = mcu["verdict"]["ram"]
    assert ram["model_bytes"] == size and ram["needed_bytes"] == size + 16 * 1024 and ram["fits"] is True
    assert mcu["verdict"]["lifetime_estimate"]["how"].startswith("estimated")


def test_parity_with_litert_and_accuracy(m4_report):
    _, report = m4_report
    emu = report["artifacts"][1]["mcu"]["emulated"]
    assert emu["runs"] and emu["parity_vs_litert"]["samples"] == report["data"]["samples"]
    # TFLite Micro's reference kernels compute what LiteRT's built-in kernels compute, to the bit
    assert emu["parity_vs_litert_builtin"]["bit_exact"], emu["parity_vs_litert_builtin"]
    assert emu["parity_vs_litert"]["top1_agreement"] >= 0.9 and 0 <= emu["accuracy"]["value"] <= 1


def test_c_artifact_compiles_for_cortex_m4_and_matches_the_tflite(m4_report, tmp_path):
    out, report = m4_report
    tflite = (out / "model.tflite").read_bytes()
    source = (out / "mcu" / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_model_data[]" in source
    header = (out / "mcu" / "model_data.h").read_text()
    ops = report["artifacts"][1]["mcu"]["ops"]["used"]
    assert f"tflite::MicroMutableOpResolver<{len(ops)}> resolver;" in header and "resolver.AddConv2D();" in header
    array = bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})", source))
    assert array == tflite and f"g_model_data_len = {len(tflite)};" in source
    compiled = report["artifacts"][1]["mcu"]["c_artifact"]["compiled"]
    assert compiled["ok"] and compiled["cpu"] == "cortex-m4" and compiled["model_section_bytes"] == len(tflite)
    # compile it again here, with a translation unit that uses the header, and read the section back
    (tmp_path / "main.cc").write_text('#include "model_data.h"\nunsigned int arena_size() { return kTensorArenaSize '
                                      '+ kModelInput0Dims[1] + g_model_data[0] + g_model_data_len; }\n')
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c++17", "-Wall", "-Werror",
             "-fdata-sections", "-c"]
    for name in ("model_data", "main"):
        src = out / "mcu" / "model_data.cc" if name == "model_data" else tmp_path / "main.cc"
        subprocess.run(["arm-none-eabi-g++", *flags, f"-I{out / 'mcu'}", str(src), "-o", str(tmp_path / f"{name}.o")],
                       check=True)
    header = subprocess.run(["arm-none-eabi-readelf", "-h", str(tmp_path / "model_data.o")], capture_output=True,
                            text=True, check=True).stdout
    assert "ARM" in header
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "-j", ".rodata.g_model_data",
                    str(tmp_path / "model_data.o"), str(tmp_path / "section.bin")], check=True)
    assert (tmp_path / "section.bin").read_bytes() == tflite
    assert "C ARTIFACT" in (out / "report.md").read_text()


def test_missing_op_is_named_in_one_line_and_other_figures_come_out(gelu_keras, tiny_eval, capsys, tmp_path):
    result = run_cli(capsys, "convert", gelu_keras, "--target", "arm-m-int8", "--data", tiny_eval,
                     "--calib-samples", "8", "--runs", "2", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    lines = [ln for ln in result.out.splitlines() if "GELU" in ln]  # the report goes to stdout
    assert len(lines) == 1 and lines[0].startswith("TFLITE MICRO lacks 1 op(s)"), result.out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    target = report["artifacts"][1]
    assert target["status"] == "ok" and target["fidelity"]["verified"]  # LiteRT ran it
    mcu = target["mcu"]
    assert mcu["ops"]["missing"] == ["GELU"] and mcu["emulated"]["runs"] is False
    assert mcu["verdict"]["fits"] is False and mcu["verdict"]["summary"].startswith("DOES NOT RUN")
    assert mcu["c_artifact"]["compiled"]["ok"]
    assert mcu["verdict"]["ram"]["model_how"].startswith("activations (estimated")  # no arena: the estimate, labelled
    assert "measure it before flashing" in (tmp_path / "o" / "mcu" / "model_data.h").read_text()


def test_the_smaller_board_says_does_not_fit_with_measured_bytes(wide_keras, tiny_eval, tmp_path):
    from edgekit import pipeline, report
    results = {name: pipeline.convert(wide_keras, target=name, data=tiny_eval, calib_samples=8, runs=2,
                                      out=tmp_path / name) for name in ("arm-m-int8", "arm-m0plus-int8")}
    verdicts = {name: r["artifacts"][1]["mcu"]["verdict"] for name, r in results.items()}
    assert verdicts["arm-m-int8"]["fits"] is True
    small = verdicts["arm-m0plus-int8"]
    arena = results["arm-m0plus-int8"]["artifacts"][1]["mcu"]["emulated"]["arena"]["used_bytes"]
    assert small["fits"] is False and small["ram"]["fits"] is False and small["flash"]["fits"] is True
    assert f"{ops.arena_to_allocate(arena):,} B tensor arena (emulated (TFLite Micro host build))" in small["summary"]
    assert small["summary"].startswith("DOES NOT FIT on Arduino Zero")
    assert "does not fit" in small["ram"]["text"] and "B over" in small["ram"]["text"]
    assert "MCU VERDICT tflite int8-io: DOES NOT FIT" in (tmp_path / "arm-m0plus-int8" / "report.md").read_text()
    rows = report.summary_rows({"targets": list(results.values())})
    fits = report.SUMMARY_COLUMNS.index("fits board")
    assert [r[fits] for r in rows] == ["yes", "NO (RAM)"]
    assert results["arm-m0plus-int8"]["artifacts"][1]["mcu"]["c_artifact"]["compiled"]["cpu"] == "cortex-m0plus"


def test_a_tflite_micro_abort_stays_in_the_child_and_becomes_one_line(m4_report, tmp_path):
    """A softmax input scale of 1e-12 fails a CHECK in TFLite Micro's kernel: the child dies with SIGABRT,
    the parent turns it into a reason line naming the signal."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from edgekit import children
    model = flatbuffer_utils.read_model(str(m4_report[0] / "model.tflite"))
    graph = model.subgraphs[0]
    for op in graph.operators:
        if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.SOFTMAX:
            graph.tensors[op.inputs[0]].quantization.scale = [1e-12]
    flatbuffer_utils.write_model(model, str(tmp_path / "abort.tflite"))
    proc = children.run([sys.executable, "-m", "edgekit.probes.mcu.child", str(tmp_path / "abort.tflite"), "--json",
                         str(tmp_path / "r.json"), "--log", str(tmp_path / "tflm.log")], 120)
    assert proc.returncode < 0 and not (tmp_path / "r.json").exists()
    reason = parity._crash_reason(proc, (tmp_path / "tflm.log").read_text())
    assert reason.startswith("TFLite Micro died with SIGABRT while loading or running the model") and "\n" not in reason


def test_first_divergence_walks_every_op(m4_report, tmp_path):
    """Op by op on one sample, TFLite Micro against LiteRT's built-in kernels (both keep every tensor):
    on this model they agree everywhere, so no op is named."""
    out, report = m4_report
    rng = np.random.default_rng(1)
    x = rng.random(report["model"]["inputs"][0]["shape"], dtype=np.float32)
    assert parity.first_divergence(out / "model.tflite", [x], tmp_path, 0) == \
        {"sample": 0, "op": None, "reason": "no intermediate tensor differs"}
    text = engine._parity_text({"bit_exact": False, "max_abs_diff": 0.02, "samples_differing": 3, "samples": 10,
                              "first_divergence": {"sample": 4, "op_index": 2, "op": "CONV_2D",
                                                   "elements_differing": 11, "elements": 100, "max_diff": 1}})
    assert "first differing op on sample 4: #2 CONV_2D (11 of 100 values, up to 1 steps)" in text


def test_op_list_and_parsers():
    assert ops.missing_ops(["CONV_2D", "GELU", "CUSTOM:TFLite_Detection_PostProcess", "CUSTOM:FlexErf"]) == \
        ["GELU", "CUSTOM:FlexErf"]
    report = ("[RecordingMicroAllocator] Arena allocation total 6272 bytes\n"
              "[RecordingMicroAllocator] Arena allocation head 3072 bytes\n"
              "[RecordingMicroAllocator] Arena allocation tail 3200 bytes\n"
              "[RecordingMicroAllocator] 'NodeAndRegistration struct' used 448 bytes with alignment overhead "
              "(requested 448 bytes for 7 NodeAndRegistration structs)\n")
    parsed = child.parse_allocations(report)
    assert (parsed["used_bytes"], parsed["head_bytes"], parsed["tail_bytes"]) == (6272, 3072, 3200)
    assert parsed["records"]["NodeAndRegistration struct"] == {"bytes": 448, "requested": 448, "count": 7}
    assert ops.arena_to_allocate(6272) == 6288 and ops.arena_to_allocate(6273) == 6304
    names = {op: c_artifact.resolver_method(op) for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_TO_SPACE_ND", "PADV2",
                                                     "UNIDIRECTIONAL_SEQUENCE_LSTM", "CUSTOM:SignalPCAN", "CUSTOM:Foo")}
    assert names == {"CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "BATCH_TO_SPACE_ND":
                     "AddBatchToSpaceNd", "PADV2": "AddPadV2", "UNIDIRECTIONAL_SEQUENCE_LSTM":
                     "AddUnidirectionalSequenceLSTM", "CUSTOM:SignalPCAN": "AddPCAN", "CUSTOM:Foo": None}
    refused = child._first_error("tensorflow/lite/micro/kernels/dequantize_common.cc:42 input->type == kTfLiteInt8 was "
                                "not true.\nNode DEQUANTIZE (number 0) failed to prepare with status 1\n")
    assert refused.startswith("TFLite Micro's DEQUANTIZE kernel refused node 0 at prepare (input->type ==")
    assert shutil.which("arm-none-eabi-g++"), "make setup installs gcc-arm-none-eabi (requirements/apt.txt)"


@pytest.fixture(scope="module")
def clustered_keras(models_dir) -> Path:
    """A dense layer whose weights take 4 values per output channel (as after weight clustering)."""
    import keras
    import numpy as np
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    hidden = keras.layers.Dense(256, activation="relu", name="fc")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="probs")(hidden))
    rng = np.random.default_rng(0)
    kernel = rng.choice([-0.2, -0.05, 0.05, 0.2], size=(64, 256)).astype("float32")
    model.get_layer("fc").set_weights([kernel, np.zeros(256, "float32")])
    model.save(models_dir / "clustered.keras")
    return models_dir / "clustered.keras"


def test_tflm_compression_where_it_applies(clustered_keras, m4_report, tiny_eval, capsys, tmp_path):
    result = run_cli(capsys, "convert", clustered_keras, "--target", "arm-m-int8", "--data", tiny_eval,
                     "--calib-samples", "8", "--runs", "2", "--tflm-compress", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    mcu = json.loads((tmp_path / "o" / "report.json").read_text())["artifacts"][1]["mcu"]
    comp = mcu["compressed"]
    fc = next(t for t in comp["tensors"] if "fc" in t["tensor"])
    assert fc["compressed"] and fc["index_bits"] == 2 and fc["distinct_per_channel"] <= 4
    assert comp["runs"] and comp["parity_vs_uncompressed"]["bit_exact"]  # LUT compression is lossless
    assert comp["tflite_bytes"] < mcu["c_artifact"]["tflite_bytes"] - 4096  # 16 KiB of int8 weights at 2 bits
    assert comp["c_artifact"]["compiled"]["model_section_bytes"] == comp["tflite_bytes"]
    assert (tmp_path / "o" / "mcu" / "compressed" / "model_data.cc").is_file()
    assert "TFLM COMPRESSION" in result.out and "bit-exact" in result.out
    # a model with ordinary int8 weights: said plainly why it does not apply, tensor by tensor
    proc = subprocess.run([sys.executable, "-m", "edgekit.probes.mcu.child", str(m4_report[0] / "model.tflite"), "--compress",
                           str(tmp_path / "c.tflite"), "--json", str(tmp_path / "c.json")], capture_output=True)
    plan = json.loads((tmp_path / "c.json").read_text())
    assert proc.returncode == 1 and not plan["compressed"] and not (tmp_path / "c.tflite").exists()
    assert plan["reason"].startswith("no weight tensor has few enough distinct values")
    assert all(not t["compressed"] and "distinct values per channel" in t["why"] for t in plan["tensors"])
