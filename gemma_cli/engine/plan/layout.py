"""Device mesh, layout rules and the ModelParallel distribution, with divisibility checks.

The rules are the config's `layout.rules`: a list of `{pattern, axes}`, `default` (the model
family's rules, `engine/families/`: keras-hub's own `get_layout_map` for Gemma 1/2 and Llama,
ours for Gemma 3) or `fsdp` (the family's rules, plus every other mesh axis on each matrix).
Matching mirrors `keras.distribution.LayoutMap` exactly: an exact path first, else
`re.fullmatch` of every pattern, and two matching patterns are an error.

Rules from the config are strict: a dimension its axis does not divide is an error (or, with
`layout.indivisible: replicate`, replicated). Family rules are *flexible*: they say where an
axis should go, and when that dimension does not divide (4 query heads on a model axis of 8)
the planner moves the axis to another dimension of the same weight that it divides (the head
or hidden dimension), and says so in a note. `fsdp` then places each mesh axis the weight does
not use yet on its largest free dimension that axis divides (ZeRO-3 style: weights, gradients
and optimizer state divide by the whole device count), leaving vectors (norm scales)
replicated. Every variable whose layout differs from its rule's becomes an exact-path entry of
the LayoutMap, so the live arrays follow the plan.

Everything here but `build_mesh` and `build_distribution` works on plain data, so `inspect`
can plan a 27B model on a 16-device mesh on a laptop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gemma_cli.errors import UsageError


@dataclass(frozen=True)
class Rule:
    """One layout rule: a variable-path regex and a mesh axis (or None) per dimension."""

    pattern: str
    axes: tuple[str | None, ...]
    source: str = "config"
    flexible: bool = False  # family defaults: an indivisible axis may move to another dimension
    origin: str | None = None  # derived rules (quantized variables): the rule they come from
    parent: str | None = None  # ... and that rule's pattern (what the variable's row names)

    @property
    def label(self) -> str:
        """How messages name the rule: `pattern`, or for a derived rule `parent' (origin)`
        (quoted by the caller)."""
        return f"{self.parent}' ({self.origin})" if self.origin and self.parent else self.pattern


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
    adjusted: bool = False  # the spec differs from the rule's axes (an exact LayoutMap entry)
    problem: str | None = None
    note: str | None = None  # why the spec differs from the rule (moved, fsdp, replicated)

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
            "note": self.note,
        }


@dataclass
class Plan:
    mesh_shape: tuple[int, ...]
    mesh_axes: tuple[str, ...]
    rules: list[Rule]
    variables: list[VarPlan]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # adjustments, grouped (one line per kind)
    mode: str = "config"  # config | default | fsdp
    # quantized runs: variables whose path holds two shapes over the load (the float kernel,
    # then its quantized replacement), so their layouts go by (path, shape), not by path alone
    by_shape: dict[str, dict[tuple[int, ...], tuple[str | None, ...]]] = field(default_factory=dict)

    @property
    def unused_rules(self) -> list[Rule]:
        used = {v.rule for v in self.variables}
        return [r for r in self.rules if r.pattern not in used]

    @property
    def overrides(self) -> dict[str, tuple[str | None, ...]]:
        """Exact-path layouts for variables whose spec differs from their rule's."""
        return {v.path: v.spec for v in self.variables if v.adjusted and v.path not in self.by_shape}

    @property
    def device_count(self) -> int:
        return math.prod(self.mesh_shape)


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
    return [Rule(p, axes, fam.layout_source, flexible=True) for p, axes in fam.layout_rules(model_axis, batch_axis)]


def config_rules(layout_cfg: Any) -> list[Rule] | None:
    if isinstance(layout_cfg.rules, str):
        return None
    return [Rule(r.pattern, tuple(r.axes), "config") for r in layout_cfg.rules]


def layout_mode(layout_cfg: Any) -> str:
    """`default`, `fsdp` or `config` (a list of rules in the config)."""
    return layout_cfg.rules if isinstance(layout_cfg.rules, str) else "config"


