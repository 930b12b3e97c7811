"""Gemma 4 (keras-hub `Gemma4Backbone`), text backbones: E2B, E4B, 26B-A4B (MoE) and 31B.

Architecture numbers: the text configs of Hugging Face's Gemma 4 conversion script
(`transformers/models/gemma4/convert_gemma4_weights.py`: E2B 35 layers, 4:1 local/global,
per-layer inputs (PLE), 20 KV-shared layers, double-wide MLP on them; E4B 42 layers, PLE,
18 KV-shared layers; 31B 60 layers; 26B-A4B 30 layers with 128 experts of width 704, top 8,
beside a 2112-wide dense MLP), run through keras-hub's `convert_gemma4.convert_backbone_config`
and `fix_hf_kwargs` below. Global layers have 512-wide heads (`global_head_dim`); 26B/31B
global layers have K = V (`num_global_key_value_heads`: 2 and 4 KV heads, no value kernel).

Every keras-hub Gemma 4 preset is vision+text (E2B/E4B also audio); they are planned as their
text backbone, what fine-tuning shards (the vision tower, ~0.55B parameters on 26B/31B, and
the audio tower are left out). The parameter counts below are those of the text backbones:
keras-hub publishes only the rounded totals with the towers (5.1B, 7.9B, 26B, 31B), which
tests/test_gemma4.py checks them against, together with `transformers`' own count of the same
text config. The `*_assistant` presets (speculative-decoding drafts, not usable alone) are
not in the table.

Default layout (keras-hub ships none for Gemma 4), on the mesh's `model` and `batch` axes:

- embeddings (vocab, hidden) and the per-layer-input table (vocab, layers x 256):
  vocab over `model`, the rest over `batch`; the per-layer-input projections like the MLP.
- query (heads, hidden, head_dim) and attention_output (heads, head_dim, hidden): heads over
  `model` (8 to 32 query heads), hidden over `batch`.
- key/value (kv_heads, hidden, head_dim): Gemma 4 has 1 (E2B), 2 (E4B; 26B global layers) or
  4 (31B global layers) KV heads, fewer than a model axis of 8, so `model` splits head_dim
  (256 or 512) instead of heads, and `batch` the hidden dim.
- MLP: intermediate over `model`, hidden over `batch`.
- MoE expert bank, 3-D weights (experts, hidden, expert_dim) and (experts, expert_dim, hidden):
  the expert dimension (128) over `model` (expert parallelism: each device holds and runs
  128/model experts; keras-hub computes every expert densely and sums them, so the sum
  becomes one reduction over `model`), hidden over `batch`. The router and the norms are
  small and replicated.
Every dimension named divides 1, 2, 4 and 8, so every preset plans on (1, 8), (2, 4), (8, 1)
and (2, 8) meshes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gemma_cli.engine.families import GEMMA_CHAT, GEMMA_DIM_NAMES, Family, Preset, named_rules
from gemma_cli.engine.families.gemma import dims

CHAT = dataclasses.replace(
    GEMMA_CHAT, start_turn="<|turn>", end_turn="<turn|>", system="turn", roles={**GEMMA_CHAT.roles, "system": "system"}
)

BASE: dict[str, Any] = {
    "vocabulary_size": 262144,
    "image_size": None,
    "head_dim": 256,
    "global_head_dim": 512,
    "query_head_dim_normalize": True,
    "attention_logit_soft_cap": None,
    "final_logit_soft_cap": 30.0,
    "use_sliding_window_attention": True,
    "sliding_window_size": 512,
    "sliding_window_pattern": 6,
    "layer_types": None,
    "local_rope_scaling_factor": 1.0,
    "global_rope_scaling_factor": 1.0,
    "vision_encoder": None,
    "audio_encoder": None,
    "num_audio_tokens_per_clip": None,
    "use_bidirectional_attention": False,
    "use_vision_bidirectional_attention": False,
    "layer_norm_epsilon": 1e-06,
    "dropout": 0,
    "is_embedding_model": False,
    "pooling_intermediate_dim": None,
    "embedding_dim": None,
    "num_kv_shared_layers": 0,
    "num_global_key_value_heads": None,
    "hidden_size_per_layer_input": 0,
    "vocab_size_per_layer_input": None,
    "global_rope_wavelength": 1000000.0,
    "local_rope_wavelength": 10000.0,
    "global_rope_partial_rotary_factor": 0.25,
    "use_double_wide_mlp": False,
    "enable_moe_block": False,
    "num_experts": None,
    "expert_intermediate_dim": None,
    "num_experts_per_token": 8,
}
_ON_DEVICE = {"hidden_size_per_layer_input": 256, "vocab_size_per_layer_input": 262144}
_LARGE = {"sliding_window_size": 1024, "use_vision_bidirectional_attention": True}

RULES = [
    ("token_embedding/embeddings", ("model", "batch")),
    ("per_layer_token_embedding/embeddings", ("model", "batch")),
    ("per_layer_model_projection/kernel", ("batch", "model")),
    ("decoder_block.*attention/query/kernel", ("model", "batch", None)),
    ("decoder_block.*attention/(key|value)/kernel", (None, "batch", "model")),
    ("decoder_block.*attention_output/kernel", ("model", None, "batch")),
    ("decoder_block.*(ffw_gating|ffw_gating_2|per_layer_input_gate)/kernel", ("batch", "model")),
    ("decoder_block.*(ffw_linear|per_layer_up_proj)/kernel", ("model", "batch")),
    ("decoder_block.*moe_expert_bank/(gate_proj|up_proj)", ("model", "batch", None)),
    ("decoder_block.*moe_expert_bank/down_proj", ("model", None, "batch")),
    # The vision tower (Gemma4VisionEncoder; keras-hub has no layout for it): 12 or 16 heads
    # of 64, width 768 or 1152, MLP 3072 or 4304. Heads do not divide a model axis of 8, so
    # q/k/v/o split head_dim over `model` and the width over `batch`; the MLP, the patch input
    # projection (3·16·16 = 768 → width) and the projector into the text width split (in, out)
    # over (batch, model) as the text MLP. Norms and the position table are replicated.
    ("image_encoder/.*attention/(query|key|value)/dense/kernel", (None, "batch", "model")),
    ("image_encoder/.*attention/attention_output/dense/kernel", (None, "model", "batch")),
    ("image_encoder/.*(ffw_gating|ffw_gating_2)/dense/kernel", ("batch", "model")),
    ("image_encoder/.*ffw_linear/dense/kernel", ("model", "batch")),
    ("image_encoder/patch_embedder/input_proj/kernel", ("batch", "model")),
    ("vision_output_encoder/vision_input_projection/kernel", ("batch", "model")),
]


def fix_hf_kwargs(hf_config: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Backbone kwargs keras-hub's converter misses in a config.json written by transformers 5.

    keras-hub 0.32 reads `global_head_dim` and `num_global_key_value_heads` from the text
    config; `transformers` >= 5.2x writes them into `per_layer_config` (layer index → its
    `head_dim` / `num_key_value_heads`) instead, and then keras-hub builds global layers with
    256-wide heads and a value kernel, and fails to reshape the checkpoint's weights.
    """
    text = hf_config.get("text_config") or hf_config
    out = dict(kwargs)
    per_layer = text.get("per_layer_config") or {}
    for layer in per_layer.values():
        if out.get("global_head_dim") is None and "head_dim" in layer:
            out["global_head_dim"] = layer["head_dim"]
        if out.get("num_global_key_value_heads") is None and "num_key_value_heads" in layer:
            if text.get("attention_k_eq_v", True):
                out["num_global_key_value_heads"] = layer["num_key_value_heads"]
    return out


