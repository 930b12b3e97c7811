"""Describe how a run config lays a model's weights and optimizer state out on its mesh.

`describe(cfg)` returns plain data (the document `gemma inspect --json` prints):

    {"mesh": {"shape", "axes", "devices"},
     "variables": [{"path", "shape", "dtype", "spec", "shard_shape", "bytes_per_device", "rule",
                    "note"}],
     "optimizer_variables": [... same keys + "variable" (the weight) and "slot"],
     "totals": {...}, "memory": {"estimate", "remat", "loss_chunk", "alternatives", "measured",
     "error"}, "problems": [{"level", "variable", "message"}], "unused_rules": [...],
     "notes": [...], "layout_notes": [...], "model": {...}}

`note` says why a variable's layout differs from its rule's (an axis moved to a dimension it
divides, fsdp); `layout_notes` groups them. `memory.estimate` is `engine/plan/memory.py`'s
per-device estimate of a training step; `memory.measured` (live mode) is XLA's memory analysis
of the compiled train step and `memory.error` the estimate's relative error against its peak.

Two modes:

- plan (default): the preset's architecture only (`model.backbone_config`, offline for the
  presets in `architectures`), variables traced with `jax.eval_shape` (nothing allocated),
  the layout rules matched exactly as `keras.distribution.LayoutMap` does, on the config's
  mesh shape even when this machine has fewer devices. A 27B model plans in seconds.
- live (`live=True`): the real thing: DeviceMesh + ModelParallel from the config, the model
  loaded inside `distribution.scope()`, LoRA/quantization applied, compiled with the configured
  optimizer, the optimizer built; specs are read back from `variable.value.sharding.spec`.

Optimizer state, as keras 3 creates it (only trainable variables get state; with LoRA only the
`lora_kernel_a/b`):

- adamw / adam: `momentum` and `velocity` per trainable variable, same shape, dtype and layout
  as the weight (`add_variable_from_reference` passes the weight's layout).
- sgd: no state (the config has no momentum).
- adafactor: per variable of rank >= 2 a factored `row` (shape[:-1]) and `col`
  (shape[:-2] + shape[-1:]) accumulator, created without a layout, so the ModelParallel
  layout map is asked for their path (`<optimizer>/<variable name>`), which normally matches
  no rule: replicated. Rank < 2 variables get two int32 scalar placeholders instead. Plus a
  full `velocity` like the weight's.
- `gradient_accumulation_steps > 1` adds a `gradient_accumulator` like the weight.
The optimizer's scalar `iteration` / `learning_rate` are left out of the rows (a few bytes).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_cli.engine.objectives import cross_entropy as losses
from gemma_cli.engine.plan import layout as mesh_lib
from gemma_cli.engine.plan import memory
from gemma_cli.errors import UsageError

# keras 3 default optimizer names (the prefix of their variables' paths)
_OPT_NAMES = {"adamw": "adam_w", "adam": "adam", "sgd": "sgd", "adafactor": "adafactor"}

# live: optimizer attribute holding one slot variable per trainable variable → slot name
_OPT_SLOTS = [
    ("_momentums", "momentum"),
    ("_velocities", "velocity"),
    ("_velocity_hats", "velocity_hat"),
    ("momentums", "momentum"),
    ("_r", "row"),
    ("_c", "col"),
    ("_v", "velocity"),
    ("_accumulated_gradients", "gradient_accumulator"),
    ("_model_variables_moving_average", "average"),
]


# ---------------------------------------------------------------------------- helpers ---
def _itemsize(dtype: str) -> int:
    return mesh_lib._itemsize(dtype)  # noqa: SLF001 — one table of dtype sizes


def _row(
    path: str,
    shape: tuple[int, ...],
    dtype: str,
    spec: tuple[Any, ...],
    shard: tuple[int, ...],
    rule: str | None,
) -> dict[str, Any]:
    return {
        "path": path,
        "shape": list(shape),
        "dtype": dtype,
        "spec": [list(a) if isinstance(a, (tuple, list)) else a for a in spec],
        "shard_shape": list(shard),
        "bytes_per_device": math.prod(shard) * _itemsize(dtype),
        "rule": rule,
    }


def _shard_shape(
    shape: tuple[int, ...], spec: tuple[Any, ...], sizes: dict[str, int]
) -> tuple[int, ...]:
    out = []
    for dim, ax in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        axes = ax if isinstance(ax, (tuple, list)) else ((ax,) if ax else ())
        n = math.prod(sizes.get(a, 1) for a in axes)
        out.append(dim // n if n and dim % n == 0 else dim)
    return tuple(out)


def layer_of(path: str) -> str:
    """The top-level layer of a variable path (`decoder_block_1/attention/...` → `decoder_block_1`)."""
    return path.split("/", 1)[0]


def _backbone_config(preset: str) -> dict[str, Any]:
    from gemma_cli.engine import families
    from gemma_cli.engine.model import load as model

    if not (model.is_local(preset) or "://" in preset):
        unknown = families.unknown_preset(preset)
        if unknown:
            raise UsageError(f"model.preset: {unknown}")
    return model.backbone_config(preset)


def _dims(bb_config: dict[str, Any], cls: str) -> dict[str, int]:
    from gemma_cli.engine import families

    c = bb_config.get("config", {})
    hidden = int(c.get("hidden_dim", 0))
    heads = int(c.get("num_query_heads", 1))
    head_dim = int(c.get("head_dim") or (hidden // max(heads, 1)))
    inter = int(c.get("intermediate_dim", 0))
    ffw = families.gate_width(cls, inter)
    return {
        "layers": int(c.get("num_layers", 0)),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": int(c.get("num_key_value_heads", heads)),
        "head_dim": head_dim,
        "ffw": ffw,
        "vocab": int(c.get("vocabulary_size", 0)),
        # Gemma 4 MoE: keras-hub runs every expert on every token (one batched einsum)
        "experts": int(c.get("num_experts") or 0) if c.get("enable_moe_block") else 0,
        "expert_dim": int(c.get("expert_intermediate_dim") or 0),
    }


def _mesh_shape(cfg: Any) -> tuple[int, ...]:
    shape = list(cfg.mesh.shape)
    if -1 not in shape:
        return tuple(shape)
    return tuple(cfg.mesh.resolve(mesh_lib.device_count()))


def _plan_optimizer(
    opt_cfg: Any, weights: list[dict[str, Any]], rules: list[mesh_lib.Rule], sizes: dict[str, int]
) -> list[dict[str, Any]]:
    prefix = _OPT_NAMES[opt_cfg.name]
    rows: list[dict[str, Any]] = []

    def like(w: dict[str, Any], slot: str) -> dict[str, Any]:
        r = _row(
            f"{prefix}/{w['path'].replace('/', '_')}_{slot}",
            tuple(w["shape"]),
            w["dtype"],
            tuple(w["spec"]),
            tuple(w["shard_shape"]),
            w["rule"],
        )
        return {**r, "variable": w["path"], "slot": slot}

    def unplaced(
        w: dict[str, Any], path: str, shape: tuple[int, ...], dtype: str, slot: str
    ) -> dict[str, Any]:
        rule, _ = mesh_lib.match(path, rules)
        spec: tuple[Any, ...] = (None,) * len(shape)
        if rule is not None and len(rule.axes) == len(shape):
            spec = tuple(rule.axes)
        return {
            **_row(
                path,
                shape,
                dtype,
                spec,
                _shard_shape(shape, spec, sizes),
                rule.pattern if rule else None,
            ),
            "variable": w["path"],
            "slot": slot,
        }

    for w in weights:
        if opt_cfg.gradient_accumulation_steps > 1:
            rows.append(like(w, "gradient_accumulator"))
        if opt_cfg.name in ("adamw", "adam"):
            rows.append(like(w, "momentum"))
            rows.append(like(w, "velocity"))
        elif opt_cfg.name == "adafactor":
            shape = tuple(w["shape"])
            name = w["path"].rsplit("/", 1)[-1]
            if len(shape) < 2:
                rows.append(unplaced(w, name, (), "int32", "row"))
                rows.append(unplaced(w, name, (), "int32", "col"))
            else:
                rows.append(unplaced(w, f"{prefix}/{name}", shape[:-1], w["dtype"], "row"))
                rows.append(
                    unplaced(w, f"{prefix}/{name}", shape[:-2] + shape[-1:], w["dtype"], "col")
                )
            rows.append(like(w, "velocity"))
    return rows


def _problems(plan: mesh_lib.Plan) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for v in plan.variables:
        if v.problem:
            full = next((e for e in plan.errors if e.startswith(v.problem)), v.problem)
            seen.add(full)
            out.append({"level": "error", "variable": v.path, "message": full})
    for e in plan.errors:
        if e not in seen:
            out.append({"level": "error", "variable": None, "message": e})
    for w in plan.warnings:
        var = next((v.path for v in plan.variables if w.startswith(v.path + " ")), None)
        out.append({"level": "warning", "variable": var, "message": w})
    return out


@dataclass(frozen=True)
class Selection:
    """Which rows a report shows: a top-level layer (exact name, else a regex fully matching
    layer names) and/or a regex searched in the variable path. `names` are the words the
    caller's user typed for the two (the CLI passes its option names) for error messages.
    """

    layer: str | None = None
    match: str | None = None
    names: tuple[str, str] = ("layer", "match")

    def check(self, paths: list[str]) -> None:
        """Refuse a selector that does not compile or names no layer, before any work."""
        layers = sorted(
            {layer_of(p) for p in paths},
            key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)],
        )
        for what, rx in zip(self.names, (self.layer, self.match), strict=True):
            if rx is None:
                continue
            try:
                re.compile(rx)
            except re.error as e:
                raise UsageError(f"{what} {rx!r}: regex does not compile: {e}") from None
        layer = self.layer
        if layer is not None and layer not in layers and not any(re.fullmatch(layer, n) for n in layers):
            shown = ", ".join(layers[:4] + ["..."] + layers[-1:] if len(layers) > 5 else layers)
            close = difflib.get_close_matches(layer, layers, n=1)
            hint = f"did you mean {close[0]}?" if close else f"layers: {shown}"
            raise UsageError(f"{self.names[0]} {layer!r} matches no layer of the model", hint=hint)

    def rows(self, rows: list[dict[str, Any]], key: str = "path") -> list[dict[str, Any]]:
        out = rows
        if self.layer is not None:
            names = {layer_of(r[key]) for r in rows}
            if self.layer in names:
                out = [r for r in out if layer_of(r[key]) == self.layer]
            else:
                rx = re.compile(self.layer)
                out = [r for r in out if rx.fullmatch(layer_of(r[key]))]
        if self.match is not None:
            rx = re.compile(self.match)
            out = [r for r in out if rx.search(r[key])]
        return out


# ------------------------------------------------------------------------------- main ---
def describe(
    cfg: Any,
    *,
    live: bool = False,
    select: Selection | None = None,
    optimizer: bool = False,
    device_memory: int | None = None,
    checkpoint: Path | None = None,
    device_name: str | None = None,
    measure: bool | None = None,
) -> dict[str, Any]:
    """Sharding tables and memory totals for a run config (see the module docstring).

    Args:
        cfg: RunConfig. The validated run config.
        live: bool. Build the real distribution and model and read the specs back from the
            arrays (needs the weights and the devices). Defaults to False (plan, no weights).
        select: Selection | None. Only some variables (a layer such as `decoder_block_1`,
            a path regex). Defaults to all.
        optimizer: bool. Also list the optimizer state rows. Totals always count it.
        device_memory: int | None. Bytes per device to compare against (when not given, live
            mode reads the devices' `bytes_limit` if jax reports it).
        device_name: str | None. The name of that device (`v5e`, `h100`, ...), for the report.
        measure: bool | None. Live mode: also compile the train step for the config's batch
            and read XLA's memory analysis (the measured peak next to the estimate). Defaults
            to `live`.
        checkpoint: Path | None. Live mode: a fine-tune checkpoint of this config's run to
            load (weights and optimizer state) before the specs are read. Defaults to None.

    Returns:
        dict. Plain data: mesh, variables, optimizer_variables, totals, memory, problems,
        unused_rules, notes, layout_notes, model. In live mode every row also carries
        `plan_spec` (what the plan says) and each row whose live spec differs is a problem of
        level `mismatch`.

    Example:
        >>> doc = describe(load_config("configs/imdb_7b_tpu.yaml"), select=Selection(layer="decoder_block_1"))
        >>> doc["variables"][0]["spec"]
    """
    from gemma_cli.engine import families
    from gemma_cli.engine.model import hf as hf_checkpoint
    from gemma_cli.engine.model import load as model

    preset = cfg.model.preset
    bb = _backbone_config(preset)
    cls = model.backbone_class(bb)
    lora_rank = cfg.model.lora_rank
    lora_targets = cfg.model.lora.target_layers if cfg.model.lora else None
    am = model.abstract_model(bb, cfg.model.precision, lora_rank, lora_targets, cfg.model.quantize, cfg.model.vision)
    abstract = list(am.variables)
    if lora_rank and not any("lora_kernel" in p for p, _, _ in abstract):
        raise UsageError(
            f"model.lora.target_layers: {lora_targets} matched no layer",
            hint="use layer names such as query, value, key, attention_output",
        )
    select = select or Selection()
    select.check([p for p, _, _ in abstract])
    shape = _mesh_shape(cfg)
    axes = tuple(cfg.mesh.axes)
    rules = mesh_lib.resolve_rules(cfg, cls, shape)
    plan = mesh_lib.plan_for(cfg, cls, abstract, shape, am)
    sizes = dict(zip(axes, shape, strict=True))
    notes: list[str] = []
    hf = model.is_local(preset) or preset.startswith("hf://")
    tower = _vision_dims(bb)
    if tower is not None:
        from gemma_cli.engine.data.images import for_preset

        spec, _ = for_preset(preset)
        tower["max_images"] = spec.max_images if spec is not None else tower["max_images"]
    if tower is None and (families.is_vision(preset) or (hf and hf_checkpoint.has_vision(preset))):
        notes.append(
            f"{preset} is a vision+text model: planned as its text backbone (vision_encoder None); "
            "the vision (and audio) towers are not shown"
        )
    if am.quantized:
        stored = sum(math.prod(s) for p, s, _ in abstract if p in am.quantized)
        notes.append(
            f"model.quantize={cfg.model.quantize}: {sum(1 for q in am.quantized.values() if q.logical_params)} "
            f"kernels quantized ({stored:,} stored elements with their scales, zero points and group "
            "indices); totals.params counts logical parameters (the float elements a kernel stands for)"
        )
        if cfg.model.quantize == "int4":
            notes.append("int4 is storage-only in keras: each matmul dequantizes its kernel to the compute dtype")

    data = cfg.data
    batch = data.batch_size if data else 2
    seq = data.sequence_length if data else 128
    batch_size_axis = sizes.get(cfg.mesh.batch_axis, 1)
    per_dev_batch = max(1, math.ceil(batch / batch_size_axis))
    dims = _dims(bb, cls)
    chunk = losses.resolve_chunk(cfg.train.loss_chunk, dims["vocab"], per_dev_batch, seq)
    dpo_reference = False
    if getattr(cfg.train, "method", "sft") == "dpo":
        pref = cfg.dpo
        dpo_reference = pref is None or pref.uses_reference
        notes.append(
            f"train.method: dpo: the batch of {batch} sequences is {batch // 2} preference pairs (chosen and rejected, "
            "side by side on one device)"
            + ("; each step also runs the reference forward pass (the model with its LoRA adapters off), kept for no "
               "backward pass: its hidden states and logits are counted as `reference`" if dpo_reference else
               "; no reference model")
        )

    weights = [
        {**_row(v.path, v.shape, v.dtype, v.spec, v.shard_shape, v.rule), "note": v.note}
        for v in plan.variables
    ]
    trainable = set(am.trainable)  # read from the traced model, not from the names
    opt_rows = _plan_optimizer(
        cfg.optimizer, [w for w in weights if w["path"] in trainable], rules, sizes
    )
    mismatches: list[dict[str, Any]] = []
    measured: dict[str, int] | None = None
    if live:
        mesh_lib.raise_for(plan)
        planned, planned_opt = weights, opt_rows
        weights, opt_rows, trainable, dev_mem, measured = _live(
            cfg, plan, rules, sizes, batch, seq, live if measure is None else measure, checkpoint
        )
        mismatches = _against_plan(planned, weights, planned_opt, opt_rows, sizes)
        if dev_mem is not None and device_memory is None:
            device_memory, device_name = dev_mem, "this device (bytes_limit)"
        notes_of = {v.path: v.note for v in plan.variables}
        for w in weights:
            w["note"] = notes_of.get(w["path"])

    w_bytes = sum(w["bytes_per_device"] for w in weights)
    g_bytes = sum(w["bytes_per_device"] for w in weights if w["path"] in trainable)
    o_bytes = sum(r["bytes_per_device"] for r in opt_rows)
    est = memory.estimate(
        dims,
        weights=w_bytes,
        gradients=g_bytes,
        optimizer=o_bytes,
        batch_per_device=per_dev_batch,
        seq=seq,
        precision=cfg.model.precision,
        remat=cfg.train.remat,
        chunk=chunk,
        model_axis=sizes.get(cfg.mesh.model_axis, 1),
        dequantized=_dequantized_bytes(am, plan, cfg.model.precision),
        reference=dpo_reference,
        images=memory.image_bytes(tower, per_dev_batch * tower["max_images"], cfg.model.vision != "frozen") if tower else 0,
    )
    if tower:
        notes.append(
            f"vision tower: {tower['max_images']} image slots per sequence ({tower['tokens']} image tokens each, inside "
            f"the {seq}-token sequence), {(tower['image_size'] // tower['patch_size']) ** 2} patches per image through "
            f"{tower['layers']} encoder layers; model.vision: {cfg.model.vision}"
        )
    total = est["total"]
    totals = {
        # logical parameters: a quantized kernel counts the float elements it stands for, its
        # scales, zero points and group indices none (stored_elements counts what is stored)
        "params": sum(
            am.quantized[w["path"]].logical_params if w["path"] in am.quantized else math.prod(w["shape"])
            for w in weights
        ),
        "stored_elements": sum(math.prod(w["shape"]) for w in weights),
        "quantize": cfg.model.quantize,
        "trainable_params": sum(math.prod(w["shape"]) for w in weights if w["path"] in trainable),
        "variables": len(weights),
        "trainable_variables": len(trainable),
        "optimizer_variables": len(opt_rows),
        "unmatched_variables": sum(1 for w in weights if w["rule"] is None),
        "weights_bytes_per_device": w_bytes,
        "gradients_bytes_per_device": g_bytes,
        "optimizer_bytes_per_device": o_bytes,
        "activations_bytes_per_device": est["activations"],
        "logits_bytes_per_device": est["logits"],
        "dequantized_bytes_per_device": est["dequantized"],
        "images_bytes_per_device": est["images"],
        "reference_bytes_per_device": est["reference"],
        "total_bytes_per_device": total,
        "device": device_name,
        "device_memory_bytes": device_memory,
        "fits": None if not device_memory else total <= device_memory,
        "mismatches": len(mismatches) if live else None,
        "batch_size": batch,
        "batch_per_device": per_dev_batch,
        "sequence_length": seq,
    }
    mem = {
        "estimate": est,
        "remat": cfg.train.remat,
        "loss_chunk": chunk,
        "alternatives": {
            "remat_none_total": total - est["activations"] + est["activations_remat_none"],
            "remat_blocks_total": total - est["activations"] + est["activations_remat_blocks"],
            "logits_plain_total": total - est["logits"] + est["logits_plain"],
        },
        "measured": measured,
        "error": memory.error(total, measured["peak"]) if measured else None,
    }
    return {
        "mesh": {"shape": list(shape), "axes": list(axes), "devices": math.prod(shape)},
        "model": {
            "preset": preset,
            "backbone": cls,
            "precision": cfg.model.precision,
            "lora_rank": lora_rank,
            "quantize": cfg.model.quantize,
            "optimizer": cfg.optimizer.name,
            "mode": "live" if live else "plan",
            "checkpoint": str(checkpoint) if live and checkpoint is not None else None,
            "layout": plan.mode,
        },
        "variables": select.rows(weights),
        "optimizer_variables": select.rows(opt_rows, key="variable") if optimizer else [],
        "totals": totals,
        "memory": mem,
        "problems": _problems(plan) + mismatches,
        # a family's default rules cover all its variants (Gemma 4's MoE experts, per-layer
        # inputs): only rules the config wrote are reported when they match nothing
        "unused_rules": [
            {"pattern": r.pattern, "axes": list(r.axes), "source": r.source}
            for r in plan.unused_rules
            if r.source == "config"
        ],
        "notes": notes,
        "layout_notes": plan.notes,
    }


def _vision_dims(bb: dict[str, Any]) -> dict[str, int] | None:
    """The vision tower's sizes from a serialized backbone config (None: a text-only plan), and
    the image slots per sequence (keras-hub's preprocessor default: 2)."""
    enc = bb.get("config", {}).get("vision_encoder")
    if not enc:
        return None
    c = enc.get("config", enc)
    size, patch = int(c["image_size"]), int(c["patch_size"])
    tokens = ((size // patch) // int(c.get("pool_size", 14))) ** 2
    return {"image_size": size, "patch_size": patch, "hidden": int(c["hidden_dim"]), "heads": int(c["num_heads"]),
            "intermediate": int(c["intermediate_dim"]), "layers": int(c["num_layers"]), "tokens": tokens, "max_images": 2}


def _dequantized_bytes(am: Any, plan: mesh_lib.Plan, precision: str) -> int:
    """The largest quantized kernel's shard rebuilt at the compute dtype (0 without quantization)."""
    width = 2 if precision in ("bfloat16", "mixed_bfloat16") else 4
    best = 0
    for v in plan.variables:
        q = am.quantized.get(v.path)
        if q is not None and q.logical_params:
            stored = math.prod(v.shape)
            best = max(best, q.logical_params * math.prod(v.shard_shape) // max(stored, 1) * width)
    return best


# ------------------------------------------------------------------------------- live ---
def _spec_of(var: Any) -> tuple[Any, ...]:
    sharding = getattr(var.value, "sharding", None)
    spec = tuple(getattr(sharding, "spec", ()) or ())
    spec = tuple(tuple(a) if isinstance(a, (tuple, list)) else a for a in spec)
    return spec + (None,) * (len(var.shape) - len(spec))


def _live_row(
    var: Any, rules: list[mesh_lib.Rule], sizes: dict[str, int], rule: str | None = "match"
) -> dict[str, Any]:
    shape = tuple(int(s) for s in var.shape)
    spec = _spec_of(var)
    if rule == "match":
        r, _ = mesh_lib.match(var.path, rules)
        rule = r.pattern if r else None
    return _row(var.path, shape, str(var.dtype), spec, _shard_shape(shape, spec, sizes), rule)


def _p(spec: Any) -> str:
    return "P(" + ", ".join(repr(tuple(a)) if isinstance(a, list) else repr(a) for a in spec) + ")"


def _against_plan(
    planned: list[dict[str, Any]],
    weights: list[dict[str, Any]],
    planned_opt: list[dict[str, Any]],
    opt_rows: list[dict[str, Any]],
    sizes: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Set `plan_spec` on every live row; a `mismatch` problem per row the plan did not foresee.

    An axis of size 1 splits nothing: P('model', None) on a (1, 1) mesh is the replicated
    P(None, None) that a single device's arrays report.
    """
    out: list[dict[str, Any]] = []
    sizes = sizes or {}

    def same(a: list[Any], b: list[Any]) -> bool:
        def norm(spec: list[Any]) -> list[Any]:
            return [None if isinstance(x, str) and sizes.get(x) == 1 else x for x in spec]

        return norm(a) == norm(b)

    by_path = {r["path"]: r for r in planned}
    for r in weights:
        want = by_path.pop(r["path"], None)
        r["plan_spec"] = want["spec"] if want else None
        if want is None:
            out.append({"level": "mismatch", "variable": r["path"],
                        "message": f"{r['path']}: live variable {_p(r['spec'])} is not in the plan"})
        elif not same(want["spec"], r["spec"]):
            out.append({"level": "mismatch", "variable": r["path"],
                        "message": f"{r['path']}: live {_p(r['spec'])} but the plan says {_p(want['spec'])}"})
    for path, want in by_path.items():
        out.append({"level": "mismatch", "variable": path,
                    "message": f"{path}: planned {_p(want['spec'])} but the live model has no such variable"})
    by_slot = {(r["variable"], r["slot"]): r for r in planned_opt}
    for r in opt_rows:
        want = by_slot.get((r["variable"], r["slot"]))
        r["plan_spec"] = want["spec"] if want else None
        if want is not None and not same(want["spec"], r["spec"]):
            out.append({"level": "mismatch", "variable": r["variable"],
                        "message": f"{r['variable']} · {r['slot']}: live {_p(r['spec'])} but the plan says {_p(want['spec'])}"})
    return out


def _live(
    cfg: Any,
    plan: mesh_lib.Plan,
    rules: list[mesh_lib.Rule],
    sizes: dict[str, int],
    batch: int,
    seq: int,
    measure: bool,
    checkpoint: Path | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str], int | None, dict[str, int] | None]:
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.model.optimizer import compile_model

    device_mesh = mesh_lib.build_mesh(cfg.mesh)
    if tuple(device_mesh.shape) != plan.mesh_shape:
        raise UsageError(
            f"mesh.shape {list(device_mesh.shape)} here differs from the planned {list(plan.mesh_shape)}"
        )
    distribution = mesh_lib.build_distribution(device_mesh, plan, cfg.mesh.batch_axis)
    with distribution.scope():
        causal_lm = model.load_causal_lm(cfg.model.preset, cfg.model.precision, remat=cfg.train.remat)
        model.apply_lora_and_quantize(causal_lm, cfg.model)
        opt = compile_model(causal_lm, cfg, cfg.train.max_steps or 1000, sizes.get(cfg.mesh.batch_axis, 1))
        if checkpoint is not None:  # the run's weights and optimizer state, as a resume loads them
            from gemma_cli.engine.model import checkpoint as ckpt_lib

            ckpt_lib.restore(Path(checkpoint), causal_lm, opt)
    backbone = causal_lm.backbone
    weights = [_live_row(v, rules, sizes) for v in backbone.weights]
    trainable_vars = list(
        getattr(opt, "_trainable_variables", None) or causal_lm.trainable_variables
    )
    trainable = {v.path for v in trainable_vars}
    opt_rows: list[dict[str, Any]] = []
    for i, w in enumerate(trainable_vars):
        for attr, slot in _OPT_SLOTS:
            slots = getattr(opt, attr, None)
            if (
                isinstance(slots, list)
                and len(slots) == len(trainable_vars)
                and slots[i] is not None
            ):
                s = slots[i]
                derived = f"{w.path.replace('/', '_')}_"
                row = _live_row(s, rules, sizes, rule="match")
                if derived in s.path:  # from the weight: keep the weight's rule (as the plan does)
                    r, _ = mesh_lib.match(w.path, rules)
                    row["rule"] = r.pattern if r else None
                opt_rows.append({**row, "variable": w.path, "slot": slot})
    measured = None
    if measure:
        preprocessor, causal_lm.preprocessor = causal_lm.preprocessor, None
        try:
            with distribution.scope():
                measured = memory.measure_train_step(causal_lm, batch, seq, distribution)
        finally:
            causal_lm.preprocessor = preprocessor
    return weights, opt_rows, trainable, _device_memory(), measured


def _device_memory() -> int | None:
    try:
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 — not every backend reports memory
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None
