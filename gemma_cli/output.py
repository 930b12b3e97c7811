"""The one output sink of the CLI.

Data goes to stdout: human tables, or with `--json` exactly one JSON document and nothing
else. Everything else (logs, warnings, progress) goes to stderr. `--quiet` keeps only
warnings and errors. Renders plain data only: no keras/jax objects reach this module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

from gemma_cli.engine.core import stdio


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


class Output:
    """Where every verb writes.

    Args:
        json_mode: bool. Print one JSON document on stdout at the end. Defaults to False.
        quiet: bool. Only warnings and errors on stderr. Defaults to False.
        debug: bool. Show tracebacks and debug lines. Defaults to False.
        documents: bool. Stdout carries machine-read documents only (`--json`, `--jsonl`):
            while the verb runs, whatever else is printed to stdout, by Python code or native
            libraries, goes to stderr (`gemma_cli.engine.core.stdio`). Defaults to `json_mode`.

    Example:
        >>> out = Output(json_mode=True)
        >>> out.result({"ok": True})  # prints {"ok": true}
    """

    def __init__(self, json_mode: bool = False, quiet: bool = False, debug: bool = False,
                 documents: bool | None = None):
        self.json_mode = json_mode
        self.quiet = quiet
        self.debug = debug
        self.documents = json_mode if documents is None else documents
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)
        self._emitted = False

    # ---- stderr --------------------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False)  # engine text: `imdb_reviews[train]` is no markup

    def step(self, message: str) -> None:
        """A stage of long work, e.g. `Building model ...`."""
        if not self.quiet:
            self.err.print(f"[bold cyan]»[/] {message}")

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]Warning:[/] {message}")

    def debug_line(self, message: str) -> None:
        if self.debug:
            self.err.print(f"[dim]debug: {message}[/]")

    def error(self, message: str) -> None:
        for i, line in enumerate(message.splitlines() or [""]):
            prefix = "Error: " if i == 0 else "       " if not line[:1].isspace() else ""
            # stderr, plain (no markup interpretation of user text)
            sys.stderr.write(f"{prefix}{line}\n")
        sys.stderr.flush()

    def progress(self, total: int, start: int = 0, label: str = "train", unit: str = "tok/s") -> Any:
        """A progress display (the engine's `report.Progress`): a live Rich bar on a terminal;
        elsewhere (logs, pipes) nothing live, and the engine prints a line now and then.
        `unit` names the rate the `tps` field shows (`tok/s`; `records/s` has no loss column)."""
        if self.quiet or not self.err.is_terminal:
            return _Lines(self)
        return _Bar(self.err, total, start, label, unit)

    # ---- stdout --------------------------------------------------------------------------
    def result(self, data: Any, human: Callable[[Console], None] | None = None) -> None:
        """Emit the verb's result: JSON in --json mode, else the human rendering."""
        if self.json_mode:
            if self._emitted:
                raise RuntimeError("Output.result called twice in --json mode")
            self._emitted = True
            doc = stdio.document_stream()
            doc.write(json.dumps(data, default=_json_default, indent=2) + "\n")
            doc.flush()
        elif human is not None:
            human(self.out)
        elif isinstance(data, str):
            self.out.print(data, markup=False)
        else:
            self.out.print_json(json.dumps(data, default=_json_default))

    def text(self, text: str) -> None:
        """Raw text to stdout (e.g. a completion, a YAML document, a JSONL line)."""
        doc = stdio.document_stream()
        doc.write(text if text.endswith("\n") else text + "\n")
        doc.flush()

    @property
    def emitted(self) -> bool:
        """Whether the --json document was written."""
        return self._emitted

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner on stderr around a blocking stage (silent when quiet or not a TTY)."""
        if self.quiet or not self.err.is_terminal:
            self.step(message)
            yield
            return
        with self.err.status(message):
            yield


class _Lines:
    """No live display: notes become ordinary stderr lines."""

    live = False

    def __init__(self, out: Output):
        self._out = out

    def update(self, completed: int, **fields: str) -> None:
        pass

    def note(self, message: str) -> None:
        self._out.info(message)

    def close(self) -> None:
        pass


class _Bar:
    """A Rich progress bar on stderr: step, loss, tokens/s, elapsed, ETA."""

    live = True

    def __init__(self, console: Console, total: int, start: int, label: str, unit: str = "tok/s"):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            *([TextColumn("loss {task.fields[loss]}")] if unit == "tok/s" else []),
            TextColumn("{task.fields[tps]} " + unit),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self._p.start()
        self._task = self._p.add_task(label, total=total, completed=start, loss="-", tps="-", metrics="")

    def update(self, completed: int, **fields: str) -> None:
        self._p.update(self._task, completed=completed, **fields)

    def note(self, message: str) -> None:
        self._p.console.print(message, markup=False)

    def close(self) -> None:
        self._p.stop()


def table(title: str | None, columns: list[str], rows: list[list[Any]], **kw: Any) -> Table:
    """A Rich table from plain rows."""
    t = Table(title=title, **kw)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[x if hasattr(x, "__rich__") else str(x) for x in r])
    return t


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))
