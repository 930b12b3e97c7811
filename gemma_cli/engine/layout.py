"""Device mesh, layout rules and the ModelParallel distribution, with divisibility checks.

The rules are the config's `layout.rules`, or the model family's defaults
(`engine/families/`: keras-hub's own `get_layout_map` for Gemma 1/2 and Llama, ours for
Gemma 3, which keras-hub ships none for). Matching
mirrors `keras.distribution.LayoutMap` exactly: an exact path first, else `re.fullmatch` of
every pattern, and two matching patterns are an error. Everything here but `build_mesh` and
`build_distribution` works on plain data, so `inspect` can plan a 27B model on a 16-device
mesh on a laptop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from gemma_cli.errors import UsageError


@dataclass(frozen=True)
class Rule:
    """One layout rule: a variable-path regex and a mesh axis (or None) per dimension."""

    pattern: str
    axes: tuple[str | None, ...]
    source: str = "config"


@dataclass
class VarPlan:
    """How one variable is laid out on the mesh (plain data, for tables and JSON)."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    spec: tuple[str | None, ...]
    rule: str | None
    shard_shape: tuple[int, ...]
    bytes_per_device: int
    adjusted: bool = False  # a dimension was replicated because it was indivisible
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "spec": list(self.spec),
            "shard_shape": list(self.shard_shape),
            "bytes_per_device": self.bytes_per_device,
            "rule": self.rule,
            "adjusted": self.adjusted,
            "problem": self.problem,
        }


@dataclass
class Plan:
    mesh_shape: tuple[int, ...]
    mesh_axes: tuple[str, ...]
    rules: list[Rule]
    variables: list[VarPlan]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def unused_rules(self) -> list[Rule]:
        used = {v.rule for v in self.variables}
        return [r for r in self.rules if r.pattern not in used]

    @property
    def overrides(self) -> dict[str, tuple[str | None, ...]]:
        """Exact-path layouts for variables whose spec differs from their rule's."""
        return {v.path: v.spec for v in self.variables if v.adjusted}


# --------------------------------------------------------------------------------- rules ---
def default_rules(backbone_class: str, mesh_axes: tuple[str, ...], batch_axis: str, model_axis: str) -> list[Rule]:
    """The family's default rules (`engine/families/`), on this mesh's batch/model axes."""
    from gemma_cli.engine import families

    fam = families.for_backbone(backbone_class)
    if fam is None:
        raise UsageError(
            f"no default layout for {backbone_class}",
            hint="give layout.rules in the config as a list of {pattern, axes}",
        )
    return [Rule(p, axes, fam.layout_source) for p, axes in fam.layout_rules(model_axis, batch_axis)]


def config_rules(layout_cfg: Any) -> list[Rule] | None:
    if layout_cfg.rules is None:
        return None
    return [Rule(r.pattern, tuple(r.axes), "config") for r in layout_cfg.rules]


def resolve_rules(cfg: Any, backbone_class: str, mesh_shape: tuple[int, ...]) -> list[Rule]:
    rules = config_rules(cfg.layout)
    if rules is not None:
        return rules
    return default_rules(backbone_class, tuple(cfg.mesh.axes), cfg.mesh.batch_axis, cfg.mesh.model_axis)


# ---------------------------------------------------------------------------------- plan ---
def match(path: str, rules: list[Rule]) -> tuple[Rule | None, str | None]:
    """(rule, error) as keras.distribution.LayoutMap would pick it for `path`."""
    exact = [r for r in rules if r.pattern == path]
    if exact:
        return exact[-1], None
    hits = [r for r in rules if re.fullmatch(r.pattern, path)]
    if len(hits) > 1:
        return None, f"{path} matches {len(hits)} layout rules: " + ", ".join(repr(r.pattern) for r in hits) + " (make the patterns exclusive)"
    return (hits[0] if hits else None), None


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int32": 4, "float64": 8, "int64": 8}.get(dtype, 4)


