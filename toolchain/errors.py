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


class RunnerError(ConversionError):
    """The light runner could not run an artifact; str() is one line saying why."""

    def __init__(self, reason: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(reason)
        self.reason, self.returncode, self.stderr = reason, returncode, stderr
