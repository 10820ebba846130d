"""Layer names across formats: does an op or tensor name of a converted graph belong to a source layer,
and the names a list of layers selects (--keep-float, per-backend quantize hooks)."""
from __future__ import annotations

import re

from .errors import ConversionError, EdgekitError

UNMATCHED = re.compile(r"--keep-float (.+?): no op of the")  # select's message, read back


def matches_layer(layer: str, op_name: str, scope_suffix: bool = True) -> bool:
    """Does an op/tensor name belong to a source layer? Matches whole path components.

    TF scopes add a numeric suffix to layer names (`conv1` -> `model/conv1_1/Conv2D`; `scope_suffix`
    False: the name exactly), and TFLite fuses several names into one with `;`.
    """
    suffix = r"(_\d+)?" if scope_suffix else ""
    pattern = rf"(^|[/;]){re.escape(layer)}{suffix}([/;:]|$)"
    return op_name == layer or re.search(pattern, op_name) is not None


def select(names: list[str], layers: list[str], where: str) -> list[str]:
    """The names belonging to any of `layers`; a layer that matches nothing is an error for that artifact.
    Where some name holds the layer exactly, the scope-suffixed names are other layers (Keras numbers its
    default names: `batch_normalization` is not `batch_normalization_8`); else they are its TF scopes."""
    chosen = []
    for layer in layers:
        hits = [n for n in names if matches_layer(layer, n)]
        hits = [n for n in hits if matches_layer(layer, n, scope_suffix=False)] or hits
        if not hits:
            raise ConversionError(f"--keep-float {layer}: no op of the {where} graph belongs to that layer")
        chosen += hits
    return list(dict.fromkeys(chosen))


def refuse_unknown(artifacts: list[dict], model: str) -> None:
    """Every quantized artifact failed on a --keep-float name no graph has: the user's typo, not a build
    failure (one format missing a layer the others have stays that artifact's FAILED row)."""
    quantized = [a for a in artifacts if a["role"] == "target" and a["precision"] != "fp32"]
    named = [UNMATCHED.search(a.get("reason") or "") if a["status"] == "failed" else None for a in quantized]
    if quantized and all(named):
        layers = ", ".join(dict.fromkeys(m.group(1) for m in named))
        raise EdgekitError(f"--keep-float {layers}: no layer of that name in {model} (no op of any format's graph "
                           "belongs to it)", "`edgekit analyze --layers MODEL` lists the layer names")
