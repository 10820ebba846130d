"""What every command module shares: flag help and choices from ConvertOptions (one declaration),
the stderr/stdout consoles, the progress spinner, JSON output, and common options."""
from __future__ import annotations

import dataclasses
import json
import math
import sys

import click

_OPTION_FIELDS = None


def _field(name: str) -> dataclasses.Field:
    global _OPTION_FIELDS
    if _OPTION_FIELDS is None:
        from .. import passes
        from ..options import ConvertOptions
        _OPTION_FIELDS = {f.name: f for f in dataclasses.fields(ConvertOptions)}
        _OPTION_FIELDS.update({f.name: f for p in passes.builtin_passes() if p.Flags for f in dataclasses.fields(p.Flags)})
    return _OPTION_FIELDS[name]


def _help(field: str) -> str:
    """Flag help comes from the documented ConvertOptions fields and the passes' Flags (one declaration)."""
    return _field(field).metadata["help"]


def choice(field: str, without: tuple = ()) -> click.Choice:
    """The allowed values of a ConvertOptions field, as declared there (less `without`)."""
    from ..schema import choices_of
    return click.Choice([c for c in choices_of(_field(field)) if c not in without])


def _console():
    """stderr: progress, warnings, logs."""
    from rich.console import Console
    return Console(stderr=True, highlight=False)


def _stdout():
    """stdout: results. Tables fall back to plain text when it is not a terminal (report.show_table)."""
    from rich.console import Console
    return Console(highlight=False)


def working(status: str, quiet: bool = False):
    """A progress spinner on stderr while work runs; anything a library prints meanwhile (NNCF's
    progress bars, converters' chatter) goes to stderr too, so stdout carries only results."""
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(sys.stderr))
    return stack, None if quiet else stack.enter_context(_console().status(status))


def print_json(result) -> None:
    click.echo(json.dumps(result, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (no table).")


class Number(click.FloatRange):
    """A finite float within a range (click's FloatRange lets NaN through)."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


targets_dir_option = click.option("--targets-dir", "targets_dirs", multiple=True, type=click.Path(file_okay=False),
                                  help="Extra directory of target profiles (repeatable); also $EDGEKIT_TARGETS_PATH.")


class WithPassFlags(click.Command):
    """A command that also takes the flags of every plug-in pass (its `Flags` fields, passes/base.py), read
    when the command runs so that $EDGEKIT_PASSES counts. Built-in passes' flags are declared on the command."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        return params[:-1] + plugin_pass_options() + params[-1:]

    def format_epilog(self, ctx, formatter):
        """The passes a conversion may run, in order, each with its one-line description."""
        from .. import passes
        super().format_epilog(ctx, formatter)
        with formatter.section("Passes (in the order they run; profile section [NAME], recipe key NAME)"):
            formatter.write_dl([(f"{p.NAME} ({p.STAGE})", p.DESCRIPTION) for p in passes.all_passes()])


def plugin_pass_options() -> list[click.Option]:
    from .. import passes
    builtin = {p.NAME for p in passes.builtin_passes()}
    return [_flag_option(f) for p in passes.all_passes() if p.NAME not in builtin and p.Flags is not None
            for f in dataclasses.fields(p.Flags)]


def _flag_option(f: dataclasses.Field) -> click.Option:
    """A click option from a documented Flags field: its type, choices, list (repeatable) or bool (a switch)."""
    from ..passes.base import flag_name
    from ..schema import choices_of
    kind, kw = str(f.type), {"help": f.metadata.get("help", "")}
    if kind.startswith("list"):
        kw["multiple"] = True
    if choices_of(f):
        kw["type"] = click.Choice(list(choices_of(f)))
    elif kind.startswith("bool"):
        kw["is_flag"] = True
    elif kind.startswith("int"):
        kw["type"] = click.INT
    elif kind.startswith("float"):
        kw["type"] = Number(-1e300, 1e300)
    return click.Option([flag_name(f.name)], **kw)