def fix_export(backbone: Any, config: dict[str, Any], tokenizer_config: dict[str, Any]) -> None:
    """What keras-hub 0.32's Gemma 4 exporter leaves out of config.json.

    - `architectures`: it names the headless `Gemma4TextModel` (`Gemma4Model` with the vision
      tower); the file holds a causal LM (`Gemma4ForConditionalGeneration`).
    - `attention_k_eq_v`: it writes `num_global_key_value_heads` but not this switch, which
      `transformers` defaults to False: 26B/31B global layers then expect a value projection
      and the checkpoint does not load.
    - rope types: `proportional` partial RoPE on global layers, `default` on local ones, as
      the published checkpoints say.
    - a dense model gets `top_k_experts: 8` (keras-hub's default): MoE keys only with experts.
    """
    del tokenizer_config
    if config.get("model_type") == "gemma4_text":
        config["architectures"] = ["Gemma4ForCausalLM"]
    elif config.get("model_type") == "gemma4":  # vision+text: it names the headless Gemma4Model
        config["architectures"] = ["Gemma4ForConditionalGeneration"]
    text = config.get("text_config") or config
    text["attention_k_eq_v"] = backbone.num_global_key_value_heads is not None
    rope = text.get("rope_parameters") or {}
    rope.setdefault("full_attention", {}).setdefault("rope_type", "proportional")
    rope.setdefault("sliding_attention", {}).setdefault("rope_type", "default")
    text["rope_parameters"] = rope
    if not backbone.enable_moe_block:
        for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
            text[key] = None


