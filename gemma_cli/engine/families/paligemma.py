"""PaliGemma and PaliGemma 2 (keras-hub `PaliGemmaBackbone`): a SigLIP ViT whose image tokens
go in front of a Gemma (PaliGemma 1) or Gemma 2 (PaliGemma 2) decoder.

Unlike Gemma 3, the tower is part of every PaliGemma: presets are planned, loaded and trained
whole (`model.vision` says what of the tower trains). One image per example, always first:
the model sees `[image tokens] <bos> prefix \\n suffix <eos>`, the image tokens and the prefix
attend to each other both ways, the suffix causally (keras-hub's `response_mask`,
transformers' `token_type_ids`); the loss is on the suffix only (engine/data: records with a
`prefix`/`suffix` pair, or a one-turn chat whose user turn is the prefix).

Architecture numbers (PaliGemma 2): SigLIP So400m/14 (27 layers, width 1152, MLP 4304, 16
heads) at 224, 448 or 896 px, in front of Gemma 2 2B / 9B / 27B, keras-hub's vocabulary
257,152 (`image_token_index`; the 64 rows after it are padding in the Hugging Face files).
`params` are keras-hub's published counts (tower included; two corrected, see `PARAMS`).

Default layout (keras-hub has none for PaliGemma): the decoder as Gemma 3's rules; the tower
as Gemma 3's tower (each (in, out) matrix split over `batch` and `model`; width 1152, MLP
4304 and 16 heads divide by 8); the projector (`image_classifier`, ViT width → text width)
likewise.
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.families import GEMMA_DIM_NAMES, Family, Preset, gemma3, named_rules
from gemma_cli.engine.families.gemma import dims

VOCAB = 257152
SIGLIP = {"vit_patch_size": 14, "vit_num_heads": 16, "vit_hidden_dim": 1152, "vit_num_layers": 27,
          "vit_intermediate_dim": 4304, "vit_pooling": None, "vit_classifier_activation": None, "vit_name": None}
GEMMA2 = {"query_head_dim_normalize": True, "use_post_ffw_norm": True, "use_post_attention_norm": True,
          "attention_logit_soft_cap": 50.0, "final_logit_soft_cap": 30.0, "use_sliding_window_attention": True,
          "sliding_window_size": 4096, "layer_norm_epsilon": 1e-6, "dropout": 0}
TEXT = {
    "3b": dims(26, 8, 4, 2304, 18432, 256),
    "10b": dims(42, 16, 8, 3584, 28672, 256),
    "28b": {**dims(46, 32, 16, 4608, 73728, 128), "query_head_dim_normalize": False},  # scalar 144 = 4608 / 32
}
PARAMS = {  # keras-hub's published counts (pali_gemma_presets.py)
    ("3b", 224): 3_032_094_960, ("3b", 448): 3_032_979_696, ("3b", 896): 3_036_518_640,
    ("10b", 224): 9_662_409_456, ("10b", 448): 9_663_294_192, ("10b", 896): 9_666_833_136,
    # keras-hub lists 27,650,192,112 for 28b at every size; at 448 and 896 the tower's position
    # table has 768 and 3,840 more rows of 1152 (as the 3b and 10b counts show): counted here
    ("28b", 224): 27_650_192_112, ("28b", 448): 27_651_076_848, ("28b", 896): 27_654_615_792,
}


def _preset(size: str, px: int) -> Preset:
    return Preset({"vocabulary_size": VOCAB, "image_size": px, **SIGLIP, **GEMMA2, **TEXT[size]}, PARAMS[(size, px)])


# Gemma 3's text and SigLIP tower rules (the same layer names), then PaliGemma's projector
RULES = [*gemma3.TEXT_RULES, *gemma3.SIGLIP_RULES, ("image_classifier/kernel", ("batch", "model"))]

PRESETS = {f"pali_gemma2_{kind}_{size}_{px}": _preset(size, px)
           for kind in ("pt", "mix") for size in ("3b", "10b", "28b") for px in (224, 448, 896)
           if kind == "pt" or px != 896}

TINY_HF_KWARGS: dict[str, Any] = {
    # keras-hub embeds the first `image_token_index` (128) ids; HF pads its vocabulary to 136
    "image_token_index": 128,
    "vocab_size": 136,
    "projection_dim": 32,
    "hidden_size": 32,
    "text_config": {
        "model_type": "gemma2", "vocab_size": 136, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "query_pre_attn_scalar": 8, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
        # longer than the test's image + text, as PaliGemma 2's 4096 is longer than its inputs
        "sliding_window": 64,
    },
    "vision_config": {
        "model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "projection_dim": 32, "vision_use_head": False,
    },
}

def vision_lora_path(backbone: Any, layer: Any) -> str | None:
    """transformers 5's module path of a LoRA layer in PaliGemma's SigLIP tower: the same
    modules as Gemma 3's (`model.vision_tower.encoder.layers.N.self_attn.q_proj`), and the same
    keras-hub layers, held as `vit_encoder`."""
    from types import SimpleNamespace

    from gemma_cli.engine.families import gemma3

    return gemma3.vision_lora_path(SimpleNamespace(vision_encoder=backbone.vit_encoder), layer)


def _export(causal_lm: Any, out: Any) -> None:
    from gemma_cli.engine.families import paligemma_hf

    paligemma_hf.export(causal_lm, out)


FAMILY = Family(
    name="paligemma",
    backbone_classes=("PaliGemmaBackbone",),
    module="keras_hub.src.models.pali_gemma.pali_gemma_backbone",
    layer_name="pali_gemma_backbone",
    layout_rules=named_rules(RULES),
    layout_source="gemma built-in rules for PaliGemma",
    gate_divisor=2,
    dim_names=GEMMA_DIM_NAMES,
    gguf_hint="PaliGemma is not supported by gemma's GGUF export: export --format hf and convert that with "
              "llama.cpp's convert_hf_to_gguf.py (text) and its mmproj converter (tower)",
    hf_model_types=("paligemma",),
    hf_towers=("vision_encoder",),
    hf_converter="paligemma_hf",
    hf_export=_export,
    peft_export=True,
    hf_vision_lora_path=vision_lora_path,
    chat=None,  # not a chat model: records are prefix/suffix pairs (engine/data/render.py)
    presets=PRESETS,
    tiny_hf={
        "paligemma2": {
            "config": "PaliGemmaConfig",
            "model": "PaliGemmaForConditionalGeneration",
            "tokenizer_vocab": 128,
            "kwargs": TINY_HF_KWARGS,
        },
    },
)