def plan_variables(
    variables: list[tuple[str, tuple[int, ...], str]],
    rules: list[Rule],
    mesh_shape: tuple[int, ...],
    mesh_axes: tuple[str, ...],
    indivisible: str = "error",
) -> Plan:
    """Lay out `variables` (path, shape, dtype) on a mesh by `rules`; check every dimension."""
    sizes = dict(zip(mesh_axes, mesh_shape, strict=True))
    plan = Plan(tuple(mesh_shape), tuple(mesh_axes), list(rules), [])
    grouped: dict[tuple[str, int, int, str], list[str]] = {}
    for path, shape, dtype in variables:
        shape = tuple(int(s) for s in shape)
        rule, err = match(path, rules)
        spec: tuple[str | None, ...] = (None,) * len(shape)
        problem = None
        adjusted = False
        if err:
            plan.errors.append(err)
            problem = err
        elif rule is not None:
            if len(rule.axes) != len(shape):
                problem = (
                    f"{path} {shape}: rule '{rule.pattern}' gives {len(rule.axes)} axes {list(rule.axes)} "
                    f"for a {len(shape)}-d variable (give one axis or null per dimension)"
                )
                plan.errors.append(problem)
            else:
                new = list(rule.axes)
                for dim, ax in enumerate(rule.axes):
                    if ax is None:
                        continue
                    n = sizes.get(ax)
                    if n is None:
                        problem = f"{path}: rule '{rule.pattern}' names axis '{ax}', which the mesh {list(mesh_axes)} lacks"
                        plan.errors.append(problem)
                        break
                    if shape[dim] % n:
                        msg = (
                            f"{path} {shape}: dimension {dim} ({shape[dim]}) is not divisible by mesh axis "
                            f"'{ax}' ({n}) from rule '{rule.pattern}'"
                        )
                        if indivisible == "replicate":
                            new[dim] = None
                            adjusted = True
                            key = (rule.pattern, dim, shape[dim], ax)
                            grouped.setdefault(key, []).append(path)
                        else:
                            problem = msg
                            plan.errors.append(
                                msg + f"; use a mesh whose '{ax}' axis divides {shape[dim]}, change the rule, "
                                "or set layout.indivisible: replicate"
                            )
                spec = tuple(new)
        shard = tuple(
            s // sizes[a] if a is not None and a in sizes and s % sizes[a] == 0 else s
            for s, a in zip(shape, spec, strict=False)
        )
        plan.variables.append(
            VarPlan(
                path=path,
                shape=shape,
                dtype=dtype,
                spec=spec,
                rule=rule.pattern if rule else None,
                shard_shape=shard,
                bytes_per_device=math.prod(shard) * _itemsize(dtype),
                adjusted=adjusted,
                problem=problem,
            )
        )
    for (pattern, dim, size, ax), paths in grouped.items():
        many = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
        plan.warnings.append(
            f"{paths[0]}{many}: dimension {dim} ({size}) is not divisible by mesh axis '{ax}' "
            f"({sizes[ax]}) from rule '{pattern}'; replicated that dimension (layout.indivisible: replicate)"
        )
    return plan


def raise_for(plan: Plan) -> None:
    if plan.errors:
        more = f" (and {len(plan.errors) - 1} more; see `gemma inspect`)" if len(plan.errors) > 1 else ""
        raise UsageError(plan.errors[0] + more)


# ----------------------------------------------------------------------- keras objects ---
def device_count() -> int:
    from gemma_cli.engine import runtime

    runtime.setup()
    import keras

    return len(keras.distribution.list_devices())


def build_mesh(mesh_cfg: Any) -> Any:
    """A keras DeviceMesh over all devices (all hosts) from the config; -1 fills."""
    from gemma_cli.engine import runtime

    runtime.setup()
    import keras

    devices = keras.distribution.list_devices()
    shape = mesh_cfg.resolve(len(devices))
    return keras.distribution.DeviceMesh(shape=shape, axis_names=list(mesh_cfg.axes), devices=devices)


def build_distribution(device_mesh: Any, plan: Plan, batch_axis: str) -> Any:
    """ModelParallel whose LayoutMap holds the rules plus exact overrides from the plan."""
    import keras

    lm = keras.distribution.LayoutMap(device_mesh)
    for rule in plan.rules:
        lm[rule.pattern] = tuple(rule.axes)
    for path, spec in plan.overrides.items():
        lm[path] = tuple(spec)
    # auto_shard_dataset off: on several processes the data pipeline (engine/data) already
    # feeds each process only its rows of the global batch (the streams of its batch-axis
    # indices); keras' auto-sharding works on tf.data only and would refuse a grain dataset.
    return keras.distribution.ModelParallel(layout_map=lm, batch_dim_name=batch_axis, auto_shard_dataset=False)


@dataclass
class Layout:
    """A checked plan and the ModelParallel distribution built from it."""

    plan: Plan
    distribution: Any
    backbone_class: str
    mesh_shape: tuple[int, ...]
    devices: int
    batch_axis: str

    @property
    def batch_axis_size(self) -> int:
        return self.mesh_shape[list(self.plan.mesh_axes).index(self.batch_axis)]


def layout_for(cfg: Any, *, with_lora: bool = True) -> Layout:
    """Plan the config's model on its mesh without weights, refuse what cannot be laid out,
    and build the distribution: the one path `finetune` and `generate` share."""
    from gemma_cli.engine import model as modellib

    bb_cfg = modellib.backbone_config(cfg.model.preset)
    cls = modellib.backbone_class(bb_cfg)
    n_dev = device_count()
    shape = cfg.mesh.resolve(n_dev)
    lora = cfg.model.lora if with_lora else None
    variables = modellib.abstract_variables(
        bb_cfg, cfg.model.precision, lora.rank if lora else 0, lora.target_layers if lora else None
    )
    plan = plan_variables(
        variables, resolve_rules(cfg, cls, shape), shape, tuple(cfg.mesh.axes), cfg.layout.indivisible
    )
    raise_for(plan)
    distribution = build_distribution(build_mesh(cfg.mesh), plan, cfg.mesh.batch_axis)
    return Layout(plan, distribution, cls, shape, n_dev, cfg.mesh.batch_axis)
