"""`Reward`: a named reward function with TRL's signature and checked results."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from gemma_cli.errors import RuntimeFailure, UsageError


class Reward:
    """A reward function, called as TRL calls one: `reward(prompts, completions, **columns)`.

    The result is checked: one value per completion, each a real number (bool counts as 0/1)
    or None ("does not apply"). A function that raises is run again one record at a time to
    name the first record it fails on.

    Args:
        name: str. How the reward is shown (a built-in's spec, or the function's name).
        fn: callable. `fn(prompts, completions, **columns) -> list[float | None]`. Columns the
            function does not take (no `**kwargs`) are not passed.
        needs: tuple[str, ...]. Columns of which each record must have one (a built-in's
            reference answer: `answer` or `completion`). Defaults to ().
        spec: str | None. The spec it was resolved from. Defaults to `name`.

    Example:
        >>> r = Reward("short", lambda prompts, completions, **kw: [float(len(c) < 5) for c in completions])
        >>> r(["a", "b"], ["hi", "a long answer"])
        [1.0, 0.0]
    """

    def __init__(self, name: str, fn: Callable[..., Any], needs: tuple[str, ...] = (), spec: str | None = None):
        self.name, self.fn, self.needs, self.spec = name, fn, tuple(needs), spec or name
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            params = ()
        self._all_kwargs = any(p.kind is p.VAR_KEYWORD for p in params) or not params
        self._names = {p.name for p in params}

    def __repr__(self) -> str:
        return f"Reward({self.spec!r})"

    def reference_column(self, columns: dict[str, Any]) -> str | None:
        """The first of `needs` that `columns` has, or None (also when nothing is needed)."""
        return next((c for c in self.needs if c in columns), None)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], *, labels: Sequence[str] | None = None,
                 **columns: Sequence[Any]) -> list[float | None]:
        """Scores, one per completion (float or None).

        Args:
            prompts: list[str]. The prompts, aligned with the completions.
            completions: list[str]. The texts to score.
            labels: list[str] | None. How to name each record in an error (`data.jsonl:12`).
                Defaults to `record N` (1-based).
            **columns: list. The records' other fields, one list per field.
        """
        n = len(completions)
        where = (lambda i: labels[i]) if labels is not None else (lambda i: f"record {i + 1}")
        if self.needs and self.reference_column(columns) is None:
            raise UsageError(f"reward {self.spec}: needs a reference answer: a field "
                             + " or ".join(f"'{c}'" for c in self.needs))
        kwargs = {k: v for k, v in columns.items() if self._all_kwargs or k in self._names}
        try:
            out = self._call(list(prompts), list(completions), kwargs)
        except Exception as e:  # noqa: BLE001 - the user's code: name the record it fails on
            raise self._raised(e, prompts, completions, kwargs, where) from None
        if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
            raise RuntimeFailure(f"reward {self.name}: returned {type(out).__name__}, expected a list of {n} numbers or None")
        out = list(out)
        if len(out) != n:
            raise RuntimeFailure(f"reward {self.name}: returned {len(out)} values for {n} completions "
                                 f"(first record without its own value: {where(min(len(out), n - 1))})")
        values: list[float | None] = []
        for i, v in enumerate(out):
            if v is None:
                values.append(None)
                continue
            if hasattr(v, "item") and not isinstance(v, (list, tuple)):
                try:
                    v = v.item()  # a numpy/jax scalar
                except (TypeError, ValueError):
                    pass
            if isinstance(v, bool):
                v = float(v)
            if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise RuntimeFailure(f"reward {self.name}: {where(i)}: returned {v!r}, expected a finite number or None")
            values.append(float(v))
        return values

    def _call(self, prompts: list[str], completions: list[str], kwargs: dict[str, Any]) -> Any:
        if self._all_kwargs or "prompts" in self._names:
            kwargs = {"prompts": prompts, **kwargs}
        return self.fn(completions=completions, **kwargs)

    def _raised(self, e: Exception, prompts, completions, kwargs, where) -> RuntimeFailure:
        first = None
        for i in range(len(completions)):
            one = {k: [v[i]] for k, v in kwargs.items()}
            try:
                self._call([prompts[i]], [completions[i]], one)
            except Exception as e1:  # noqa: BLE001
                first, e = i, e1
                break
        at = f"{where(first)}: " if first is not None else ""
        return RuntimeFailure(f"reward {self.name}: {at}raised {type(e).__name__}: {e}")
