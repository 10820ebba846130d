"""`edgekit targets [show]`: list the target profiles, or print one validated."""
from __future__ import annotations

import dataclasses
import json

import click

from .common import _stdout, json_option, print_json, targets_dir_option


@click.group(invoke_without_command=True)
@targets_dir_option
@json_option
@click.pass_context
def targets(ctx, targets_dirs, as_json):
    """List target profiles (built-in and your own)."""
    ctx.obj = {"dirs": tuple(targets_dirs), "json": as_json}
    if ctx.invoked_subcommand:
        return
    from ..report import show_table
    from ..targets import all_targets
    problems: list[str] = []  # a broken profile is skipped, never hides the others
    profiles = all_targets(ctx.obj["dirs"], problems)
    if as_json:
        return print_json([{"name": name, "path": str(t.path), **dataclasses.asdict(t.profile)}
                            for name, t in profiles.items()])
    show_table(_stdout(), "edgekit targets", ("name", "device", "arch", "precision", "formats", "threads", "description"),
               [(name, t.profile.device.kind, t.profile.device.arch, t.profile.quantize.precision,
                 ", ".join(t.profile.build.formats), str(t.profile.bench.threads), t.profile.description)
                for name, t in profiles.items()])
    for problem in problems:
        click.echo(f"warning: skipped {problem}", err=True)


@targets.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def targets_show(obj, name, as_json):
    """Print one profile, validated, with every field filled in (--json: JSON only, with its path)."""
    from ..targets import get_target
    target = get_target(name, obj["dirs"])
    profile = dataclasses.asdict(target.profile)
    if as_json or obj["json"]:
        return print_json({"name": name, "path": str(target.path), **profile})
    click.echo(f"# {target.path}")
    click.echo(json.dumps(profile, indent=2))
