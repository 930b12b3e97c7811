"""Gemma 3 (keras-hub `Gemma3Backbone`), text backbones and the vision tower's layout.

`intermediate_dim` is HF's `intermediate_size` as is; 270m and 1b use a 512-token window and
no RoPE scaling, 4b and up scale global RoPE by 8. The 4b/12b/27b presets are vision+text
models: planned with their tower (`tower()`, parameter counts equal to keras-hub's published
ones), as are local presets and Hugging Face checkpoints that carry it; the `*_text` presets
are the text backbones alone. The tower is laid out by the rules below (`model.vision` says
what of it trains).

keras-hub ships no `get_layout_map` for Gemma 3; the default rules below have the shape
keras-hub uses for Gemma 1/2: the big matrices split over the model axis and over the batch
axis (FSDP-style); norms replicated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gemma_cli.engine.families import GEMMA_CHAT, GEMMA_DIM_NAMES, Family, Preset, named_rules
from gemma_cli.engine.families.gemma import dims

BASE: dict[str, Any] = {
    "vocabulary_size": 262144,
    "image_size": 896,
    "query_head_dim_normalize": True,
    "use_query_key_norm": True,
    "use_post_ffw_norm": True,
    "use_post_attention_norm": True,
    "attention_logit_soft_cap": None,
    "final_logit_soft_cap": None,
    "use_sliding_window_attention": True,
    "sliding_window_size": 1024,
    "local_rope_scaling_factor": 1.0,
    "global_rope_scaling_factor": 8.0,
    "vision_encoder": None,
    "use_bidirectional_attention": False,
    "layer_norm_epsilon": 1e-06,
    "dropout": 0,
    "is_embedding_model": False,
    "pooling_intermediate_dim": None,
    "embedding_dim": None,
}
_SMALL = {"sliding_window_size": 512, "global_rope_scaling_factor": 1.0}


def tower(output_dim: int) -> dict[str, Any]:
    """The serialized vision tower of the Gemma 3 vision presets (4B, 12B, 27B): SigLIP So400m
    at 896 pixels in 14-pixel patches (4096), pooled 4×4 to 256 image tokens, projected to the
    text width. (keras-hub's presets keep the 262,144-token vocabulary: the counts match its
    published ones exactly.)"""
    return {
        "module": "keras_hub.src.models.gemma3.gemma3_vision_encoder",
        "class_name": "Gemma3VisionEncoder",
        "config": {"name": "vision_encoder", "trainable": True, "image_size": 896, "patch_size": 14, "num_heads": 16,
                   "hidden_dim": 1152, "num_layers": 27, "intermediate_dim": 4304, "output_dim": output_dim,
                   "pool_size": 4, "layer_norm_epsilon": 1e-6},
        "registered_name": "keras_hub>Gemma3VisionEncoder",
    }


TEXT_RULES = [
    ("token_embedding/embeddings", ("model", "batch")),
    ("decoder_block.*attention.*(query|key|value).kernel", ("model", "batch", None)),
    ("decoder_block.*attention_output.kernel", ("model", None, "batch")),
    ("decoder_block.*ffw_gating.*kernel", ("batch", "model")),
    ("decoder_block.*ffw_linear.kernel", ("model", "batch")),
]
SIGLIP_RULES = [
    # The vision tower (Gemma3VisionEncoder: a SigLIP ViT, then the projector into the text
    # width). keras-hub has no layout for it (keras-hub #2828); these put each matrix's input
    # dimension on one axis and its output on the other, as the text MLP: (in, out) kernels
    # of q/k/v and mlp_dense_1 and the projector split (batch, model), out_proj and
    # mlp_dense_2 (model, batch). Gemma 3's tower: width 1152, MLP 4304, 16 heads, all
    # divisible by 8; conv, position embeddings, norms and biases are replicated.
    ("image_encoder/.*(query_proj|key_proj|value_proj)/kernel", ("batch", "model")),
    ("image_encoder/.*out_proj/kernel", ("model", "batch")),
    ("image_encoder/.*mlp_dense_1/kernel", ("batch", "model")),
    ("image_encoder/.*mlp_dense_2/kernel", ("model", "batch")),
]
RULES = [*TEXT_RULES, *SIGLIP_RULES, ("vision_output_encoder/vision_input_projection/kernel", ("batch", "model"))]

def hf_kwargs_fixup(cfg: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """keras-hub's converter builds the vision tower with `pool_size=4` (what 896-pixel images in
    14-pixel patches pooled to 256 tokens need); a checkpoint's own `mm_tokens_per_image` says
    the pooling: patches per side // tokens per side."""
    enc = kwargs.get("vision_encoder")
    vc = cfg.get("vision_config")
    if enc is None or not isinstance(vc, dict) or not cfg.get("mm_tokens_per_image"):
        return kwargs
    side = round(int(cfg["mm_tokens_per_image"]) ** 0.5)
    pool = (int(vc["image_size"]) // int(vc["patch_size"])) // side
    if pool == enc.pool_size:
        return kwargs
    from keras_hub.models import Gemma3VisionEncoder

    conf = {k: v for k, v in enc.get_config().items() if k not in ("name", "trainable", "dtype")}
    return {**kwargs, "vision_encoder": Gemma3VisionEncoder(**{**conf, "pool_size": pool})}


# Gemma 3's turns; an image part of a message is `<start_of_image>` in the exported template,
# which transformers' Gemma3Processor expands to `\n\n<start_of_image>` + soft tokens +
# `<end_of_image>\n\n`, what our renderer writes (engine/data/tokenize.py)
CHAT = dataclasses.replace(GEMMA_CHAT, image_token="<start_of_image>")


def export_vision(causal_lm: Any, config: dict[str, Any], tok_cfg: dict[str, Any]) -> None:
    """The image settings of an exported vision+text config.json where transformers reads them.

    keras-hub 0.32 writes `mm_tokens_per_image` and the image token ids inside `vision_config`
    (transformers reads them at the top level, so an export of a tower with other than 256
    tokens per image fails in transformers' pooling) and names `<image_soft_token>` (id 262144)
    whatever the tokenizer holds. Here: the tower's tokens per image, and the ids and text of
    the tokenizer's own `<start_of_image>`, `<img>` and `<end_of_image>`.
    """
    enc = getattr(causal_lm.backbone, "vision_encoder", None)
    pre = getattr(causal_lm, "preprocessor", None)
    tok = getattr(pre, "tokenizer", None) or getattr(causal_lm, "_gemma_tokenizer", None)
    if enc is None or tok is None or not getattr(tok, "has_vision_tokens", False):
        return
    vc = config.setdefault("vision_config", {})
    for k in ("boi_token_index", "eoi_token_index", "image_token_index", "mm_tokens_per_image"):
        vc.pop(k, None)
    config["mm_tokens_per_image"] = int(enc.num_vision_tokens_per_image)
    config["boi_token_index"] = int(tok.start_of_image_token_id)
    config["eoi_token_index"] = int(tok.end_of_image_token_id)
    config["image_token_index"] = int(tok.image_placeholder_id)
    names = {"boi_token": tok.start_of_image_token, "eoi_token": tok.end_of_image_token, "image_token": tok.image_placeholder}
    tok_cfg.update(names)
    tok_cfg["extra_special_tokens"] = dict(names)


# keras-hub `Gemma3VisionEncoder` layer → transformers' SigLIP module in an encoder layer
VISION_MODULES = {"query_proj": "self_attn.q_proj", "key_proj": "self_attn.k_proj", "value_proj": "self_attn.v_proj",
                  "out_proj": "self_attn.out_proj", "mlp_dense_1": "mlp.fc1", "mlp_dense_2": "mlp.fc2"}


def vision_lora_path(backbone: Any, layer: Any) -> str | None:
    """transformers 5's module path of a LoRA layer in the tower of a
    `Gemma3ForConditionalGeneration` (`model.vision_tower.encoder.layers.N.self_attn.q_proj`)."""
    for i, blk in enumerate(backbone.vision_encoder.get_layer("image_encoder").resblocks):
        owners = {id(getattr(blk.attn, n)): n for n in ("query_proj", "key_proj", "value_proj", "out_proj")}
        owners |= {id(blk.mlp_dense_1): "mlp_dense_1", id(blk.mlp_dense_2): "mlp_dense_2"}
        if id(layer) in owners:
            return f"model.vision_tower.encoder.layers.{i}.{VISION_MODULES[owners[id(layer)]]}"
    return None


FAMILY = Family(
    peft_export=True,
    chat=CHAT,
    hf_export_vision=export_vision,
    hf_vision_lora_path=vision_lora_path,
    name="gemma3",
    backbone_classes=("Gemma3Backbone",),
    module="keras_hub.src.models.gemma3.gemma3_backbone",
    layer_name="gemma3_backbone",
    layout_rules=named_rules(RULES),
    layout_source="gemma built-in rules for Gemma 3",
    gguf_archs=("gemma3",),
    gguf_module="gemma_gguf",
    dim_names=GEMMA_DIM_NAMES,
    hf_model_types=("gemma3", "gemma3_text"),
    hf_towers=("vision_encoder",),
    hf_kwargs_fixup=hf_kwargs_fixup,
    presets={
        "gemma3_270m": Preset({**BASE, **dims(18, 4, 1, 640, 2048, 256), **_SMALL}, 268_098_176),
        "gemma3_1b": Preset({**BASE, **dims(26, 4, 1, 1152, 6912, 256), **_SMALL}, 999_885_952),
        "gemma3_4b_text": Preset({**BASE, **dims(34, 8, 4, 2560, 10240, 256)}, 3_880_099_328),
        "gemma3_12b_text": Preset({**BASE, **dims(48, 16, 8, 3840, 15360, 256)}, 11_765_788_416),
        # 27B: query_pre_attn_scalar 168 (= hidden / heads) != head_dim 128
        "gemma3_27b_text": Preset(
            {**BASE, **dims(62, 32, 16, 5376, 21504, 128), "query_head_dim_normalize": False}, 27_009_002_240
        ),
        # the vision+text presets: the text backbones above with the tower (keras-hub's published counts)
        "gemma3_4b": Preset({**BASE, **dims(34, 8, 4, 2560, 10240, 256), "vision_encoder": tower(2560)},
                            4_299_915_632),
        "gemma3_12b": Preset({**BASE, **dims(48, 16, 8, 3840, 15360, 256), "vision_encoder": tower(3840)},
                             12_187_079_280),
        "gemma3_27b": Preset(
            {**BASE, **dims(62, 32, 16, 5376, 21504, 128), "query_head_dim_normalize": False,
             "vision_encoder": tower(5376)}, 27_432_062_576
        ),
    },
    aliases={
        "gemma3_instruct_270m": "gemma3_270m",
        "function_gemma_instruct_270m": "gemma3_270m",
        "gemma3_instruct_1b": "gemma3_1b",
        "gemma3_instruct_4b_text": "gemma3_4b_text",
        "gemma3_instruct_12b_text": "gemma3_12b_text",
        "gemma3_instruct_27b_text": "gemma3_27b_text",
        "gemma3_instruct_4b": "gemma3_4b",
        "gemma3_instruct_12b": "gemma3_12b",
        "gemma3_instruct_27b": "gemma3_27b",
    },
    vision_presets=frozenset(
        {"gemma3_4b", "gemma3_instruct_4b", "gemma3_12b", "gemma3_instruct_12b", "gemma3_27b", "gemma3_instruct_27b"}
    ),
    hf_tokenizer_files=("tokenizer.model", "tokenizer.json"),
    tiny_hf={
        # 6 layers so that layer 5 is global (keras-hub: every 6th), with the 4B+ global RoPE
        # scaling (linear, 8) and a 4-token local window
        "gemma3": {
            "config": "Gemma3TextConfig",
            "model": "Gemma3ForCausalLM",
            "kwargs": dict(
                vocab_size=128,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=6,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                query_pre_attn_scalar=8,
                sliding_window=4,
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                },
            ),
        },
    },
    tiny_hf_vision={
        # a Gemma3ForConditionalGeneration: the text model above (6 layers, global RoPE scaling)
        # and a SigLIP tower of 16×16 images in 4×4 patches, pooled to 4 image tokens; the image
        # token ids are the tiny vocabulary's `<img>`, `<start_of_image>`, `<end_of_image>`
        "gemma3_vision": {
            "config": "Gemma3Config",
            "model": "Gemma3ForConditionalGeneration",
            "processor": "Gemma3Processor",
            "image_processor": "Gemma3ImageProcessorPil",
            "image_tokens": {"image_token_index": "<img>", "boi_token_index": "<start_of_image>",
                             "eoi_token_index": "<end_of_image>"},
            "tokenizer_tokens": {"image_token": "<img>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
            "kwargs": dict(
                text_config=dict(
                    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                    rope_parameters={
                        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                    },
                ),
                vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=16, patch_size=4, layer_norm_eps=1e-6, vision_use_head=False),
                mm_tokens_per_image=4,
            ),
        },
    },
    tiny={
        "gemma3": dict(
            num_layers=2,
            num_query_heads=4,
            num_key_value_heads=2,
            hidden_dim=32,
            intermediate_dim=64,
            head_dim=8,
            image_size=896,
            query_head_dim_normalize=True,
            use_query_key_norm=True,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            sliding_window_size=16,
            use_sliding_window_attention=True,
            vision_encoder=None,
        ),
    },
)