def resolve_rules(cfg: Any, backbone_class: str, mesh_shape: tuple[int, ...]) -> list[Rule]:
    rules = config_rules(cfg.layout)
    if rules is not None:
        return rules
    return default_rules(backbone_class, tuple(cfg.mesh.axes), cfg.mesh.batch_axis, cfg.mesh.model_axis)


def plan_for(
    cfg: Any,
    backbone_class: str,
    variables: list[tuple[str, tuple[int, ...], str]],
    mesh_shape: tuple[int, ...],
    quantized: Any = None,
) -> Plan:
    """The plan of `variables` under the config's layout (rules, fsdp, indivisible) on `mesh_shape`.

    `quantized` (a `model.load.AbstractModel` of a quantized run) derives the layout of each
    quantized variable from its float kernel's rule (`quantized_rules`), checks divisibility on
    the stored (packed) shapes, and records the layouts by (path, shape) for the distribution.
    """
    axes = tuple(cfg.mesh.axes)
    mode = layout_mode(cfg.layout)
    rules = resolve_rules(cfg, backbone_class, mesh_shape)
    namer = _dim_namer(backbone_class)
    kwargs: dict[str, Any] = dict(
        fsdp_axes=axes if mode == "fsdp" else (),
        mode=mode,
    )
    if quantized is None or not quantized.quantized:
        return plan_variables(variables, rules, mesh_shape, axes, cfg.layout.indivisible, dim_names=namer, **kwargs)
    derived = quantized_rules(quantized.quantized, rules)

    def names(path: str, rank: int) -> tuple[str, ...] | None:
        q = quantized.quantized.get(path)
        if q is None:
            return namer(path, rank) if namer else None
        base = namer(q.origin, len(q.origin_shape)) if namer else None
        out = []
        for dims in q.dims:
            what = "×".join(base[d] for d in dims) if base else "×".join(f"dim {d}" for d in dims)
            out.append(what or "blocks")
        if q.mode == "int4" and path.endswith(("/kernel", "/embeddings")):
            out[-1] = f"{out[-1]} packed 2 int4 per byte"
        return tuple(out)

    plan = plan_variables(variables, rules, mesh_shape, axes, cfg.layout.indivisible, dim_names=names,
                          derived=derived, **kwargs)
    # the float kernels exist between load and quantize: lay them out as a float run would,
    # replicated where that cannot be (they are gone before the first step)
    floats = plan_variables(
        [(p, s, "float32") for p, s in quantized.float_kernels.items()], rules, mesh_shape, axes, "replicate",
        dim_names=namer, **kwargs)
    for v in floats.variables:
        plan.by_shape.setdefault(v.path, {})[v.shape] = v.spec
    for v in plan.variables:
        if v.path in quantized.quantized or v.path in quantized.float_kernels:
            plan.by_shape.setdefault(v.path, {})[v.shape] = v.spec
    return plan


def quantized_rules(quantized: dict[str, Any], rules: list[Rule]) -> list[Rule]:
    """One exact-path rule per quantized variable, from the rule of its float kernel.

    Dimension i of the quantized variable takes the mesh axis of the first float kernel
    dimension it flattens (`QuantizedVar.dims`): an int4 EinsumDense kernel
    (heads, hidden, head_dim) → [hidden, heads×head_dim / 2] takes the hidden dimension's axis
    and the heads' axis; its scale and zero point [blocks, heads×head_dim] the heads' axis; the
    group index and int8's broadcast scales stay whole. Divisibility is then checked on the
    stored shape (half the columns for int4), with the float rule's strictness.
    """
    out: list[Rule] = []
    for path, q in quantized.items():
        rule, _ = match(q.origin, rules)
        if rule is None or len(rule.axes) != len(q.origin_shape):
            axes: tuple[str | None, ...] = tuple(None for _ in q.dims)
            source, flexible, origin = "quantized", True, f"no rule for {q.origin}: replicated"
        else:
            picked: list[str | None] = []
            for dims in q.dims:
                ax = next((rule.axes[d] for d in dims if rule.axes[d] is not None), None)
                picked.append(ax if ax not in picked else None)
            axes = tuple(picked)
            source, flexible = rule.source, rule.flexible
            origin = f"applied to the {q.mode} form of {q.origin}"
        out.append(Rule(path, axes, source, flexible=flexible, origin=origin, parent=rule.pattern if rule else None))
    return out


