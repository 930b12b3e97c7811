"""What this machine offers a run config: its devices, and the default mesh.

`describe()` counts the devices (`GEMMA_CPU_DEVICES` simulates CPU devices, as everywhere);
`auto_mesh` chooses the (batch, model) split of a config without `mesh.shape`: of the splits
whose planned memory per device fits, the one whose train step moves the fewest collective
bytes (`engine/plan/traffic.py`); `choose` applies it to a config, as `finetune`, `inspect`,
`generate` and `init` do.

Example:
    >>> choice = auto_mesh(cfg, 8, 16 * 2**30)
    >>> choice.shape, choice.why
    ((2, 4), 'mesh [2, 4] chosen (batch × model, layout default): the lowest estimated ...')
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


def describe() -> tuple[int, str]:
    """(number of devices, platform: cpu | gpu | tpu) of this process's jax backend."""
    from gemma_cli.engine.core import runtime

    runtime.setup(without_tensorflow=True)  # counting devices needs jax only
    import jax

    return jax.device_count(), jax.devices()[0].platform


@dataclass
class AutoMesh:
    """The mesh `gemma finetune` chose for a config without `mesh.shape`, and why.

    Args:
        shape: tuple[int, int]. Devices on the batch and the model axis.
        rules: str | None. `fsdp` when the weights or optimizer state fit only sharded over
            the batch axis too; None: the config's layout as written.
        why: str. One line for the log.
        divides: bool. False when no split divides the model evenly (indivisible dimensions
            must then be replicated).
        splits: list[str]. One line per split considered: its estimated traffic and planned
            memory, or why it was left out.
        verdict: str. `why` without the splits.
    """

    shape: tuple[int, int]
    rules: str | None
    why: str
    divides: bool = True
    splits: list[str] = field(default_factory=list)
    verdict: str = ""


def choose(cfg: Any, device_memory: int | None = None) -> AutoMesh | None:
    """Give a config without `mesh.shape` the default mesh of this machine (`auto_mesh`) and
    return the choice (its `why` is the line to log); a mesh the user gave is never changed
    (None). `device_memory` is the figure to fit (`--device`); else the chip's own limit, or on
    CPU this host's memory split over its devices. The one rule `finetune`, `inspect`,
    `generate` and `init` share."""
    if "shape" in cfg.mesh.model_fields_set or len(cfg.mesh.axes) != 2:
        return None
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import jax

    choice = auto_mesh(cfg, jax.device_count(), device_memory if device_memory is not None else this_device_memory())
    cfg.mesh.shape = list(choice.shape)
    if choice.rules:
        cfg.layout.rules = choice.rules
    return choice


def this_device_memory() -> int | None:
    """The memory a run may plan per device here: the chip's `bytes_limit` when jax reports
    it, on CPU this host's memory split over its local devices, else None."""
    import jax

    from gemma_cli.engine.plan import inspect as inspect_report

    limit = inspect_report._device_memory()  # noqa: SLF001
    if limit is None and jax.devices()[0].platform == "cpu":
        limit = host_memory_per_device(jax.local_device_count())
    return limit


def host_memory_per_device(local_devices: int) -> int | None:
    """This host's physical memory split over its local devices (a CPU run's budget)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // max(local_devices, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _estimates(cfg: Any, shapes: list[list[int]], rules: str | None) -> list[dict[str, Any] | None]:
    """`traffic.estimate` of each shape: the first alone (it traces the architecture once),
    the rest compiled side by side on this host's cores (XLA compiles without the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from gemma_cli.engine.plan import traffic as traffic_lib

    first = traffic_lib.estimate(cfg, tuple(shapes[0]), rules)
    workers = max(1, min(len(shapes) - 1, (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gemma-traffic") as pool:
        rest = list(pool.map(lambda s: traffic_lib.estimate(cfg, tuple(s), rules), shapes[1:]))
    return [first, *rest]


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

    batch = cfg.data.batch_size if cfg.data is not None else None
    divisors = [d for d in range(1, devices + 1) if devices % d == 0]
    order = [m for m in divisors if batch is None or batch % (devices // m) == 0] or [devices]
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
            for shape, est in zip([f[0] for f in fitting], _estimates(cfg, [f[0] for f in fitting], rules), strict=True):
                moved[str(shape)] = None if est is None else est["bytes_per_device"]
        ranked = fitting
        if moved and all(v is not None for v in moved.values()):
            ranked = sorted(fitting, key=lambda f: (moved[str(f[0])], f[0][mi]))
            how = "the lowest estimated collective traffic of the splits that fit"
            table = [f"{s}: sends ~{_size(moved[str(s)])} per device per step, plans {_size(n)}" for s, n in ranked]
        elif len(fitting) == 1:
            how = "the only split that fits"
            table = [f"{s}: plans {_size(n)}" for s, n in ranked]
        else:
            how = "the narrowest model axis that fits" + (" (no traffic estimate for this model here)"
                                                          if moved else "")
            table = [f"{s}: plans {_size(n)}" for s, n in ranked]
        shape, need = ranked[0]
        splits = table + skipped
        verdict = (f"mesh {shape} chosen (batch × model, layout {layout}): {how}, planning {_size(need)} per device"
                   f"{budget}" + (f", with the batch axis dividing data.batch_size={batch}"
                                  if len(order) < len(divisors) else ""))
        why = f"{verdict} ({'; '.join(splits)}); set mesh.shape to choose"
        return AutoMesh((shape[0], shape[1]), rules, why, splits=splits, verdict=verdict)
    if best is None:  # nothing divides: the config's own default, checked as before
        shape = [1, 1]
        shape[bi], shape[mi] = devices // order[-1], order[-1]
        return AutoMesh((shape[0], shape[1]), None, f"mesh {shape} chosen: no split divides the model evenly",
                        divides=False)
    need, shape2, rules = best
    return AutoMesh(shape2, rules, f"mesh {list(shape2)}{' fsdp' if rules else ''} chosen: no mesh fits "
                                   f"{_size(device_memory)} per device; this one plans the least "
                                   f"({_size(need)}); set mesh.shape to choose")
