"""Reward functions (a first cut for GRPO; `gemma eval` brings the full set of built-ins).

`resolve(spec) -> Reward`: `path/to/file.py:function` with TRL's signature
`fn(prompts, completions, **columns) -> list[float | None]`, or `length:N` (1.0 when the
completion is at most N whitespace-separated words). A `Reward` checks what the function returns.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path
from typing import Any

from gemma_cli.errors import RuntimeFailure, UsageError


class Reward:
    def __init__(self, name: str, fn: Any):
        self.name, self.fn = name, fn

    def __call__(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float | None]:
        try:
            out = self.fn(prompts=prompts, completions=completions, **columns)
        except Exception as e:  # noqa: BLE001 - the user's code: name it
            raise RuntimeFailure(f"reward {self.name} raised {type(e).__name__}: {e}") from e
        out = list(out) if out is not None else []
        if len(out) != len(completions):
            raise RuntimeFailure(f"reward {self.name} returned {len(out)} values for {len(completions)} completions")
        for i, v in enumerate(out):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v))):
                raise RuntimeFailure(f"reward {self.name} returned {v!r} for completion {i}; want a number or None")
        return [None if v is None else float(v) for v in out]


def resolve(spec: str) -> Reward:
    if spec.startswith("length:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise UsageError(f"reward {spec}: length:N needs a whole number") from None
        return Reward(spec, lambda prompts, completions, **_: [1.0 if len(c.split()) <= n else 0.0 for c in completions])
    path, _, func = spec.rpartition(":")
    if not path.endswith(".py") or not func:
        raise UsageError(f"reward {spec}: not a built-in and not path/to/file.py:function")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"reward {spec}: no such file {file}")
    mod_spec = importlib.util.spec_from_file_location(f"gemma_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"reward {spec}: {file} failed to import: {type(e).__name__}: {e}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UsageError(f"reward {spec}: {file} has no function {func}")
    params = inspect.signature(fn).parameters
    if "completions" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise UsageError(f"reward {spec}: {func} takes no `completions` argument",
                         hint="TRL's signature: fn(prompts, completions, **kwargs) -> list[float | None]")
    return Reward(spec, fn)
