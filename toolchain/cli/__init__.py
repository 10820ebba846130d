"""The `edgekit` command: a thin Click layer over pipeline, targets and runner; one module per command."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import EdgekitError
from . import analyze, bench, convert, explain, report, targets, tune
from .logs import silence_native_logs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("--verbose", is_flag=True, help="Show the converters' and runtimes' own log output (anywhere on the line).")
def cli(verbose):
    """Convert trained models to TFLite, ONNX and OpenVINO for an edge target, and measure them."""

for _command in (convert.convert, analyze.analyze, explain.explain, tune.tune, report.report_cmd, targets.targets, bench.bench):
    cli.add_command(_command)


def _interrupted(exc: KeyboardInterrupt | None) -> None:
    """Everything was cleaned up on the way here; also sweep the scratch of workers killed with us."""
    import tempfile

    from ..interrupt import Interrupted
    from ..output import sweep
    sweep(Path(tempfile.gettempdir()))
    click.echo(getattr(exc, "kept", None) or "interrupted; no partial output was kept" if exc else "aborted",
               err=True)
    sys.exit(exc.exit_code if isinstance(exc, Interrupted) else 130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2; nothing prints a traceback unless EDGEKIT_DEBUG=1."""
    from .. import interrupt
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or os.environ.get("EDGEKIT_VERBOSE") == "1"
    args = [a for a in args if a != "--verbose"]
    if verbose:
        os.environ["EDGEKIT_VERBOSE"] = "1"  # libraries' own progress output stays too (backends read it)
    restore_logs = (lambda: None) if verbose else silence_native_logs()
    restore_signals = interrupt.install()
    try:
        _main(args)
    finally:
        restore_signals()
        restore_logs()


def _main(args: list[str]) -> None:
    try:
        cli.main(args=args, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (and our signals) into Abort
        _interrupted(exc.__context__ if isinstance(exc.__context__, KeyboardInterrupt) else None)
    except click.UsageError as exc:  # one line, like every other user error
        command = exc.ctx.command_path if exc.ctx else "edgekit"
        click.echo(f"error: {exc.format_message()} — see `{command} --help`", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgekitError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:  # a bug, not a user error: say so in one line
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        click.echo(f"internal error: {type(exc).__name__}: {text} (set EDGEKIT_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
