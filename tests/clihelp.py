"""Run the `edgekit` CLI in-process, as a user would from a shell (httpie-style)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgekit.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> Result:
    capsys.readouterr()
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_user_error(result: Result, *words: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.code == 2, result
    lines = [ln for ln in result.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
