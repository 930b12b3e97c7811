"""Reward functions: score completions, for `gemma eval` and for reinforcement learning.

One interface serves both: a `Reward` is called as TRL calls its reward functions,
`reward(prompts, completions, **columns) -> list[float | None]`, where `columns` are the
records' other fields (one list each, aligned with the prompts) and `None` means "does not
apply to this record". Reward code written for TRL therefore runs unchanged.

`resolve(spec)` turns a command-line spec into a `Reward` without loading any model:

- built-ins: `contains`, `exact`, `regex:PATTERN`, `json`, `math`, `length:N`
  (`gemma_cli/engine/rewards/builtin.py`);
- a user function: `path/to/file.py:function` (`gemma_cli/engine/rewards/user.py`).

A spec that does not resolve raises `UsageError` naming it. At run time every result is
checked (`Reward.__call__`): a function that raises, or returns a list of the wrong length or
with something other than a number or None, raises `RuntimeFailure` naming the function and
the first bad record. `score(...)` runs several rewards over the same completions and gives
per-record values, each reward's mean and a pass rate.

This layer imports nothing from the engine but `core`, and no ML library.

Example:
    >>> from gemma_cli.engine.rewards import resolve, score
    >>> r = resolve("contains")
    >>> r(["Capital of France?"], ["It is Paris."], answer=["paris"])
    [1.0]
    >>> score([r], ["Q"], ["no"], {"answer": ["yes"]}, threshold=1.0)["pass_rate"]
    0.0
"""

from gemma_cli.engine.rewards.builtin import BUILTINS
from gemma_cli.engine.rewards.reward import Reward
from gemma_cli.engine.rewards.score import score
from gemma_cli.engine.rewards.spec import resolve

__all__ = ["BUILTINS", "Reward", "resolve", "score"]
