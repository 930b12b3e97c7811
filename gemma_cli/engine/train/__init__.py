"""Fine-tuning: `finetune(cfg, reporter)` runs a `Trainer` (see trainer.py) and returns its summary."""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.core.report import Reporter


def finetune(cfg: Any, reporter: Reporter, *, resume: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Fine-tune per the config; returns a plain summary dict (see `Trainer`)."""
    from gemma_cli.engine.train.trainer import Trainer

    return Trainer(cfg, reporter, resume=resume, dry_run=dry_run).run()