def _dim_namer(backbone_class: str) -> Any:
    from gemma_cli.engine import families

    fam = families.for_backbone(backbone_class)
    return fam.dim_names_of if fam is not None else None


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


def _dim(d: int, shape: tuple[int, ...], names: tuple[str, ...] | None) -> str:
    return f"dimension {d} ({names[d]}, {shape[d]})" if names else f"dimension {d} ({shape[d]})"


def _free(shape: tuple[int, ...], spec: list[str | None], n: int) -> int | None:
    """The largest dimension without an axis that `n` divides (the first of equals), or None."""
    free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % n == 0]
    return max(free, key=lambda d: (shape[d], -d)) if free else None


def _place(shape: tuple[int, ...], spec: list[str | None], ax: str, sizes: dict[str, int]) -> list[tuple[str, int]] | None:
    """Put axis `ax` on a dimension it divides: a free one, else one whose axis can move to a
    free one. Mutates `spec`; returns [(axis, new dimension), ...] or None if nothing fits."""
    n = sizes[ax]
    d = _free(shape, spec, n)
    if d is not None:
        spec[d] = ax
        return [(ax, d)]
    for d in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
        other = spec[d]
        if other is None or other == ax or shape[d] % n:
            continue
        e = _free(shape, spec, sizes[other])
        if e is not None:
            spec[e], spec[d] = other, ax
            return [(ax, d), (other, e)]
    return None


