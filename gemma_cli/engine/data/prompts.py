"""Prompt records for reinforcement learning (`train.method: grpo`) and evaluation.

A record holds `prompt` — a string (used as it is, after `<bos>`) or chat messages ending with a
user turn (rendered in the family's chat format, the model turn opened) — and any other fields,
which reward functions receive as columns (TRL's convention). Read whole (prompt files are
small), checked up front with `file:line`, ordered per epoch by the seed alone, so a step's
prompts depend only on seed and step (exact resume, every host alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gemma_cli.errors import UsageError

ROLES = ("system", "user", "assistant", "model")


@dataclass
class PromptRecord:
    where: str  # file:line
    prompt: str | list[tuple[str, str]]  # text, or (role, content) turns ending with a user turn
    columns: dict[str, Any]
    raw_prompt: Any  # as the file wrote it (handed to reward functions, as TRL does)


def _turns(where: str, messages: list[Any]) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise UsageError(f"{where}: prompt message {i} needs a role ({', '.join(ROLES)}) and string content")
        turns.append((m["role"], m["content"]))
    if not turns or turns[-1][0] != "user":
        raise UsageError(f"{where}: a chat prompt must end with a user turn (the model answers it)")
    return turns


def parse(where: str, record: dict[str, Any]) -> PromptRecord:
    """One record → PromptRecord; a UsageError naming `where` when it is not a prompt record."""
    if "prompt" not in record:
        raise UsageError(f"{where}: no 'prompt' field (grpo reads records with a prompt, plus any fields the "
                         f"rewards use); fields there: {sorted(record)}")
    p = record["prompt"]
    if isinstance(p, str):
        if not p.strip():
            raise UsageError(f"{where}: empty prompt")
        prompt: Any = p
    elif isinstance(p, list):
        prompt = _turns(where, p)
    else:
        raise UsageError(f"{where}: 'prompt' must be a string or a list of chat messages, got {type(p).__name__}")
    columns = {k: v for k, v in record.items() if k != "prompt"}
    return PromptRecord(where, prompt, columns, p)


def read(patterns: list[str], key: str) -> list[PromptRecord]:
    """Every record of the files `patterns` match, checked; raises UsageError (file:line)."""
    from gemma_cli.engine.data import sources

    files = sources.local_files(patterns, key)
    out: list[PromptRecord] = []
    for f in files:
        kind = sources.file_kind(f, None)
        if kind not in ("jsonl", "parquet"):
            raise UsageError(f"{key}: {f}: prompt records are read from JSONL or Parquet files")
        src = sources.open_local([str(f)], kind, key, 1024)
        for i in range(len(src)):
            where, rec = src[i]
            out.append(parse(where, rec))
    if not out:
        raise UsageError(f"{key}: no prompt records in {', '.join(patterns)}")
    return out


def order(n: int, seed: int, epoch: int) -> list[int]:
    """The record order of an epoch: a permutation that depends only on seed and epoch."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def batch(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Record indices of global step `step` (0-based): consecutive slices of the epochs' orders."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, at = divmod(pos, n)
        perm = order(n, seed, epoch)
        take = min(batch_size - len(out), n - at)
        out += perm[at : at + take]
        pos += take
    return out
