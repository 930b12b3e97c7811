"""The one run loader: a preset, its LoRA/quantization as configured, and a checkpoint.

`generate`, `export`, `inspect --live` and the trainer's resume all load a model this way, so
a fine-tuned run is rebuilt identically everywhere: `model.load_causal_lm` (preset + dtype
policy) → `model.apply_lora_and_quantize` (the run's adapters) → `checkpoint.restore` (the
adapter or full weights, and the optimizer state when one is given).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from gemma_cli.engine.core.report import NullReporter, Reporter


def load(
    cfg: Any,
    checkpoint: Path | None = None,
    *,
    reporter: Reporter | None = None,
    distribution: Any = None,
    adapters: bool | None = None,
    remat: str = "none",
) -> Any:
    """A keras-hub CausalLM for `cfg`, with the weights of `checkpoint` when given.

    Args:
        cfg: RunConfig. `model.preset`, `model.precision`, `model.lora`, `model.quantize`.
        checkpoint: Path | None. A checkpoint directory of a run (`checkpoints/step_N`).
        reporter: Reporter. Progress lines. Defaults to silent.
        distribution: keras Distribution | None. Load inside its scope (born sharded).
        adapters: bool | None. Enable the configured LoRA. Defaults to True when a checkpoint
            is given (its adapter must have somewhere to go), else False. `model.quantize` is
            applied either way (generation from a quantized preset).
        remat: str. `blocks` rematerialises the decoder blocks (training: `train.remat`);
            `none` for everything that does not train (generation, export).
    """
    from gemma_cli.engine.model import checkpoint as ckptlib
    from gemma_cli.engine.model import load as modellib

    reporter = reporter or NullReporter()
    if adapters is None:
        adapters = checkpoint is not None
    scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
    with scope:
        lm = modellib.load_causal_lm(cfg.model.preset, cfg.model.precision, remat=remat)
        if adapters or cfg.model.quantize != "none":  # a quantized preset: quantized, no adapters
            modellib.apply_lora_and_quantize(lm, cfg.model, lora=adapters)
        if checkpoint is not None:
            reporter.step(f"Loading fine-tuned weights from {checkpoint}")
            ckptlib.restore(checkpoint, lm, None)
    return lm
