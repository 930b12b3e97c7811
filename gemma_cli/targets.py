"""What a verb's TARGET argument names: a run config, a fine-tune run directory, or a preset.

Resolved on the CLI side (plain files, no keras/jax import) into a `Target` that the engine
takes as it is: the engine never decides what kind of argument the user typed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_cli.errors import UsageError


@dataclass
class Target:
    """A resolved TARGET.

    Args:
        config: RunConfig. The run config (for a preset: a minimal one naming it, float32).
        kind: str. "config", "run" or "preset".
        run_dir: Path | None. The fine-tune run directory (kind "run").
        checkpoint: Path | None. Its latest complete checkpoint (kind "run").
    """

    config: Any
    kind: str
    run_dir: Path | None = None
    checkpoint: Path | None = None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    from gemma_cli.engine import checkpoint

    return checkpoint.latest(Path(run_dir))


def resolve(target: str, overrides: list[str] | None = None) -> Target:
    """A run config file (or `-`), a fine-tune output_dir, or a preset dir/name → `Target`."""
    from gemma_cli.config import load_config, parse_config

    p = Path(target)
    if target == "-" or p.is_file():
        return Target(load_config(target, overrides or []), "config")
    if p.is_dir() and (p / "config.yaml").exists():
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise UsageError(f"{target}: a run directory with no checkpoint yet", hint="finetune first, or give the config")
        return Target(load_config(str(p / "config.yaml"), overrides or []), "run", run_dir=p, checkpoint=ckpt)
    if p.is_dir() and not (p / "config.json").exists():
        raise UsageError(f"{target}: neither a run config, a finetune output_dir nor a keras-hub preset directory")
    if not p.exists() and ("/" in target and "://" not in target):
        raise UsageError(f"{target}: no such file or directory", hint="give a run config, a fine-tune run directory or a preset")
    text = f"model:\n  preset: {json.dumps(target)}\n  precision: float32\nmesh:\n  shape: [1, -1]\n"
    return Target(parse_config(text, "<preset>", overrides or []), "preset")
