"""The demo's scoring rule as a reward function for `gemma eval` (TRL's signature).

An answer is correct (1.0) when any of its question's `expect` strings (a command, flag or
config key) appears in it, ignoring case: `score_demo.correct`, the one definition.

Run: gemma eval RUN --data data/demo_heldout.jsonl --reward data/demo_reward.py:expected
"""

from __future__ import annotations

from score_demo import correct  # data/ is on the path while gemma imports this file


def expected(prompts: list[str], completions: list[str], expect: list[list[str]], **kwargs) -> list[float]:
    """1.0 per completion that names one of its record's `expect` strings, else 0.0."""
    return [float(correct(c, list(e))) for c, e in zip(completions, expect, strict=True)]
