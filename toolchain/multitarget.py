"""convert_targets(): several targets in one run (`--target all` or "a,b,c"), each in its own process
(a native crash in one leaves the others standing), each with its own report in <out>/<target>/, and
<out>/summary.json + summary.md comparing them."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from . import isolate, output, report, targets
from .convert_report import REPORT_SCHEMA
from .errors import ConversionError, EdgekitError
from .options import ConvertOptions
from .passes import quantize
from .pipeline import _inputs, _keep_previous_unless_built, _resolve_model, resolve_recipe


def target_names(spec: str, dirs: tuple[str, ...] = ()) -> list[str]:
    """`all`, one name, or a comma-separated list."""
    if spec == "all":
        return sorted(targets.all_targets(dirs))
    return [name.strip() for name in spec.split(",") if name.strip()]


def convert_targets(model: str | Path | None = None, progress: Callable[[str], None] | None = None,
                    **kwargs) -> dict:
    """Build several targets in one run (`target="all"` or "a,b,c"): each gets its own report in
    <out>/<target>/, and <out>/summary.json + summary.md compare them side by side."""
    options = ConvertOptions.make(**kwargs)
    progress = progress or (lambda msg: None)
    names = target_names(options.target, tuple(options.targets_dirs))
    for name in names:
        targets.get_target(name, tuple(options.targets_dirs))  # unknown names fail before any work
    model, name = _resolve_model(model, options, progress)
    out = Path(options.out or Path("edgekit-out") / f"{name}-{options.target.replace(',', '+')}")
    replacing = output.check(out, _inputs(model, options), options.force) == "replace"
    results = []
    with output.staging(out) as stage:
        for target in names:
            progress(f"target {target}")
            single = {**dataclasses.asdict(options), "target": target, "out": stage / target, "force": False}
            if options.calib and not _calibrates(target, options):
                single["calib"] = None  # --calib is for the targets that quantize with it
            try:  # each target in its own process: a native crash in one leaves the others standing
                results.append(isolate.run("edgekit.pipeline:convert", model, isolate.progress, **single,
                                           step=f"target {target}", progress=progress))
            except (EdgekitError, ConversionError) as exc:
                output.sweep(stage)  # the staging directory of a target whose process died
                results.append({"target": {"name": target}, "error": str(exc), "artifacts": []})
                _failed_target_report(stage / target, target, str(exc))
        if replacing:
            _keep_previous_unless_built([a for r in results for a in r["artifacts"]] or
                                        [{"format": r["target"]["name"], "precision": "", "status": "failed",
                                          "reason": r.get("error", "")} for r in results], out)
        summary = {"schema": "edgekit.summary/1", "model": str(model), "targets": results,
                   "recommended": {r["target"]["name"]: r.get("recommended") for r in results}}
        report.write_summary(stage, summary)
        output.commit(stage, out, "convert")
    summary["out_dir"] = str(out)
    return summary


def _calibrates(target: str, options: ConvertOptions) -> bool:
    profile = targets.get_target(target, tuple(options.targets_dirs)).profile
    return resolve_recipe(profile, options)["quantize"].precision in quantize.CALIBRATED


def _failed_target_report(directory: Path, target: str, error: str) -> None:
    """A target that built nothing still gets its directory, saying why."""
    directory.mkdir(exist_ok=True)
    (directory / "report.json").write_text(json.dumps({"schema": REPORT_SCHEMA, "target": {"name": target},
                                                       "status": "failed", "error": error, "artifacts": []},
                                                      indent=2) + "\n")
    (directory / "report.md").write_text(f"# edgekit report: {target}\n\nFAILED: {error}\n")
