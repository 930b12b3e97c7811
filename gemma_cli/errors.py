"""One exception family for the whole tool; each class maps to an exit code.

Exit codes: 0 ok, 1 runtime failure, 2 usage or config error, 130 interrupted.
"""

from __future__ import annotations


class GemmaError(Exception):
    """Base of every error the CLI knows how to report in one line.

    Args:
        message: str. The one line shown after `Error: `.
        hint: str | None. An optional second sentence saying what to do.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(GemmaError):
    """Bad input from the user: arguments, files, config keys. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A run config that does not validate. Carries every problem of the file.

    Args:
        problems: list[str]. One line each, `file:line: key: what is wrong`.
    """

    def __init__(self, problems: list[str], hint: str | None = None):
        self.problems = list(problems)
        super().__init__(self.problems[0] if self.problems else "invalid config", hint)

    def line(self) -> str:
        return "\n".join(self.problems)


class RuntimeFailure(GemmaError):
    """Something failed while running (diverged loss, I/O, network). Exit code 1."""

    exit_code = 1


class Interrupted(GemmaError):
    """Stopped by a signal after saving what could be saved. Exit code 130."""

    exit_code = 130
