"""`resolve(spec) -> Reward`: a command-line reward spec, checked before any model loads."""

from __future__ import annotations

import difflib

from gemma_cli.engine.rewards import user
from gemma_cli.engine.rewards.builtin import BUILTINS, builtin
from gemma_cli.engine.rewards.reward import Reward
from gemma_cli.errors import UsageError


def resolve(spec: str) -> Reward:
    """The reward a spec names: a built-in (`contains`, `exact`, `regex:PATTERN`, `json`,
    `math`, `length:N`) or `path/to/file.py:function`.

    Raises:
        UsageError: naming the spec: an unknown built-in, a bad regex or length, a missing
            file or function, a module that fails to import, a function without `completions`.
    """
    spec = spec.strip()
    if not spec:
        raise UsageError("reward: an empty spec (built-ins: " + ", ".join(BUILTINS) + ")")
    found = builtin(spec)
    if found is not None:
        return found
    path, sep, func = spec.rpartition(":")
    if sep and (path.endswith(".py") or "/" in path):
        return user.load(spec, path, func)
    if spec.endswith(".py"):
        raise UsageError(f"reward {spec}: name the function too: {spec}:FUNCTION")
    names = [b.split(":")[0] for b in BUILTINS]
    close = difflib.get_close_matches(spec.split(":")[0], names, n=2)
    mean = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UsageError(f"reward {spec}: no such built-in{mean} (built-ins: {', '.join(BUILTINS)}; "
                     "or a function: path/to/file.py:function)")
