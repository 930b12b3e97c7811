"""The built-in rewards: `contains`, `exact`, `regex:PATTERN`, `json`, `math`, `length:N`.

Each scores 1.0 or 0.0 per completion. `contains`, `exact` and `math` compare with the
record's reference answer: its `answer` field, else its `completion` field (a list of strings
means "any of them"); a record whose reference is null gets None. `length:N` counts tokens:
the `completion_ids` column when the caller passes one (as `gemma eval` and TRL's GRPO do),
else whitespace-separated words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from gemma_cli.engine.rewards.reward import Reward
from gemma_cli.errors import UsageError

REFERENCE = ("answer", "completion")
BUILTINS = {
    "contains": "1 when the reference answer appears in the completion, ignoring case",
    "exact": "1 when the completion equals the reference answer (surrounding whitespace ignored)",
    "regex:PATTERN": "1 when the Python regular expression PATTERN matches somewhere in the completion",
    "json": "1 when the completion (stripped, or its ```json fenced block) parses as JSON",
    "math": "1 when the completion equals the reference under math-verify (pip install 'gemma-cli[eval]')",
    "length:N": "1 when the completion is at most N tokens long",
}


def _refs(columns: dict[str, Any]) -> list[Any]:
    col = next(c for c in REFERENCE if c in columns)
    return list(columns[col])


def _per_reference(test: Callable[[str, str], bool]) -> Callable[..., list[float | None]]:
    def fn(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        out: list[float | None] = []
        for c, ref in zip(completions, _refs(columns), strict=True):
            if ref is None:
                out.append(None)
                continue
            refs = ref if isinstance(ref, (list, tuple)) else [ref]
            out.append(float(any(test(c, str(r)) for r in refs)))
        return out

    return fn


def _contains(c: str, ref: str) -> bool:
    return ref.strip().lower() in c.lower()


def _exact(c: str, ref: str) -> bool:
    return c.strip() == ref.strip()


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def _json(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    out = []
    for c in completions:
        m = _FENCE.search(c)
        text = m.group(1) if m else c
        try:
            json.loads(text.strip())
            out.append(1.0)
        except ValueError:
            out.append(0.0)
    return out


def _math_test() -> Callable[[str, str], bool]:
    try:
        import math_verify
    except ImportError:
        raise UsageError("reward math: needs the math-verify library", hint="pip install 'gemma-cli[eval]'") from None

    def test(c: str, ref: str) -> bool:
        gold = math_verify.parse(ref if "$" in ref or "\\" in ref else f"${ref}$")
        try:
            return bool(math_verify.verify(gold, math_verify.parse(c)))
        except Exception:  # noqa: BLE001 - math-verify's parser on free text: not equal
            return False

    return test


def _length(n: int) -> Callable[..., list[float]]:
    def fn(prompts: list[str], completions: list[str], completion_ids: list[Any] | None = None, **_: Any) -> list[float]:
        if completion_ids is not None:
            return [float(len(ids) <= n) for ids in completion_ids]
        return [float(len(c.split()) <= n) for c in completions]

    return fn


def builtin(spec: str) -> Reward | None:
    """The built-in reward for `spec`, None when `spec` names no built-in."""
    if spec == "contains":
        return Reward(spec, _per_reference(_contains), needs=REFERENCE)
    if spec == "exact":
        return Reward(spec, _per_reference(_exact), needs=REFERENCE)
    if spec == "json":
        return Reward(spec, _json)
    if spec == "math":
        return Reward(spec, _per_reference(_math_test()), needs=REFERENCE)
    if spec.startswith("regex:"):
        pattern = spec[len("regex:") :]
        if not pattern:
            raise UsageError(f"reward {spec}: an empty pattern (write regex:PATTERN)")
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise UsageError(f"reward {spec}: not a valid regular expression ({e})") from None
        return Reward(spec, lambda prompts, completions, **_: [float(rx.search(c) is not None) for c in completions])
    if spec.startswith("length:"):
        raw = spec[len("length:") :]
        if not raw.isdigit() or int(raw) < 1:
            raise UsageError(f"reward {spec}: N must be a positive whole number of tokens (length:64)")
        return Reward(spec, _length(int(raw)))
    return None