IMAGE_TOKENS = {"boi_token_id": "<|image>", "image_token_id": "<|image|>", "eoi_token_id": "<image|>",
                "video_token_id": "<|video|>"}


def fix_export_vision(causal_lm: Any, config: dict[str, Any], tokenizer_config: dict[str, Any]) -> None:
    """What keras-hub 0.32's exporter leaves out of a vision+text Gemma 4's config.json: the ids
    of the image markers (transformers finds the image's places by `image_token_id`; its
    defaults are the 262k vocabulary's) and the soft tokens per image."""
    del tokenizer_config
    pre = causal_lm.preprocessor
    if causal_lm.backbone.vision_encoder is None or pre is None:
        return
    for key, piece in IMAGE_TOKENS.items():
        tid = pre.tokenizer.token_to_id(piece)
        if tid is not None:
            config[key] = int(tid)
    conv = getattr(pre, "image_converter", None)
    if conv is not None:
        config["vision_soft_tokens_per_image"] = int(conv.max_soft_tokens)


def export_files(causal_lm: Any) -> dict[str, str]:
    """processor_config.json of a vision+text Gemma 4 (its image processor, from the keras-hub
    image converter: patch size, pooling, max soft tokens, `x * scale + offset` as rescale and
    normalisation), which gemma's and transformers' loaders read."""
    import json

    pre = causal_lm.preprocessor
    conv = getattr(pre, "image_converter", None) if pre is not None else None
    if causal_lm.backbone.vision_encoder is None or conv is None:
        return {}
    c = conv.get_config()
    scale, offset = c.get("scale") or [1 / 255] * 3, c.get("offset") or [0.0] * 3
    scale = scale if isinstance(scale, list | tuple) else [scale] * 3
    offset = offset if isinstance(offset, list | tuple) else [offset] * 3
    std = [(1 / 255) / s for s in scale]
    mean = [-o * s for o, s in zip(offset, std, strict=True)]
    plain = all(abs(s - 1.0) < 1e-9 for s in std) and not any(mean)
    image = {"image_processor_type": "Gemma4ImageProcessor", "do_resize": True, "do_rescale": True,
             "rescale_factor": 1 / 255, "do_normalize": not plain, "image_mean": mean, "image_std": std,
             "patch_size": int(conv.patch_size), "pooling_kernel_size": int(conv.pooling_kernel_size),
             "max_soft_tokens": int(conv.max_soft_tokens)}
    return {"processor_config.json": json.dumps({"image_processor": image, "image_seq_length": int(conv.max_soft_tokens),
                                                 "processor_class": "Gemma4Processor"}, indent=1)}


_TINY_HF_BASE: dict[str, Any] = dict(
    vocab_size=320,
    vocab_size_per_layer_input=320,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=8,  # 8 heads, 8 experts, widths of 8 and more: plans on a model axis of 8
    num_key_value_heads=2,
    head_dim=8,
    global_head_dim=16,
    num_global_key_value_heads=1,
    attention_k_eq_v=True,
    sliding_window=4,
    final_logit_softcapping=30.0,
    layer_types=["sliding_attention", "full_attention"] * 2,
    rope_parameters={
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    },
    hidden_size_per_layer_input=0,
    max_position_embeddings=256,
)

