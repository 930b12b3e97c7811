"""Keep stdout for the one document: everything else a process prints goes to stderr.

Under `--json` stdout must hold exactly one JSON document, but libraries print there on their
own: Python code through `sys.stdout` (keras' progress bar, tfds' download messages) and
native code straight to file descriptor 1 (Gloo's `[Gloo] Rank 0 is connected to ...`,
absl/C++ logging). `documents_only()` moves both to stderr for as long as it is entered and
hands the real stdout to the one writer of documents (`document_stream()`, used by
`gemma_cli.output.Output`).

Entered by the error boundary of every verb in `--json`/`--jsonl` mode; nested entries are
counted and the last one out restores stdout. Multi-host start-up calls
`native_stdout_to_stderr()` instead, for the life of the process (Gloo prints whenever it
opens a communicator), which moves fd 1 only and keeps `sys.stdout` on the real stdout.

Example:
    >>> with documents_only():
    ...     print("a library's chatter")          # → stderr
    ...     document_stream().write('{"ok": true}\\n')  # → stdout
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

_state: dict[str, object] = {"depth": 0, "doc": None, "saved_fd": None, "sys_stdout": None}


def _fd(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def enter() -> None:
    """Start diverting (see `documents_only`); pair with `leave()`."""
    if _state["depth"] == 0:
        out = sys.stdout
        try:
            out.flush()
        except (AttributeError, OSError, ValueError):
            pass
        if _fd(out) == 1:
            # the process' own stdout: move fd 1 onto stderr, keep a private copy for documents
            saved = os.dup(1)
            os.dup2(2, 1)
            _state["saved_fd"] = saved
            _state["doc"] = os.fdopen(os.dup(saved), "w", encoding="utf-8", buffering=1)
        else:
            # stdout is not fd 1 (a test runner's capture): Python-level prints are all there is
            _state["doc"] = out
            _state["sys_stdout"] = out
            sys.stdout = sys.stderr
    _state["depth"] = int(_state["depth"]) + 1  # type: ignore[call-overload]


def leave() -> None:
    """Undo one `enter()`; the last one puts stdout back."""
    depth = int(_state["depth"]) - 1  # type: ignore[call-overload]
    if depth < 0:
        return
    _state["depth"] = depth
    if depth:
        return
    doc = _state["doc"]
    try:
        doc.flush()  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        pass
    saved = _state["saved_fd"]
    if saved is not None:
        try:
            sys.stdout.flush()
        except (AttributeError, OSError, ValueError):
            pass
        doc.close()  # type: ignore[union-attr]
        os.dup2(saved, 1)  # type: ignore[arg-type]
        os.close(saved)  # type: ignore[arg-type]
    elif _state["sys_stdout"] is not None:
        sys.stdout = _state["sys_stdout"]  # type: ignore[assignment]
    _state.update(doc=None, saved_fd=None, sys_stdout=None)


@contextmanager
def documents_only() -> Iterator[TextIO]:
    """Divert fd 1 and `sys.stdout` to stderr; yield the stream documents are written to."""
    enter()
    try:
        yield document_stream()
    finally:
        leave()


def native_stdout_to_stderr() -> None:
    """Point fd 1 at stderr for the rest of the process; `sys.stdout` stays the real stdout."""
    if _state.get("native"):
        return
    _state["native"] = True
    if _state["depth"]:  # a verb's --json diversion is on: it now stays on for good
        _state["depth"] = int(_state["depth"]) + 1  # type: ignore[call-overload]
        return
    try:
        sys.stdout.flush()
        real = os.dup(1)
        os.dup2(2, 1)
    except (AttributeError, OSError, ValueError):
        return
    sys.stdout = os.fdopen(real, "w", buffering=1, encoding="utf-8", closefd=True)


def document_stream() -> TextIO:
    """Where the verb's result goes: the real stdout, also while stdout is diverted."""
    doc = _state["doc"]
    return doc if doc is not None else sys.stdout  # type: ignore[return-value]


def diverted() -> bool:
    return int(_state["depth"]) > 0  # type: ignore[call-overload]