def plan_variables(
    variables: list[tuple[str, tuple[int, ...], str]],
    rules: list[Rule],
    mesh_shape: tuple[int, ...],
    mesh_axes: tuple[str, ...],
    indivisible: str = "error",
    *,
    fsdp_axes: tuple[str, ...] = (),
    dim_names: Callable[[str, int], tuple[str, ...] | None] | None = None,
    mode: str = "config",
    derived: list[Rule] | None = None,
) -> Plan:
    """Lay out `variables` (path, shape, dtype) on a mesh by `rules`; check every dimension.

    Args:
        variables: list. (path, shape, dtype) of every variable.
        rules: list[Rule]. Matched as `keras.distribution.LayoutMap` does. A strict rule's axis
            that does not divide its dimension is an error (`indivisible="error"`) or is
            replicated (`"replicate"`); a flexible rule's axis moves to another dimension of the
            weight that it divides, and only if there is none does `indivisible` apply.
        mesh_shape: tuple[int, ...]. Devices per mesh axis.
        mesh_axes: tuple[str, ...]. The mesh's axis names.
        indivisible: str. `error` or `replicate`.
        fsdp_axes: tuple[str, ...]. Mesh axes to add to every weight of rank >= 2 that its
            rule does not already use, each on the largest free dimension it divides.
        dim_names: callable. (path, rank) → names of the dimensions, for notes. Optional.
        mode: str. `config`, `default` or `fsdp`, recorded in the plan.
        derived: list[Rule]. Exact-path rules matched before `rules` (the quantized variables'
            rules, `quantized_rules`); not part of the plan's LayoutMap rules.
    """
    sizes = dict(zip(mesh_axes, mesh_shape, strict=True))
    plan = Plan(tuple(mesh_shape), tuple(mesh_axes), list(rules), [], mode=mode)
    by_path = {r.pattern: r for r in derived or []}
    grouped: dict[tuple[str, int, int, str], list[str]] = {}
    noted: dict[tuple[Any, ...], tuple[str, list[str]]] = {}
    for path, shape, dtype in variables:
        shape = tuple(int(s) for s in shape)
        names = dim_names(path, len(shape)) if dim_names else None
        rule, err = (by_path[path], None) if path in by_path else match(path, rules)
        spec: list[str | None] = [None] * len(shape)
        problem = None
        reasons: list[str] = []
        key: list[Any] = [rule.pattern if rule else None, shape]
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
                homeless: list[tuple[int, str]] = []
                for dim, ax in enumerate(rule.axes):
                    if ax is None:
                        continue
                    n = sizes.get(ax)
                    if n is None:
                        problem = f"{path}: rule '{rule.pattern}' names axis '{ax}', which the mesh {list(mesh_axes)} lacks"
                        plan.errors.append(problem)
                        break
                    if shape[dim] % n:
                        homeless.append((dim, ax))
                    else:
                        spec[dim] = ax
                for dim, ax in [] if problem else homeless:
                    n = sizes[ax]
                    moves = _place(shape, spec, ax, sizes) if rule.flexible else None
                    if moves:
                        why = (
                            f"'{ax}' ({n}) moved from {_dim(dim, shape, names)} to {_dim(moves[0][1], shape, names)}: "
                            f"{shape[dim]} is not divisible by {n}"
                        )
                        if len(moves) > 1:
                            why += f"; '{moves[1][0]}' moved to {_dim(moves[1][1], shape, names)} to make room"
                        reasons.append(why)
                        key.append(("moved", dim, tuple(moves)))
                        continue
                    what = f"dimension {dim} ({shape[dim]})" if rule.origin is None else _dim(dim, shape, names)
                    msg = (
                        f"{path} {shape}: {what} is not divisible by mesh axis "
                        f"'{ax}' ({n}) from rule '{rule.label}'"
                        + ("" if not rule.flexible else " nor is any other free dimension")
                    )
                    if indivisible == "replicate":
                        grouped.setdefault((rule.label, dim, shape[dim], ax), []).append(path)
                        reasons.append(f"'{ax}' ({n}) replicated: {_dim(dim, shape, names)} is not divisible by {n}")
                        key.append(("replicated", dim, ax))
                    else:
                        problem = msg
                        plan.errors.append(
                            msg + f"; use a mesh whose '{ax}' axis divides {shape[dim]}, change the rule, "
                            "or set layout.indivisible: replicate"
                            + (" (or model.quantize: none)" if rule.origin is not None else "")
                        )
        if fsdp_axes and len(shape) >= 2 and problem is None:
            # the larger split on the larger dimension: big axes first, the innermost of equals first
            order = sorted(fsdp_axes, key=lambda a: (-sizes[a], -list(mesh_axes).index(a)))
            parts: list[str] = []
            for ax in order:
                if sizes[ax] <= 1 or ax in spec:
                    continue
                moves = _place(shape, spec, ax, sizes)
                if moves:
                    part = f"'{ax}' ({sizes[ax]}) on {_dim(moves[0][1], shape, names)}"
                    if len(moves) > 1:
                        part += f" ('{moves[1][0]}' moved to {_dim(moves[1][1], shape, names)} to make room)"
                    key.append(("fsdp", tuple(moves)))
                else:
                    part = f"not over '{ax}' ({sizes[ax]}): no free dimension of {shape} is divisible by it"
                    key.append(("fsdp-none", ax))
                parts.append(part)
            if parts:
                reasons.append("fsdp: " + ", ".join(parts))
        final = tuple(spec)
        wanted = tuple(rule.axes) if rule is not None and len(rule.axes) == len(shape) else (None,) * len(shape)
        note = "; ".join(reasons) or None
        if note:
            noted.setdefault(tuple(key), (note, []))[1].append(path)
        shard = tuple(
            s // sizes[a] if a is not None and a in sizes and s % sizes[a] == 0 else s
            for s, a in zip(shape, final, strict=False)
        )
        plan.variables.append(
            VarPlan(
                path=path,
                shape=shape,
                dtype=dtype,
                spec=final,
                rule=(rule.parent if rule.origin is not None else rule.pattern) if rule else None,
                shard_shape=shard,
                bytes_per_device=math.prod(shard) * _itemsize(dtype),
                adjusted=problem is None and final != wanted,
                problem=problem,
                note=note,
            )
        )
    for (pattern, dim, size, ax), paths in grouped.items():
        many = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
        plan.warnings.append(
            f"{paths[0]}{many}: dimension {dim} ({size}) is not divisible by mesh axis '{ax}' "
            f"({sizes[ax]}) from rule '{pattern}'; replicated that dimension (layout.indivisible: replicate)"
        )
    for note, paths in noted.values():
        many = f" and {len(paths) - 1} more like it" if len(paths) > 1 else ""
        plan.notes.append(f"{paths[0]}{many}: {note}")
    return plan


