"""Errors that reach the user as one line and an exit code."""


class EdgekitError(Exception):
    """A problem the user can fix: printed as one line, exit code 2."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class ConversionError(Exception):
    """One artifact could not be produced; the other artifacts go on."""
