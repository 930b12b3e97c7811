"""What a run config will train, in words and as fields: read from the config, no model loaded.

`gemma config validate` prints it in its success line and `--json` document; `gemma finetune
--dry-run` prints the same sentence beside the numbers it measured. One reader of "what will
train", so the two never disagree.

    method        train.method (sft, ...)
    training      "lora" with rank, alpha and target layers, or "full" (lora.rank: 0 or no
                  lora section: every weight trains)
    trainable     an estimate of the trainable parameters, from the architecture's sizes
                  (a name gemma ships, or a local preset's config.json); None when only a
                  download would tell
    model         the preset and, when known, its family
    quantize      none or int8
    mesh          shape and axes (-1 = the rest of the devices)
    data          source (local files / tfds), format, where from

Imports no keras, keras_hub, jax or tensorflow.

Example:
    >>> facts = describe(load_config("configs/gemma3_270m_demo.yaml"))
    >>> sentence(facts)
    'sft, LoRA rank 4 on query, value (≈ 0.7M trainable), presets/gemma3_270m, chat data ...'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _backbone_config(preset: str) -> dict[str, Any] | None:
    """The serialized backbone config when it is at hand: a name we ship, or a local preset
    directory's config.json (a keras-hub one). None for anything a download would tell."""
    from gemma_cli.engine import families

    known = families.get_preset(preset)
    if known is not None:
        return known
    path = Path(preset).expanduser() / "config.json"
    if "://" in preset or not path.is_file():
        return None
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return conf if isinstance(conf, dict) and "registered_name" in conf else None


def _sizes(bb: dict[str, Any]) -> dict[str, int]:
    from gemma_cli.engine import families

    c = bb.get("config", {}) if isinstance(bb.get("config"), dict) else {}
    hidden = int(c.get("hidden_dim") or 0)
    heads = int(c.get("num_query_heads") or c.get("num_heads") or 1)
    inter = int(c.get("intermediate_dim") or 0)
    return {
        "layers": int(c.get("num_layers") or 0),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": int(c.get("num_key_value_heads") or heads),
        "head_dim": int(c.get("head_dim") or (hidden // max(heads, 1))),
        "ffw": families.gate_width(bb.get("class_name"), inter),
    }


def lora_estimate(bb: dict[str, Any], rank: int, targets: list[str]) -> int | None:
    """Trainable parameters of LoRA adapters on the layers named in `targets`, per decoder block.

    Keras' LoRA on a kernel of shape (*in, out) adds `lora_kernel_a` (*in, rank) and
    `lora_kernel_b` (rank, out): query/key/value kernels are (heads, hidden, head_dim), the
    attention output (heads, head_dim, hidden), the feed-forward ones (hidden, ffw) and
    (ffw, hidden). None when a target is none of these (its shape needs the built model).
    """
    s = _sizes(bb)
    if not (s["layers"] and s["hidden"]):
        return None
    h, d = s["hidden"], s["head_dim"]
    shape = {"query": (s["heads"] * h, d), "key": (s["kv_heads"] * h, d), "value": (s["kv_heads"] * h, d),
             "attention_output": (s["heads"] * d, h), "ffw_gating": (h, s["ffw"]), "ffw_gating_2": (h, s["ffw"]),
             "ffw_linear": (s["ffw"], h)}
    if any(t not in shape for t in targets):
        return None
    return s["layers"] * sum(rank * (shape[t][0] + shape[t][1]) for t in targets)


def describe(cfg: Any) -> dict[str, Any]:
    """The facts of what `cfg` will train (see the module docstring), as plain fields."""
    from gemma_cli.engine import families

    preset = cfg.model.preset
    bb = _backbone_config(preset)
    family = None
    if bb is not None:
        fam = families.for_backbone(families.backbone_class(bb))
        family = fam.name if fam is not None else None
    rank = cfg.model.lora_rank
    training: dict[str, Any]
    if rank:
        fam_targets = families.by_name(family).lora_targets if family else ("query", "value")
        targets = list(cfg.model.lora.target_layers or fam_targets)
        training = {"kind": "lora", "rank": rank, "alpha": cfg.model.lora.alpha or rank, "targets": targets,
                    "trainable_params": lora_estimate(bb, rank, targets) if bb is not None else None}
    else:
        total = families.published_params(preset)
        training = {"kind": "full", "trainable_params": total}
    d = cfg.data
    data: dict[str, Any] | None = None
    if d is not None:
        if d.source == "tfds":
            data = {"source": "tfds", "name": d.name, "split": d.split, "format": "tfds records"}
        else:
            fmt = d.format or "by extension"
            data = {"source": "local", "paths": list(d.paths or []), "format": fmt}
    return {
        "method": cfg.train.method,
        "model": {"preset": preset, "family": family},
        "training": training,
        "quantize": cfg.model.quantize,
        "precision": cfg.model.precision,
        "mesh": {"shape": list(cfg.mesh.shape), "axes": list(cfg.mesh.axes)},
        "data": data,
        "steps": cfg.train.max_steps,
        "epochs": cfg.train.epochs if cfg.train.max_steps is None else None,
    }


def _count(n: int | None) -> str:
    if n is None:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def sentence(facts: dict[str, Any]) -> str:
    """One line: `sft, LoRA rank 8 on query, value (≈ 1.2M trainable), gemma3 presets/x, chat
    data from data/x.jsonl, mesh (2, 4), 100 steps`."""
    t = facts["training"]
    n = _count(t.get("trainable_params"))
    if t["kind"] == "lora":
        what = f"LoRA rank {t['rank']} on {', '.join(t['targets'])}" + (f" (≈ {n} trainable)" if n else "")
    else:
        what = "full fine-tune of every weight" + (f" ({n} trainable parameters)" if n else "")
    model = facts["model"]
    parts = [facts["method"], what, (f"{model['family']} " if model.get("family") else "") + model["preset"]]
    if facts["quantize"] != "none":
        parts.append(f"{facts['quantize']} frozen weights")
    d = facts["data"]
    if d is None:
        parts.append("no data section")
    elif d["source"] == "tfds":
        parts.append(f"tfds {d['name']}[{d['split']}]")
    else:
        shown = d["paths"][0] + (f" (+{len(d['paths']) - 1})" if len(d["paths"]) > 1 else "") if d["paths"] else "-"
        parts.append(f"{d['format'] if d['format'] != 'by extension' else 'text'} data from {shown}")
    mesh = facts["mesh"]
    parts.append("mesh (" + ", ".join("all" if s == -1 else str(s) for s in mesh["shape"]) + ") over "
                 + ", ".join(mesh["axes"]))
    parts.append(f"{facts['steps']} steps" if facts["steps"] else f"{facts['epochs']} epoch(s)")
    return ", ".join(parts)
