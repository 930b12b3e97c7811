"""A user's reward function: `path/to/file.py:function`, with TRL's signature."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from gemma_cli.engine.rewards.reward import Reward
from gemma_cli.errors import UsageError


def load(spec: str, path: str, func: str) -> Reward:
    """Import `func` from the Python file `path` as a `Reward`; UsageError naming `spec` when
    the file is missing, fails to import, lacks the function, or the function takes no
    `completions`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"reward {spec}: {path}: no such file")
    if not func.isidentifier():
        raise UsageError(f"reward {spec}: {func!r} is not a Python function name")
    name = "gemma_reward_" + hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12]
    module = sys.modules.get(name)
    if module is None:
        mspec = importlib.util.spec_from_file_location(name, p)
        if mspec is None or mspec.loader is None:
            raise UsageError(f"reward {spec}: {path}: not a Python file")
        module = importlib.util.module_from_spec(mspec)
        sys.path.insert(0, str(p.resolve().parent))  # its own helpers next to it import
        try:
            mspec.loader.exec_module(module)
        except SystemExit as e:
            raise UsageError(f"reward {spec}: importing {path} called exit({e.code})") from None
        except BaseException as e:  # noqa: BLE001 - the user's module: any failure is theirs
            if isinstance(e, KeyboardInterrupt):
                raise
            raise UsageError(f"reward {spec}: importing {path} failed: {type(e).__name__}: {e}") from None
        finally:
            sys.path.remove(str(p.resolve().parent))
        sys.modules[name] = module
    fn = getattr(module, func, None)
    if fn is None:
        have = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == name)
        raise UsageError(f"reward {spec}: {path} has no function {func}"
                         + (f" (it has: {', '.join(have)})" if have else ""))
    if not callable(fn):
        raise UsageError(f"reward {spec}: {func} in {path} is not a function")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "completions" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not takes:
        raise UsageError(f"reward {spec}: {func}{inspect.signature(fn) if params else '()'} takes no 'completions'",
                         hint="write it as TRL does: def f(prompts, completions, **kwargs) -> list[float | None]")
    return Reward(func, fn, spec=spec)
