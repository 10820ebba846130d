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
        from ..options import ConvertOptions
        _OPTION_FIELDS = {f.name: f for f in dataclasses.fields(ConvertOptions)}
    return _OPTION_FIELDS[name]


def _help(field: str) -> str:
    """Flag help comes from the documented ConvertOptions fields (one declaration)."""
    return _field(field).metadata["help"]


def choice(field: str) -> click.Choice:
    """The allowed values of a ConvertOptions field, as declared there."""
    from ..schema import choices_of
    return click.Choice(list(choices_of(_field(field))))


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
