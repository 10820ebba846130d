"""`edgekit report`: one self-contained HTML page from result directories."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", "-o", type=click.Path(path_type=Path, dir_okay=False), default=Path("edgekit-report.html"),
              show_default=True)
@click.option("--force", is_flag=True, help="Replace --out if it exists (never one of the files read).")
def report_cmd(dirs, out, force):
    """Render one self-contained HTML page from result directories (convert, --target all, tune)."""
    from .. import html_report
    html_report.write(list(dirs), out, force=force)
    click.echo(f"wrote {out}")
