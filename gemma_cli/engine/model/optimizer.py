"""The optimizer of a run: learning-rate schedule, optimizer, and the model's compile step.

One builder serves training (`engine/train/`) and `gemma inspect --live` (which compiles
the model exactly as training would, to read the optimizer state's layout).
"""

from __future__ import annotations

import math
from typing import Any


def lr_at(step: float, kind: str, lr: float, warmup: int, total: int) -> float:
    """The learning rate after `step` updates: linear warmup, then constant/cosine/linear to 0.

    Plain-Python twin of `Schedule` (the same formula), for tests and reports.
    """
    total = max(total, 1)
    warm = min(1.0, (step + 1.0) / max(warmup, 1)) if warmup else 1.0
    frac = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    decay = 0.5 * (1.0 + math.cos(math.pi * frac)) if kind == "cosine" else (1.0 - frac if kind == "linear" else 1.0)
    return lr * warm * decay


def schedule(kind: str, lr: float, warmup: int, total: int) -> Any:
    """A keras LearningRateSchedule computing `lr_at` inside the compiled step."""
    import keras
    from keras import ops

    total = max(total, 1)

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            step = ops.cast(step, "float32")
            warm = ops.minimum(1.0, (step + 1.0) / float(max(warmup, 1))) if warmup else 1.0
            frac = ops.clip((step - warmup) / float(max(total - warmup, 1)), 0.0, 1.0)
            if kind == "cosine":
                decay = 0.5 * (1.0 + ops.cos(math.pi * frac))
            elif kind == "linear":
                decay = 1.0 - frac
            else:
                decay = 1.0
            return lr * warm * decay

        def get_config(self) -> dict[str, Any]:
            return {"kind": kind, "lr": lr, "warmup": warmup, "total": total}

    return Schedule()


def build_optimizer(opt_cfg: Any, total_steps: int) -> Any:
    """The configured keras optimizer with its schedule, clipping, accumulation and decay."""
    import keras

    lr = schedule(opt_cfg.schedule, opt_cfg.learning_rate, opt_cfg.warmup_for(total_steps), total_steps)
    kw: dict[str, Any] = {"learning_rate": lr, "clipnorm": opt_cfg.clipnorm}
    if opt_cfg.gradient_accumulation_steps > 1:
        kw["gradient_accumulation_steps"] = opt_cfg.gradient_accumulation_steps
    name = opt_cfg.name
    if name == "adamw":
        opt = keras.optimizers.AdamW(weight_decay=opt_cfg.weight_decay, **kw)
    elif name == "adam":
        opt = keras.optimizers.Adam(**kw)
    elif name == "sgd":
        opt = keras.optimizers.SGD(weight_decay=opt_cfg.weight_decay or None, **kw)
    else:
        opt = keras.optimizers.Adafactor(weight_decay=opt_cfg.weight_decay or None, **kw)
    if opt_cfg.exclude_from_weight_decay and (opt_cfg.weight_decay or name == "adamw"):
        opt.exclude_from_weight_decay(var_names=list(opt_cfg.exclude_from_weight_decay))
    return opt


def compile_model(causal_lm: Any, cfg: Any, total_steps: int, batch_axis_size: int = 1, objective: Any = None) -> Any:
    """Make `causal_lm` ready to train as the run config says; build and return the optimizer.

    The one training preparation (`engine/patches/prepare_for_training`): segment attention
    when `data.packing`, compile with the optimizer and schedule, then the objective — by
    default the run's cross-entropy, in sequence chunks when `train.loss_chunk` asks for it
    (`engine/objectives/cross_entropy.py`; `batch_axis_size` — devices the batch splits over
    — sizes `auto`).

    Args:
        causal_lm: keras_hub.models.CausalLM. Built (with LoRA, remat) under the run's layout.
        cfg: RunConfig. The run config.
        total_steps: int. Optimizer updates in the run (the schedule's length).
        batch_axis_size: int. Devices the batch splits over. Defaults to 1.
        objective: Objective | None. The method's objective. Defaults to None (cross-entropy).
    """
    import keras

    from gemma_cli.engine import patches
    from gemma_cli.engine.objectives import cross_entropy

    if objective is None:
        objective = cross_entropy.for_config(cfg, int(causal_lm.backbone.vocabulary_size), batch_axis_size)
    opt = build_optimizer(cfg.optimizer, total_steps)

    def compile(lm: Any, trackers: list[Any]) -> None:
        lm.compile(
            optimizer=opt,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=trackers or None,
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
            steps_per_execution=cfg.train.steps_per_execution,
        )
        opt.build(lm.trainable_variables)

    packed = bool(cfg.data is not None and cfg.data.packing)
    patches.prepare_for_training(causal_lm, segments=packed, objective=objective, compile=compile)
    return opt
