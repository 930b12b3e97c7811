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

import os
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


@dataclass
class AutoMesh:
    """The mesh `gemma finetune` chose for a config without `mesh.shape`, and why.

    Args:
        shape: tuple[int, int]. Devices on the batch and the model axis.
        rules: str | None. `fsdp` when the weights or optimizer state fit only sharded over
            the batch axis too; None: the config's layout as written.
        why: str. One line for the log.
    """

    shape: tuple[int, int]
    rules: str | None
    why: str


def host_memory_per_device(local_devices: int) -> int | None:
    """This host's physical memory split over its local devices (a CPU run's budget)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // max(local_devices, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def auto_mesh(cfg: Any, devices: int, device_memory: int | None, *, traffic: bool = True) -> AutoMesh:
    """The lowest-traffic mesh that fits: of the (batch, model) splits of `devices` whose batch
    axis divides `data.batch_size` and whose planned memory per device (`gemma inspect`'s
    plan) fits `device_memory`, the one whose train step moves the fewest collective bytes per
    device, as `engine/plan/traffic.py` estimates them (the train step's skeleton compiled on
    abstract arrays; ties: the narrower model axis). `benchmarks/mesh_table.py` measured the
    compiled keras step on 8 devices (tiny Gemma 3 LoRA, MiB sent per device per step: [1, 8]
    5.4, [8, 1] 2.5, [4, 2] 1.5, [2, 4] 1.4) and the estimate ranks them alike
    (tests/test_traffic.py). Where no split fits with the config's layout and the config does
    not name one, `layout.rules: fsdp` (weights and optimizer state also sharded over the batch
    axis) is tried the same way; where nothing fits, the split that plans the least. Without an
    estimate (a family the skeleton does not know, fewer devices here than the mesh, or
    `traffic=False`) the narrowest model axis that fits is taken. Without a memory figure every
    split fits.
    """
    from gemma_cli.engine.plan import inspect as inspect_report
    from gemma_cli.engine.plan import traffic as traffic_lib

    batch = cfg.data.batch_size if cfg.data is not None else 1
    divisors = [d for d in range(1, devices + 1) if devices % d == 0]
    order = [m for m in divisors if batch % (devices // m) == 0] or [devices]
    layouts: list[str | None] = [None]
    if "rules" not in cfg.layout.model_fields_set and cfg.layout.rules != "fsdp":
        layouts.append("fsdp")
    axes = list(cfg.mesh.axes)
    bi, mi = axes.index(cfg.mesh.batch_axis), axes.index(cfg.mesh.model_axis)
    layout_name = cfg.layout.rules if isinstance(cfg.layout.rules, str) else "custom"
    best: tuple[int, tuple[int, int], str | None] | None = None
    skipped: list[str] = []
    for rules in layouts:
        fitting: list[tuple[list[int], int]] = []
        for m in order:
            shape = [1, 1]
            shape[bi], shape[mi] = devices // m, m
            trial = cfg.model_copy(deep=True)
            trial.mesh.shape = shape
            if rules:
                trial.layout.rules = rules
            doc = inspect_report.describe(trial)
            if any(p.get("level") == "error" for p in doc["problems"]):
                skipped.append(f"{shape} does not divide the model")
                continue
            need = doc["totals"]["total_bytes_per_device"]
            if device_memory is None or need <= device_memory:
                fitting.append((shape, need))
                continue
            skipped.append(f"{shape}{' fsdp' if rules else ''} needs {_size(need)}")
            if best is None or need < best[0]:
                best = (need, (shape[0], shape[1]), rules)
        if not fitting:
            continue
        budget = f" of {_size(device_memory)}" if device_memory else " (device memory unknown: every split fits)"
        layout = rules or layout_name
        moved: dict[str, int | None] = {}
        if traffic and len(fitting) > 1:
            for shape, _ in fitting:
                est = traffic_lib.estimate(cfg, tuple(shape), rules)
                moved[str(shape)] = None if est is None else est["bytes_per_device"]
        ranked = fitting
        if moved and all(v is not None for v in moved.values()):
            ranked = sorted(fitting, key=lambda f: (moved[str(f[0])], f[0][mi]))
            how = "the lowest estimated collective traffic of the splits that fit"
            table = "; ".join(f"{s} {_size(moved[str(s)])}/step sent, plans {_size(n)}" for s, n in ranked)
        else:
            how = "the narrowest model axis that fits" + (" (no traffic estimate for this model here)"
                                                          if moved else "")
            table = "; ".join(f"{s} plans {_size(n)}" for s, n in ranked)
        shape, need = ranked[0]
        why = (f"mesh {shape} chosen (batch × model, layout {layout}): {how}, planning {_size(need)} per device"
               f"{budget}" + (f", with the batch axis dividing data.batch_size={batch}" if len(order) < len(divisors) else "")
               + f" ({table}" + ("; " + "; ".join(skipped) if skipped else "") + "); set mesh.shape to choose")
        return AutoMesh((shape[0], shape[1]), rules, why)
    if best is None:  # nothing divides: the config's own default, checked as before
        shape = [1, 1]
        shape[bi], shape[mi] = devices // order[-1], order[-1]
        return AutoMesh((shape[0], shape[1]), None, f"mesh {shape} chosen: no split divides the model evenly")
    need, shape2, rules = best
    return AutoMesh(shape2, rules, f"mesh {list(shape2)}{' fsdp' if rules else ''} chosen: no mesh fits "
                                   f"{_size(device_memory)} per device; this one plans the least "
                                   f"({_size(need)}); set mesh.shape to choose")
