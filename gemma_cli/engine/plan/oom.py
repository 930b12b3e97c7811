"""Out of memory, answered with the fix: one line naming what ran out, the plan's estimate
for this config, and the levers `gemma` has, cheapest first.

XLA reports an allocation it cannot make as `RESOURCE_EXHAUSTED: Out of memory ...` (a
`JaxRuntimeError` on every backend; on CPU when the host runs out). `is_oom(e)` recognises it
(and Python's `MemoryError`); `explain(cfg, e, phase=..., step=...)` turns it into a
`RuntimeFailure` (exit 1) whose line carries the plan (`engine/plan/inspect.describe`, no
weights) and what to change:

    out of memory on cpu:0 in the train step at step 3: this config plans 1.20 GiB per device
    (weights 0.10, gradients 0.10, optimizer 0.20, activations 0.60, logits 0.20 GiB) (try
    train.remat=blocks, train.loss_chunk=256, layout.rules=fsdp, data.batch_size=2 with
    optimizer.gradient_accumulation_steps=2, data.sequence_length=512; check a change first
    with: gemma inspect run.yaml --device 16GiB)

Example:
    >>> try:
    ...     recipe.run()
    ... except Exception as e:
    ...     if is_oom(e):
    ...         raise explain(cfg, e, phase="the train step", step=3) from None
    ...     raise
"""

from __future__ import annotations

from typing import Any

from gemma_cli.errors import RuntimeFailure, is_oom, oom_device

__all__ = ["explain", "is_oom", "levers", "plan_line"]

GiB = 1 << 30


def levers(cfg: Any) -> list[str]:
    """What to change, cheapest first, leaving out what the config already does."""
    out = []
    if cfg.train.remat != "blocks":
        out.append("train.remat=blocks")
    if cfg.train.loss_chunk in ("auto", "none"):
        out.append("train.loss_chunk=256")
    if cfg.layout.rules != "fsdp":
        out.append("layout.rules=fsdp")
    d = cfg.data
    if d is not None and d.batch_size > 1:
        accum = cfg.optimizer.gradient_accumulation_steps
        out.append(f"data.batch_size={max(d.batch_size // 2, 1)} with optimizer.gradient_accumulation_steps={accum * 2}")
    if d is not None and d.sequence_length > 128:
        out.append(f"data.sequence_length={d.sequence_length // 2}")
    return out


def plan_line(cfg: Any) -> str:
    """`this config plans X GiB per device (weights …)`, or why it could not be planned."""
    from gemma_cli.engine.plan import inspect

    try:
        doc = inspect.describe(cfg)
    except Exception as e:  # noqa: BLE001 — the answer must not fail on the plan
        return f"the plan could not be made ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    est = doc["memory"]["estimate"]
    parts = ", ".join(f"{k} {est[k] / GiB:.2f}" for k in ("weights", "gradients", "optimizer", "activations", "logits"))
    return f"this config plans {est['total'] / GiB:.2f} GiB per device ({parts} GiB)"


def explain(cfg: Any, e: BaseException, *, phase: str, step: int | None = None) -> RuntimeFailure:
    """The one-line answer to an out-of-memory `e` while running `phase` (e.g. "the train
    step", "compiling the train step", "generate")."""
    from gemma_cli.engine.plan.inspect import _device_memory

    limit = _device_memory()
    device_hint = f"{limit / GiB:.0f}GiB" if limit else "<chip or size, e.g. h100, 24GiB>"
    where = f"{phase}" + (f" at step {step}" if step is not None else "")
    fixes = levers(cfg)
    source = cfg.source_path or "CONFIG"
    hint = (f"try {', '.join(fixes)}; " if fixes else "") + (
        f"check a change first with: gemma inspect {source} --device {device_hint}")
    return RuntimeFailure(f"out of memory on {oom_device(e)} in {where}: {plan_line(cfg)}", hint=hint)
