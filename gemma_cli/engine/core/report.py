"""How the engine tells the user what it is doing: a small protocol the CLI implements.

The engine never prints and never imports rich. It calls a `Reporter` (`step` for a stage of
long work, `info`, `warn`, `debug_line`, and `progress` for a bar over many steps); the CLI's
`gemma_cli.output.Output` implements it with Rich on stderr, and tests or library callers can
pass `NullReporter()`.

Example:
    >>> from gemma_cli.engine.core.report import NullReporter
    >>> r = NullReporter()
    >>> bar = r.progress(total=10)
    >>> bar.update(3, loss="2.1")
    >>> bar.close()
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """A progress display over `total` steps. `live` is False when it draws nothing by itself
    (a log file, a pipe): then the caller prints a line now and then instead."""

    live: bool

    def update(self, completed: int, **fields: str) -> None: ...

    def note(self, message: str) -> None: ...

    def close(self) -> None: ...


class Reporter(Protocol):
    def step(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def debug_line(self, message: str) -> None: ...

    def progress(self, total: int, start: int = 0, label: str = "train", unit: str = "tok/s") -> Progress: ...


class NullProgress:
    live = False

    def update(self, completed: int, **fields: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class NullReporter:
    """A Reporter that says nothing (library use, tests)."""

    def step(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def debug_line(self, message: str) -> None:
        pass

    def progress(self, total: int, start: int = 0, label: str = "train", unit: str = "tok/s") -> Progress:
        return NullProgress()
