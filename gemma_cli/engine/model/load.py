"""Presets, dtype policy, LoRA and quantization: from a config (or a run dir) to a CausalLM.

A preset is a keras-hub name (`gemma_7b_en`), `kaggle://...`, `hf://...`, a local preset
directory or a local Hugging Face checkpoint directory (`engine/model/hf.py`). The architecture (backbone config) is read without weights so that the layout can
be checked before anything is allocated.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from gemma_cli.engine.families import (
    backbone_class,  # the model's class name (callers use it too)
    lora_layer_names,
)
from gemma_cli.engine.model.errors import load_error
from gemma_cli.engine.model.lora import apply_vision_mode, lora_layers, target_names
from gemma_cli.errors import RuntimeFailure, UsageError, translate


def _setup() -> None:
    from gemma_cli.engine.core import runtime

    runtime.setup()


def is_local(preset: str) -> bool:
    return "://" not in preset and (preset.startswith((".", "/", "~")) or "/" in preset or Path(preset).exists())


def backbone_config(preset: str) -> dict[str, Any]:
    """The preset's serialized backbone config ({class_name, config, ...}), no weights.

    Local dirs read config.json (a keras-hub preset's, or a Hugging Face checkpoint's through
    keras-hub's converter); known preset names use the architectures shipped with gemma (no
    network); anything else asks keras-hub, which downloads only config.json.
    """
    if is_local(preset):
        path = Path(preset).expanduser() / "config.json"
        if not path.exists():
            hint = (
                "run `make preset` to create it"
                if "gemma3_270m" in preset
                else "give a keras-hub preset directory or a Hugging Face checkpoint directory"
            )
            raise UsageError(f"model.preset: {preset}: no keras-hub preset or Hugging Face checkpoint there (no config.json)", hint=hint)
        from gemma_cli.engine.model import hf as hf_checkpoint

        if hf_checkpoint.read_config(preset) is not None:
            return hf_checkpoint.backbone_config(preset)
        return json.loads(path.read_text())
    from gemma_cli.engine import families

    known = families.get_preset(preset)
    if known is not None:
        return known
    _check_credentials(preset)
    _require_host(preset)
    _setup()
    from keras_hub.src.utils.preset_utils import load_json

    from gemma_cli.engine.core import remote

    try:
        with remote.guard(remote.kind_of(_handle(preset)) or "kaggle"):
            cfg = load_json(preset, "config.json")
    except Exception as e:  # network, auth, unknown name
        raise load_error(preset, e) from None
    if isinstance(cfg, dict) and "model_type" in cfg and "registered_name" not in cfg:
        from gemma_cli.engine.model import hf as hf_checkpoint  # an hf:// transformers repository

        return hf_checkpoint.backbone_config(preset, hf_config=cfg)
    return cfg


def _handle(preset: str) -> str:
    """The download handle of a preset: itself, or a bare keras-hub name's registered handle."""
    if "://" in preset or is_local(preset):
        return preset
    from gemma_cli.engine import families

    return families.keras_hub_presets().get(preset, "")


def _require_host(preset: str) -> None:
    """The bounded probe of the host a download comes from (`engine/core/remote.py`), unless
    the download is cached: a host that does not answer is one line in seconds, not the
    library's retries."""
    from gemma_cli.engine.core import remote

    remote.require_preset(_handle(preset), f"model.preset: {preset}")


def _check_credentials(preset: str) -> None:
    from gemma_cli.engine.core.credentials import require_credentials

    require_credentials(preset)


def dtype_for(precision: str) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "mixed_bfloat16": "mixed_bfloat16"}[precision]


