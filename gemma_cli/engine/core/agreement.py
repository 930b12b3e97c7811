"""All processes of a multi-process job start from the same config and the same data files.

Each process flattens what it was given into `{key: value}` facts (the config's keys,
`config.optimizer.learning_rate`, and each data file's name and size, `data file
train.jsonl`); `check(facts)` exchanges them over the distributed runtime (two all-gathers:
lengths, then the facts as bytes) and, when any process differs from process 0, raises the
same `UsageError` (exit 2) on every process, naming the first differing key in sorted order and
its value on each side. Without it, two processes that loaded different configs build
different programs and hang in their first collective. One process: nothing to do.

Example:
    >>> check({"config.data.batch_size": "8", "data file train.jsonl": "1234 bytes"})
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gemma_cli.errors import UsageError


def flatten(value: Any, prefix: str) -> dict[str, str]:
    """`{"a": {"b": 1}}` → `{"prefix.a.b": "1"}`; lists whole (a list is one key's value)."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def _gather(payload: bytes) -> list[bytes]:
    """Every process's `payload`, in process order (a collective: every process must call it)."""
    import numpy as np
    from jax.experimental import multihost_utils

    n = np.asarray(multihost_utils.process_allgather(np.array([len(payload)], np.int32))).reshape(-1)
    width = int(n.max())
    buf = np.zeros((width,), np.int32)  # one byte per int32: gloo and every backend move int32
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(n), width)
    return [bytes(rows[i, : n[i]].astype(np.uint8)) for i in range(len(n))]


def first_difference(docs: list[dict[str, str]]) -> str | None:
    """The message for the first key (sorted) on which a process differs from process 0."""
    keys = sorted(set().union(*docs))
    for key in keys:
        base = docs[0].get(key)
        for i, d in enumerate(docs[1:], start=1):
            if d.get(key) != base:
                def say(v: str | None) -> str:
                    return "absent" if v is None else v

                return f"{key} is {say(base)} on process 0 but {say(d.get(key))} on process {i}"
    return None


def check(facts: dict[str, str]) -> None:
    """Raise UsageError on every process unless all processes hold the same `facts`."""
    import jax

    if jax.process_count() == 1:
        return
    docs = [json.loads(b) for b in _gather(json.dumps(facts, sort_keys=True).encode())]
    diff = first_difference(docs)
    if diff is not None:
        raise UsageError(
            f"the processes of this job were started differently: {diff}",
            hint="start every process with the same config, overrides and data files",
        )
