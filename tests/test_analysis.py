"""Parameters and MACs per layer, checked against hand-computed values."""
from __future__ import annotations

import json

from clihelp import run_cli


def test_params_and_macs_of_a_small_cnn(small_keras, capsys, tmp_path):
    result = run_cli(capsys, "analyze", small_keras, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    layers = {r["layer"]: r for r in report["layers"]}
    # conv1: 3x3x1 -> 16 on 8x8 (same padding): 16*9 weights + 16 biases; 8*8*16 outputs x 9 MACs
    assert layers["conv1"]["params"] == 16 * 9 + 16 and layers["conv1"]["macs"] == 8 * 8 * 16 * 9
    # conv2: 3x3x16 -> 32 on 8x8
    assert layers["conv2"]["params"] == 32 * 9 * 16 + 32 and layers["conv2"]["macs"] == 8 * 8 * 32 * 9 * 16
    # fc: 4*4*32 = 512 -> 64; probs: 64 -> 4
    assert layers["fc"]["params"] == 512 * 64 + 64 and layers["fc"]["macs"] == 512 * 64
    assert layers["probs"]["macs"] == 64 * 4
    assert report["totals"]["macs"] == sum(r["macs"] for r in report["layers"])
    table = run_cli(capsys, "analyze", small_keras)
    assert "MACs" in table.out and "conv2" in table.out and "MACs" not in table.err
