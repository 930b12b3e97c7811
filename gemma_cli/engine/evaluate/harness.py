"""lm-evaluation-harness tasks with gemma's engine as the model (placeholder)."""

from __future__ import annotations

from typing import Any

from gemma_cli.errors import UsageError


def prepare(tasks: str, *, include_path: str | None = None, num_fewshot: int | None = None, limit: int | None = None) -> Any:
    raise UsageError("--tasks: not yet")