def raise_for(plan: Plan) -> None:
    if plan.errors:
        more = f" (and {len(plan.errors) - 1} more; see `gemma inspect`)" if len(plan.errors) > 1 else ""
        raise UsageError(plan.errors[0] + more)


# ----------------------------------------------------------------------- keras objects ---
def device_count() -> int:
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras

    return len(keras.distribution.list_devices())


def build_mesh(mesh_cfg: Any) -> Any:
    """A keras DeviceMesh over all devices (all hosts) from the config; -1 fills."""
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras

    devices = keras.distribution.list_devices()
    shape = mesh_cfg.resolve(len(devices))
    return keras.distribution.DeviceMesh(shape=shape, axis_names=list(mesh_cfg.axes), devices=devices)


def build_distribution(device_mesh: Any, plan: Plan, batch_axis: str) -> Any:
    """ModelParallel whose LayoutMap holds the rules plus exact overrides from the plan; a
    quantized run's variables are laid out by (path, shape) (`ShapedModelParallel`)."""
    import keras

    lm = keras.distribution.LayoutMap(device_mesh)
    for rule in plan.rules:
        lm[rule.pattern] = tuple(rule.axes)
    for path, spec in plan.overrides.items():
        lm[path] = tuple(spec)
    # auto_shard_dataset off: on several processes the data pipeline (engine/data) already
    # feeds each process only its rows of the global batch (the streams of its batch-axis
    # indices); keras' auto-sharding works on tf.data only and would refuse a grain dataset.
    if plan.by_shape:
        return shaped_model_parallel(lm, batch_axis, plan.by_shape)
    return keras.distribution.ModelParallel(layout_map=lm, batch_dim_name=batch_axis, auto_shard_dataset=False)


def shaped_model_parallel(layout_map: Any, batch_axis: str, by_shape: dict[str, dict[tuple[int, ...], Any]]) -> Any:
    """A keras ModelParallel that lays out some variables by (path, shape) before the LayoutMap.

    Quantizing a layer replaces its float kernel (heads, hidden, head_dim) by an int8 variable
    of the same path and another shape (int4: [hidden, heads×head_dim / 2]): one LayoutMap entry
    per path cannot serve both, so the plan's layouts for both shapes are looked up here.
    """
    import keras

    class ShapedModelParallel(keras.distribution.ModelParallel):
        def get_variable_layout(self, variable: Any) -> Any:
            if getattr(variable, "_layout", None) is None:
                spec = by_shape.get(variable.path, {}).get(tuple(int(s) for s in variable.shape))
                if spec is not None:
                    return keras.distribution.TensorLayout(list(spec), self.device_mesh)
            return super().get_variable_layout(variable)

    return ShapedModelParallel(layout_map=layout_map, batch_dim_name=batch_axis, auto_shard_dataset=False)


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
    from gemma_cli.engine.model import load as modellib

    bb_cfg = modellib.backbone_config(cfg.model.preset)
    cls = modellib.backbone_class(bb_cfg)
    n_dev = device_count()
    shape = cfg.mesh.resolve(n_dev)
    lora = cfg.model.lora if with_lora else None
    abstract = modellib.abstract_model(
        bb_cfg, cfg.model.precision, lora.rank if lora else 0, lora.target_layers if lora else None, cfg.model.quantize,
        getattr(cfg.model, "vision", "frozen"),
    )
    plan = plan_for(cfg, cls, list(abstract.variables), shape, abstract)
    raise_for(plan)
    distribution = build_distribution(build_mesh(cfg.mesh), plan, cfg.mesh.batch_axis)
    return Layout(plan, distribution, cls, shape, n_dev, cfg.mesh.batch_axis)
