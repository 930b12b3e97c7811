"""A keras-hub LoRA adapter → a PEFT LoRA adapter for the Hugging Face export of the base model.

`export_peft(causal_lm, out)` writes `adapter_model.safetensors` and `adapter_config.json` so
that `PeftModel.from_pretrained(base, out)` on `gemma export BASE --format hf` gives the logits
of the keras LoRA model, for people who keep the base model separate.

keras' LoRA on an `EinsumDense` kernel of shape `(*lead, n)` is
`kernel + (alpha / rank) * lora_kernel_a @ lora_kernel_b` with `a: (*lead, rank)`,
`b: (rank, n)`. PEFT's is `W + (lora_alpha / r) * B @ A` on `W: (out, in)`. The layouts:

- `attention_output` `(heads, head_dim, hidden)`, `ffw_*` `(in, out)`: one `a` over all inputs,
  so `A = a` flattened and transposed, `B = b.T`, `r = rank`.
- `query` / `key` / `value` `(heads, hidden, head_dim)`: `a` is one `(hidden, rank)` matrix per
  head and `b` is shared, so the update of `W: (heads*head_dim, hidden)` has rank up to
  `heads * rank`. It is written exactly as a PEFT LoRA of `r = heads * rank`: `A` stacks the
  per-head `a`, `B` is block-diagonal with `b.T` per head. `lora_alpha` is scaled by the same
  factor (`rank_pattern` / `alpha_pattern`), so PEFT's `lora_alpha / r` equals keras'
  `alpha / rank`.

Example:
    >>> from gemma_cli.engine.formats.peft import export_peft
    >>> export_peft(causal_lm, "exported/adapter", base="exported/hf")
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gemma_cli.engine import families
from gemma_cli.engine.core.files import atomic_dir
from gemma_cli.engine.core.report import NullReporter
from gemma_cli.engine.model.lora import tower
from gemma_cli.errors import UsageError

# keras-hub Gemma layer name → Hugging Face module path inside a decoder layer (families/).
HF_MODULES = families.hf_module_paths()
# the backbones whose LoRA PEFT loads: the families that say so
SUPPORTED = tuple(c for f in families.all_families() if f.peft_export for c in f.backbone_classes)


def peft_factors(kind: str, a: Any, b: Any) -> tuple[Any, Any]:
    """(A: (r, in), B: (out, r)) with `B @ A` = the keras update `a @ b` in HF's `(out, in)` layout.

    Args:
        kind: str. The keras layer name (`query`, `key`, `value`, `attention_output`, `ffw_*`).
        a: np.ndarray. `lora_kernel_a`.
        b: np.ndarray. `lora_kernel_b`.
    """
    import numpy as np

    if kind in ("query", "key", "value"):
        heads, hidden, rank = a.shape
        A = np.transpose(a, (0, 2, 1)).reshape(heads * rank, hidden)
        B = np.kron(np.eye(heads, dtype=b.dtype), b.T)  # (heads*head_dim, heads*rank)
        return A, B
    if kind == "attention_output":
        heads, head_dim, rank = a.shape
        return a.reshape(heads * head_dim, rank).T, b.T
    return a.T, b.T  # Dense (in, out): W = kernel.T


def _vision_path(backbone: Any, layer: Any) -> tuple[str, str] | None:
    """(HF module path, "vision") of a LoRA layer in the model's vision tower, from the family's
    `Family.hf_vision_lora_path`; None if the layer is not there."""
    fam = families.for_backbone(type(backbone).__name__)
    if fam is None or fam.hf_vision_lora_path is None or tower(backbone) is None:
        return None
    path = fam.hf_vision_lora_path(backbone, layer)
    return (path, "vision") if path else None


def _module_path(backbone: Any, layer: Any) -> tuple[str, str]:
    """(HF module path, keras layer name) of a LoRA layer of a Gemma decoder block (or of
    Gemma 3's vision tower: `_vision_path`). A vision+text model's decoder layers are
    `model.language_model.layers.N` in transformers' `Gemma3ForConditionalGeneration`."""
    hit = _vision_path(backbone, layer)
    if hit is not None:
        return hit
    text = "model.language_model.layers" if tower(backbone) is not None else "model.layers"
    for i in range(int(backbone.num_layers)):
        blk = backbone.get_layer(f"decoder_block_{i}")
        att = blk.attention
        owners = {
            id(att.query_dense): "query", id(att.key_dense): "key", id(att.value_dense): "value",
            id(att.output_dense): "attention_output", id(blk.gating_ffw): "ffw_gating",
            id(blk.gating_ffw_2): "ffw_gating_2", id(blk.ffw_linear): "ffw_linear",
        }
        if id(layer) in owners:
            kind = owners[id(layer)]
            return f"{text}.{i}.{HF_MODULES[kind]}", kind
    raise UsageError(f"--format peft: LoRA on {layer.path} has no Hugging Face counterpart",
                     f"LoRA targets PEFT can load: {', '.join(HF_MODULES)}")


def _pattern(per_module: dict[str, float], default: float) -> dict[str, float]:
    """PEFT `rank_pattern` / `alpha_pattern`: by module suffix when uniform, else by full path."""
    out: dict[str, float] = {}
    by_suffix: dict[str, set[float]] = {}
    for path, v in per_module.items():
        by_suffix.setdefault(path.rsplit(".", 1)[-1], set()).add(v)
    for path, v in per_module.items():
        suffix = path.rsplit(".", 1)[-1]
        if len(by_suffix[suffix]) == 1:
            if v != default:
                out[suffix] = v
        elif v != default:
            out[path] = v
    return out


def export_peft(causal_lm: Any, out: str | Path, *, base: str | None = None, log: Any = None,
                force: bool = False) -> dict[str, Any]:
    """Write the LoRA adapter of `causal_lm` as a PEFT adapter directory.

    Args:
        causal_lm: a keras-hub Gemma / Gemma 3 CausalLM with LoRA enabled (a fine-tune run).
        out: str | Path. Directory to write; must not exist or be empty unless `force`.
        base: str | None. `base_model_name_or_path` recorded in the config (the HF export of
            the base preset).
        log: object with `.step` / `.info`. Defaults to silent.
        force: bool. Replace a non-empty `out`. Defaults to False.

    Returns:
        dict: out, format, backbone, modules, rank, lora_alpha, params, files, seconds.
    """
    log = log or NullReporter()
    t0 = time.monotonic()
    out = Path(out).expanduser()
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras
    import numpy as np

    from gemma_cli.engine.model.lora import lora_layers

    backbone = causal_lm.backbone
    cls = type(backbone).__name__
    if cls not in SUPPORTED:
        raise UsageError(f"--format peft: {cls} is not supported", f"supported: {', '.join(SUPPORTED)}")
    layers = lora_layers(backbone)
    if not layers:
        raise UsageError("--format peft: the model has no LoRA adapter",
                         "export a LoRA fine-tune run (model.lora.rank set), or use --format hf")
    tensors: dict[str, Any] = {}
    ranks: dict[str, float] = {}
    alphas: dict[str, float] = {}
    for layer in layers:
        path, kind = _module_path(backbone, layer)
        a = keras.ops.convert_to_numpy(layer.lora_kernel_a).astype(np.float32)
        b = keras.ops.convert_to_numpy(layer.lora_kernel_b).astype(np.float32)
        A, B = peft_factors(kind, a, b)
        r = int(A.shape[0])
        ranks[path] = r
        alphas[path] = float(layer.lora_alpha) * r / float(layer.lora_rank)
        tensors[f"base_model.model.{path}.lora_A.weight"] = np.ascontiguousarray(A)
        tensors[f"base_model.model.{path}.lora_B.weight"] = np.ascontiguousarray(B)
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    targets: Any = sorted({p.rsplit(".", 1)[-1] for p in ranks})
    names = targets
    if tower(backbone) is not None:
        # the tower and the text model share module names (q_proj): name the adapted modules
        # exactly, as a regex PEFT matches against the whole module path
        targets = "^(" + "|".join(sorted(p.replace(".", r"\.") for p in ranks)) + ")$"
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": int(rank),
        "lora_alpha": alpha,
        "target_modules": targets,
        "rank_pattern": {k: int(v) for k, v in _pattern(ranks, rank).items()},
        "alpha_pattern": _pattern(alphas, alpha),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
    }
    log.step(f"Writing a PEFT adapter for {len(layers)} LoRA layers ({', '.join(names)}) to {out} ...")

    def write(tmp: Path) -> None:
        from safetensors.numpy import save_file

        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")

    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{out}: exists and is not a directory", "choose another --out")
        if any(out.iterdir()) and not force:
            raise UsageError(f"{out}: exists and is not empty", "pass --force to replace it or choose another --out")
    atomic_dir(out, write)
    params = int(sum(int(np.prod(t.shape)) for t in tensors.values()))
    seconds = round(time.monotonic() - t0, 2)
    log.info(f"Wrote a PEFT adapter ({len(layers)} modules, {params:,} params) in {seconds:.1f} s → {out}")
    return {
        "out": str(out),
        "format": "peft",
        "backbone": cls,
        "modules": len(layers),
        "target_modules": names,
        "rank": int(rank),
        "lora_alpha": alpha,
        "params": params,
        "files": sorted(f.name for f in out.iterdir()),
        "seconds": seconds,
    }
