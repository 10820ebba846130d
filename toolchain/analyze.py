"""analyze(): parameters and MACs per layer, and optionally the per-layer int8 sensitivity (the same data
and calibration rules as convert)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import output, targets
from .errors import ConversionError, EdgekitError
from .options import ConvertOptions
from .pipeline import _resolve_model, layer_sensitivity, prepare


def analyze(model: str | Path | None = None, sensitivity: bool = False,
            progress: Callable[[str], None] | None = None, **kwargs) -> dict:
    """Parameters and MACs per layer; with `sensitivity`, also the per-layer int8 sensitivity
    (same data and calibration rules as convert())."""
    from . import analysis
    from .backends import onnx as onnx_backend
    options = ConvertOptions.make(**kwargs)
    progress = progress or (lambda msg: None)
    target = targets.get_target(options.target, tuple(options.targets_dirs))
    model, name = _resolve_model(model, options, progress)
    options.flags["precision"] = "int8" if sensitivity else "fp32"
    with output.tempdir() as work:
        ctx = prepare(model, name, target, options, work, progress)
        try:
            stats = analysis.layer_stats(onnx_backend.float_model(ctx.source)[0])
        except ConversionError as exc:
            raise EdgekitError(f"analysis reads the ONNX form of the model: {exc}", "check `edgekit convert "
                               "--format onnx` works on this model") from None
        result = {"model": str(model), "name": name, "layers": stats, "totals": analysis.totals(stats),
                  "how": "counted from the ONNX graph (shapes inferred at batch 1)"}
        if sensitivity:
            result.update(sensitivity=layer_sensitivity(ctx), calibration=ctx.calib.origin, data=ctx.evalset.origin)
        return result