def abstract_variables(
    bb_config: dict[str, Any], precision: str = "float32", lora_rank: int = 0, lora_targets: list[str] | None = None,
    vision: str = "frozen",
) -> list[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype) of every backbone variable, with LoRA, allocating nothing.

    Traced once per (architecture, precision, LoRA) in a process: planning one model on many
    meshes (`gemma init`, the bench's slice table, the layout tests) reuses the trace.
    """
    _setup()
    key = json.dumps(bb_config, sort_keys=True, default=str)
    targets = lora_layer_names(backbone_class(bb_config), lora_targets)
    out = list(_abstract(key, precision, lora_rank, tuple(targets) if targets else None, vision))
    if lora_rank and targets:
        check_lora_targets(lora_targets, targets, [p for p, _, _ in out])
    return out


def check_lora_targets(given: list[str], names: list[str], paths: list[str]) -> None:
    """Every `model.lora.target_layers` entry names a layer of the model that got adapters
    (exit 2 naming the one that matched nothing, and the names there are)."""
    import re

    adapted = {m.group(1) for p in paths if (m := re.search(r"([^/]+)/lora_kernel_a$", p))}
    for g, n in zip(given, names, strict=False):
        if n not in adapted:
            have = sorted({m.group(1) for p in paths if (m := re.search(r"([^/]+)/kernel$", p))})
            raise UsageError(
                f"model.lora.target_layers: {g!r}" + (f" (= {n!r} here)" if g != n else "") + " matches no layer of this model",
                hint=f"layers with kernels: {', '.join(have)}; Hugging Face names q_proj, k_proj, v_proj, o_proj, "
                "gate_proj, up_proj, down_proj are understood",
            )


@functools.lru_cache(maxsize=32)
def _abstract(
    bb_json: str, precision: str, lora_rank: int, lora_targets: tuple[str, ...] | None, vision: str = "frozen"
) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    bb_config = json.loads(bb_json)
    _setup()
    import jax
    import keras

    paths: list[tuple[str, str]] = []

    def build() -> list[Any]:
        cfg = dict(bb_config)
        inner = dict(cfg.get("config", {}))
        inner["dtype"] = dtype_for(precision)
        cfg["config"] = inner
        bb = keras.saving.deserialize_keras_object(cfg)
        if lora_rank:
            bb.enable_lora(lora_rank, target_layer_names=target_names(bb, list(lora_targets) if lora_targets else None, vision))
        paths.clear()
        paths.extend((v.path, str(v.dtype)) for v in bb.weights)
        return [v.value for v in bb.weights]

    shapes = jax.eval_shape(build)
    return tuple((p, tuple(s.shape), d) for (p, d), s in zip(paths, shapes, strict=True))


def load_causal_lm(preset: str, precision: str = "float32", remat: str = "none") -> Any:
    """keras_hub CausalLM.from_preset with the dtype policy; errors become one line.

    Args:
        preset: str. A preset name, handle or directory.
        precision: str. `float32`, `bfloat16` or `mixed_bfloat16`.
        remat: str. `blocks` builds the backbone so that each decoder block is rematerialised
            in the backward pass (`engine/patches/remat.py`); `none` (generation, export) does not.
    """
    _setup()
    from gemma_cli.engine.model import hf as hf_checkpoint

    if not is_local(preset):
        _check_credentials(preset)
        _require_host(preset)
        if preset.startswith("hf://") and hf_checkpoint.read_config(preset) is not None:
            return hf_checkpoint.load_causal_lm(preset, dtype_for(precision))
    else:
        backbone_config(preset)  # clear error for a missing dir or an unsupported checkpoint
        if hf_checkpoint.is_hf_checkpoint(preset):
            return hf_checkpoint.load_causal_lm(preset, dtype_for(precision))
    import keras_hub

    from gemma_cli.engine.core import runtime
    from gemma_cli.engine.patches import remat as rematlib

    # keras-hub's CausalLM preprocessors need TensorFlow; its tokenizers do not (sentencepiece).
    # Without TensorFlow the task is built without a preprocessor and carries its tokenizer.
    with_tf = runtime.tensorflow_available()
    extra: dict[str, Any] = {} if with_tf else {"preprocessor": None}
    from gemma_cli.engine.core import remote

    try:
        with runtime.quiet_native_info(), remote.guard(remote.kind_of(_handle(preset)) or "hf"):
            lm = rematlib.build(
                remat,
                backbone_config(preset) if remat != "none" else {},
                lambda: keras_hub.models.CausalLM.from_preset(preset, dtype=dtype_for(precision), **extra),
            )
            if not with_tf:
                object.__setattr__(lm, "_gemma_tokenizer", keras_hub.tokenizers.Tokenizer.from_preset(preset))
            return lm
    except (UsageError, RuntimeFailure):
        raise
    except Exception as e:
        known = translate(e, key="model.preset")
        raise (known if known is not None else load_error(preset, e)) from None


def tokenizer_of(causal_lm: Any) -> Any:
    """The model's tokenizer: its preprocessor's, or the one loaded beside it without TensorFlow."""
    pre = getattr(causal_lm, "preprocessor", None)
    if pre is not None:
        return pre.tokenizer
    tok = getattr(causal_lm, "_gemma_tokenizer", None)
    if tok is None:
        raise RuntimeFailure("internal: the model has neither a preprocessor nor a tokenizer")
    return tok


def apply_lora_and_quantize(causal_lm: Any, model_cfg: Any) -> None:
    if model_cfg.quantize == "int8":
        causal_lm.quantize("int8")
    lora = model_cfg.lora
    if lora and lora.rank:
        bb = causal_lm.backbone
        names = lora_layer_names(type(bb).__name__, lora.target_layers)
        bb.enable_lora(lora.rank, target_layer_names=target_names(bb, names, getattr(model_cfg, "vision", "frozen")))
        if not getattr(bb, "_lora_enabled_layers", None):
            raise UsageError(
                f"model.lora.target_layers: {lora.target_layers} matched no layer",
                hint="use layer names such as query, value, key, attention_output",
            )
        if lora.alpha is not None:
            for layer in lora_layers(bb):
                layer.lora_alpha = float(lora.alpha)
    apply_vision_mode(causal_lm.backbone, getattr(model_cfg, "vision", "frozen"), bool(lora and lora.rank))


def param_counts(causal_lm: Any) -> dict[str, int]:
    import numpy as np

    total = int(sum(np.prod(v.shape) for v in causal_lm.weights))
    trainable = int(sum(np.prod(v.shape) for v in causal_lm.trainable_weights))
    return {"total": total, "trainable": trainable}