FAMILY = Family(
    gguf_hint="Gemma 4 is not supported yet: export --format hf and convert that with llama.cpp's "
              "convert_hf_to_gguf.py",
    name="gemma4",
    backbone_classes=("Gemma4Backbone",),
    module="keras_hub.src.models.gemma4.gemma4_backbone",
    layer_name="gemma4_backbone",
    layout_rules=named_rules(RULES),
    layout_source="gemma built-in rules for Gemma 4",
    dim_names=GEMMA_DIM_NAMES
    + (
        ("per_layer_token_embedding/embeddings", ("vocab", "per_layer")),
        ("per_layer_model_projection/kernel", ("hidden", "per_layer")),
        (r".*(per_layer_input_gate)/kernel", ("hidden", "per_layer")),
        (r".*(per_layer_up_proj)/kernel", ("per_layer", "hidden")),
        (r".*moe_expert_bank/(gate_proj|up_proj)", ("experts", "hidden", "expert_dim")),
        (r".*moe_expert_bank/down_proj", ("experts", "expert_dim", "hidden")),
    ),
    chat=CHAT,
    hf_model_types=("gemma4", "gemma4_text"),
    hf_tokenizer_files=("tokenizer.json", "tokenizer.model"),  # the latter: what keras-hub's exporter writes
    hf_kwargs_fixup=fix_hf_kwargs,
    hf_towers=("vision_encoder",),
    hf_export_fixup=fix_export,
    hf_export_vision=fix_export_vision,
    hf_export_files=export_files,
    presets={
        # E2B: 35 layers, pattern 4 local : 1 global, 20 KV-shared layers with a double-wide MLP
        "gemma4_2b": Preset(
            {
                **BASE,
                **dims(35, 8, 1, 1536, 6144),
                **_ON_DEVICE,
                "sliding_window_pattern": 5,
                "num_kv_shared_layers": 20,
                "use_double_wide_mlp": True,
            },
            4_628_569_379,
        ),
        "gemma4_4b": Preset(
            {**BASE, **dims(42, 8, 2, 2560, 10240), **_ON_DEVICE, "num_kv_shared_layers": 18},
            7_463_013_418,
        ),
        "gemma4_26b_a4b": Preset(
            {
                **BASE,
                **dims(30, 16, 8, 2816, 2112),
                **_LARGE,
                "num_global_key_value_heads": 2,
                "enable_moe_block": True,
                "num_experts": 128,
                "expert_intermediate_dim": 704,
                "num_experts_per_token": 8,
            },
            25_233_141_790,
        ),
        "gemma4_31b": Preset(
            {**BASE, **dims(60, 32, 16, 5376, 21504), **_LARGE, "num_global_key_value_heads": 4},
            30_697_345_340,
        ),
    },
    aliases={
        "gemma4_instruct_2b": "gemma4_2b",
        "gemma4_instruct_4b": "gemma4_4b",
        "gemma4_instruct_26b_a4b": "gemma4_26b_a4b",
        "gemma4_instruct_31b": "gemma4_31b",
    },
    vision_presets=frozenset(
        {
            "gemma4_2b",
            "gemma4_instruct_2b",
            "gemma4_4b",
            "gemma4_instruct_4b",
            "gemma4_26b_a4b",
            "gemma4_instruct_26b_a4b",
            "gemma4_31b",
            "gemma4_instruct_31b",
        }
    ),
    tiny_hf={
        # vision+text: the tiny dense text model below and a 2-layer vision tower (patches of 4,
        # pooled 2 x 2), the image placeholder ids inside the tiny vocabulary
        "gemma4_vision": {
            "config": "Gemma4Config",
            "model": "Gemma4ForConditionalGeneration",
            "max_soft_tokens": 16,  # a 32 px square: 8 x 8 patches of 4, pooled to 4 x 4
            "kwargs": {
                "text_config": {**_TINY_HF_BASE, "vocab_size": 352, "vocab_size_per_layer_input": 352,
                                "hidden_size_per_layer_input": 8, "num_kv_shared_layers": 2, "use_double_wide_mlp": True},
                "vision_config": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, head_dim=8, pooling_kernel_size=2, patch_size=4,
                                      position_embedding_size=64),
                "audio_config": None,
                "vocab_size": 352,  # for the tokenizer (256 bytes, the markers); ids from it (tests/hf_tiny.py)
            },
        },
        # dense: the on-device features (per-layer inputs, KV-shared layers with a double-wide
        # MLP) together with the 31B's K = V global layers and 16-wide global heads
        "gemma4": {
            "config": "Gemma4TextConfig",
            "model": "Gemma4ForCausalLM",
            "kwargs": {
                **_TINY_HF_BASE,
                "hidden_size_per_layer_input": 8,
                "num_kv_shared_layers": 2,
                "use_double_wide_mlp": True,
            },
        },
        # MoE as in 26B-A4B: a dense MLP beside 8 experts, top 2 (with per-layer inputs too, so
        # that one tiny model holds a variable of every default layout rule)
        "gemma4_moe": {
            "config": "Gemma4TextConfig",
            "model": "Gemma4ForCausalLM",
            "kwargs": {
                **_TINY_HF_BASE,
                "hidden_size_per_layer_input": 8,
                "enable_moe_block": True,
                "num_experts": 8,
                "moe_intermediate_size": 16,
                "top_k_experts": 2,
            },
        },
    },
)
