"""A run's `status.json`: what the training process is doing, for `gemma runs` to read.

    <output_dir>/status.json
        {"status": "running", "pid": 4242, "host": "tpu-vm-0", "pid_started": 1763880000.5,
         "started": 1763880003.1, "updated": 1763880100.9, "step": 0, "total_steps": 24,
         "reason": null}

The trainer writes it when training starts (`running`, with its pid and host) and when it ends:
`finished`, `interrupted` (a signal; `reason` says which and at what step) or `diverged`
(`reason` says what became NaN). Only the main process writes, each time atomically (a
temporary file, then a rename), so a reader sees the old document or the new one. A process
killed without a word (SIGKILL, out of memory) leaves `running` behind: the reader checks the
pid (and its start time, against a reused pid) and reports such a run as interrupted.
No daemon, no locking: one writer per run directory.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def read(out_dir: str | Path) -> dict[str, Any] | None:
    """The current document, or None when there is none or it does not parse."""
    try:
        doc = json.loads((Path(out_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write(out_dir: str | Path, status: str, **fields: Any) -> None:
    """Merge `fields` into the document, set `status` and `updated`, and replace it atomically."""
    path = Path(out_dir) / STATUS_FILE
    doc = {**(read(out_dir) or {}), **fields, "status": status, "updated": time.time()}
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _process_started() -> float | None:
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 — the start time only guards against a reused pid
        return None


def started(out_dir: str | Path, *, step: int, total_steps: int, resumed: bool) -> None:
    """Record that this process is training `out_dir` from `step` of `total_steps`.

    A resumed run keeps the time the run first started; a fresh run replaces the document.
    """
    now = time.time()
    first = (read(out_dir) or {}).get("started") if resumed else None
    path = Path(out_dir) / STATUS_FILE
    if not resumed and path.exists():
        path.unlink()
    write(
        out_dir,
        "running",
        pid=os.getpid(),
        host=socket.gethostname(),
        pid_started=_process_started(),
        started=first or now,
        resumed=now if resumed else None,
        step=step,
        total_steps=total_steps,
        reason=None,
    )


def ended(out_dir: str | Path, status: str, *, step: int, reason: str | None = None) -> None:
    """Record how training ended: `finished`, `interrupted` or `diverged`."""
    write(out_dir, status, step=step, reason=reason)
