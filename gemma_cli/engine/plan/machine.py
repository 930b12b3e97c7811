"""What this machine offers a run config: its devices, and a mesh the model divides evenly on.

`gemma init` asks here (and nowhere else needs it): the device count and platform come from
jax (`GEMMA_CPU_DEVICES` simulates CPU devices, as everywhere), and `mesh_for` plans the
preset's architecture (no weights) on each (batch, model) split of the devices, widest model
axis first, and keeps the first one on which every axis of the family's default layout divides
the dimension its rule names (no axis moved to another dimension).

Example:
    >>> devices, platform = describe()
    >>> mesh_for("gemma_7b_en", devices, precision="bfloat16", lora_rank=4)
    MeshChoice(shape=(1, 8), tried=[], planned=True, note=None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gemma_cli.errors import RuntimeFailure


@dataclass
class MeshChoice:
    """The chosen (batch, model) shape and why.

    Args:
        shape: tuple[int, int]. Devices on the batch and the model axis.
        tried: list[str]. Wider model axes that did not divide, with the first reason each.
        planned: bool. Whether the architecture could be planned here (False: not checked).
        note: str | None. Why it could not be planned, or what gives.
        indivisible: str. `error`, or `replicate` when no split divides evenly.
    """

    shape: tuple[int, int]
    tried: list[str] = field(default_factory=list)
    planned: bool = True
    note: str | None = None
    indivisible: str = "error"


def describe() -> tuple[int, str]:
    """(number of devices, platform: cpu | gpu | tpu) of this process's jax backend."""
    from gemma_cli.engine.core import runtime

    runtime.setup(without_tensorflow=True)  # counting devices needs jax only
    import jax

    return jax.device_count(), jax.devices()[0].platform


def mesh_for(preset: str, devices: int, *, precision: str, lora_rank: int) -> MeshChoice:
    """The widest model axis (a divisor of `devices`) the default layout divides evenly."""
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.plan import inspect as inspect_report
    from gemma_cli.engine.plan import layout as lay

    try:
        bb = inspect_report._backbone_config(preset)  # noqa: SLF001 — with "did you mean"
    except RuntimeFailure as e:  # the preset is remote and the network is not there
        return MeshChoice((1, devices), planned=False, note=e.message)
    cls = model.backbone_class(bb)
    variables = model.abstract_variables(bb, precision, lora_rank, None)
    axes = ("batch", "model")
    tried: list[str] = []
    for m in sorted((d for d in range(1, devices + 1) if devices % d == 0), reverse=True):
        shape = (devices // m, m)
        rules = lay.default_rules(cls, axes, "batch", "model")
        plan = lay.plan_variables(variables, rules, shape, axes, "error")
        # evenly: every axis where the family's rules put it (the planner could move the model
        # axis of 4 heads onto their head dimension, but a narrower axis that divides the heads
        # is the better mesh)
        moved = [v for v in plan.variables if v.adjusted]
        if not plan.errors and not moved:
            return MeshChoice(shape, tried)
        tried.append(f"{list(shape)}: {plan.errors[0].split(';')[0] if plan.errors else _why(moved[0], plan)}")
    return MeshChoice(
        (1, devices),
        tried,
        note="no split of the devices divides evenly: indivisible dimensions are replicated",
        indivisible="replicate",
    )


def _why(var: Any, plan: Any) -> str:
    """`path shape: dimension d (n) is not divisible by mesh axis 'a' (k)` for a moved variable."""
    sizes = dict(zip(plan.mesh_axes, plan.mesh_shape, strict=True))
    rule = next(r for r in plan.rules if r.pattern == var.rule)
    for dim, ax in enumerate(rule.axes):
        if ax is not None and var.shape[dim] % sizes[ax]:
            return (
                f"{var.path} {var.shape}: dimension {dim} ({var.shape[dim]}) is not divisible by "
                f"mesh axis '{ax}' ({sizes[ax]})"
            )
    return f"{var.path}: {var.note}"
