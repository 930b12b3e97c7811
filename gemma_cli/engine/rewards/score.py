"""`score`: several rewards over the same completions → per-record values, means, pass rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gemma_cli.engine.rewards.reward import Reward


def score(rewards: Sequence[Reward], prompts: Sequence[str], completions: Sequence[str], columns: dict[str, Sequence[Any]],
          threshold: float = 1.0, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Run each reward and summarise.

    A record passes when every reward that applies to it (not None) is at least `threshold`;
    a record no reward applies to has `pass` None and is left out of the pass rate.

    Args:
        rewards: list[Reward]. The scorers, each named in the result by `Reward.name`.
        prompts: list[str]. The prompts.
        completions: list[str]. The completions to score, aligned with the prompts.
        columns: dict[str, list]. The records' other fields.
        threshold: float. The value a reward must reach for a pass. Defaults to 1.0.
        labels: list[str] | None. Record names for errors (`file:line`).

    Returns:
        dict with `records` (per record: `rewards` {name: value or None}, `pass`), `means`
        {name: mean over the records it applies to, or None}, `pass_rates` {name: share at or
        over the threshold}, `pass_rate` (all rewards; None when no record is scored), `threshold`.
    """
    values: dict[str, list[float | None]] = {}
    for r in rewards:
        values[r.name] = r(prompts, completions, labels=labels, **columns)
    records, passed = [], []
    for i in range(len(completions)):
        mine = {name: v[i] for name, v in values.items()}
        applies = [v for v in mine.values() if v is not None]
        ok = all(v >= threshold for v in applies) if applies else None
        if ok is not None:
            passed.append(ok)
        records.append({"rewards": mine, "pass": ok})
    means, rates = {}, {}
    for name, v in values.items():
        got = [x for x in v if x is not None]
        means[name] = sum(got) / len(got) if got else None
        rates[name] = sum(x >= threshold for x in got) / len(got) if got else None
    return {
        "records": records,
        "means": means,
        "pass_rates": rates,
        "pass_rate": sum(passed) / len(passed) if passed else None,
        "threshold": threshold,
    }
