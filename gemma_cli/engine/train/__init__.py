"""Training: one recipe per method (`train.method`), chosen from `RECIPES`.

`finetune(cfg, reporter)` runs the config's recipe and returns its summary. A recipe
(`recipe.py`) holds what every method shares; `sft.py` is supervised fine-tuning. A new method
is a `Recipe` subclass with its `objective()` (and, when keras' `fit` is not its loop, its own
`loop()`), one entry in `RECIPES`, and its name in the config schema's `train.method`.
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.core.report import Reporter

# method → "module:Class" (imported when chosen: keras loads only with the recipe)
RECIPES: dict[str, str] = {
    "sft": "gemma_cli.engine.train.sft:SFTRecipe",
    "dpo": "gemma_cli.engine.train.dpo:DPORecipe",
    "grpo": "gemma_cli.engine.train.grpo:GRPORecipe",
}


def recipe_for(cfg: Any) -> type:
    """The recipe class of `cfg.train.method`."""
    import importlib

    from gemma_cli.errors import UsageError

    method = getattr(cfg.train, "method", "sft")
    if method not in RECIPES:
        raise UsageError(f"train.method: unknown method {method!r}", hint=f"one of: {', '.join(RECIPES)}")
    module, cls = RECIPES[method].split(":")
    return getattr(importlib.import_module(module), cls)


def finetune(cfg: Any, reporter: Reporter, *, resume: bool | str = False, dry_run: bool = False) -> dict[str, Any]:
    """Train per the config with its method's recipe; returns a plain summary dict."""
    return recipe_for(cfg)(cfg, reporter, resume=resume, dry_run=dry_run).run()
