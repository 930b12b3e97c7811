"""Gemma 1 and Gemma 2 (keras-hub `GemmaBackbone`).

Architecture numbers are the published ones, converted the way keras-hub's
`utils/transformers/convert_gemma.py` does: keras-hub's `intermediate_dim` is twice HF's
`intermediate_size` (each gating kernel is intermediate/2 wide); `query_head_dim_normalize`
is `query_pre_attn_scalar == head_dim`. Default layout: keras-hub's own
`GemmaBackbone.get_layout_map`.
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.families import GEMMA_DIM_NAMES, Family, Preset, keras_hub_rules

GEMMA1_BASE: dict[str, Any] = {
    "vocabulary_size": 256000,
    "layer_norm_epsilon": 1e-06,
    "dropout": 0,
    "query_head_dim_normalize": True,
    "use_post_ffw_norm": False,
    "use_post_attention_norm": False,
    "final_logit_soft_cap": None,
    "attention_logit_soft_cap": None,
    "sliding_window_size": 4096,
    "use_sliding_window_attention": False,
}
GEMMA2_BASE: dict[str, Any] = {
    **GEMMA1_BASE,
    "use_post_ffw_norm": True,
    "use_post_attention_norm": True,
    "final_logit_soft_cap": 30.0,
    "attention_logit_soft_cap": 50.0,
    "sliding_window_size": 4096,
    "use_sliding_window_attention": True,
}


def dims(layers: int, heads: int, kv: int, hidden: int, inter: int, head_dim: int | None = None) -> dict[str, Any]:
    """The size keys every backbone config shares."""
    d: dict[str, Any] = {
        "num_layers": layers,
        "num_query_heads": heads,
        "num_key_value_heads": kv,
        "hidden_dim": hidden,
        "intermediate_dim": inter,
    }
    if head_dim is not None:
        d["head_dim"] = head_dim
    return d


_TINY = dict(num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32, intermediate_dim=128, head_dim=8)

FAMILY = Family(
    name="gemma",
    backbone_classes=("GemmaBackbone",),
    module="keras_hub.src.models.gemma.gemma_backbone",
    layer_name="gemma_backbone",
    layout_rules=keras_hub_rules("GemmaBackbone"),
    layout_source="keras-hub GemmaBackbone.get_layout_map",
    gguf_archs=("gemma", "gemma2"),
    gguf_module="gemma_gguf",
    dim_names=GEMMA_DIM_NAMES,
    hf_model_types=("gemma", "gemma2"),
    presets={
        # Gemma 1 (HF intermediate_size 16384 / 24576 → keras-hub 32768 / 49152)
        "gemma_2b_en": Preset({**GEMMA1_BASE, **dims(18, 8, 1, 2048, 32768, 256)}, 2_506_172_416),
        "gemma_7b_en": Preset({**GEMMA1_BASE, **dims(28, 16, 16, 3072, 49152, 256)}, 8_537_680_896),
        # Gemma 2
        "gemma2_2b_en": Preset({**GEMMA2_BASE, **dims(26, 8, 4, 2304, 18432, 256)}, 2_614_341_888),
        "gemma2_9b_en": Preset({**GEMMA2_BASE, **dims(42, 16, 8, 3584, 28672, 256)}, 9_241_705_984),
        # 27B: query_pre_attn_scalar 144 (= hidden / heads) != head_dim 128
        "gemma2_27b_en": Preset(
            {**GEMMA2_BASE, **dims(46, 32, 16, 4608, 73728, 128), "query_head_dim_normalize": False},
            27_227_128_320,
        ),
    },
    aliases={
        "gemma_instruct_2b_en": "gemma_2b_en",
        "gemma_1.1_instruct_2b_en": "gemma_2b_en",
        "code_gemma_2b_en": "gemma_2b_en",
        "code_gemma_1.1_2b_en": "gemma_2b_en",
        "gemma_instruct_7b_en": "gemma_7b_en",
        "gemma_1.1_instruct_7b_en": "gemma_7b_en",
        "code_gemma_7b_en": "gemma_7b_en",
        "code_gemma_instruct_7b_en": "gemma_7b_en",
        "code_gemma_1.1_instruct_7b_en": "gemma_7b_en",
        "gemma2_instruct_2b_en": "gemma2_2b_en",
        "gemma2_instruct_9b_en": "gemma2_9b_en",
        "gemma2_instruct_27b_en": "gemma2_27b_en",
        "shieldgemma_2b_en": "gemma2_2b_en",
        "shieldgemma_9b_en": "gemma2_9b_en",
        "shieldgemma_27b_en": "gemma2_27b_en",
    },
    tiny={
        "gemma": dict(_TINY),
        "gemma2": {
            **_TINY,
            "query_head_dim_normalize": True,
            "use_post_ffw_norm": True,
            "use_post_attention_norm": True,
            "final_logit_soft_cap": 30.0,
            "attention_logit_soft_cap": 50.0,
            "sliding_window_size": 16,
            "use_sliding_window_attention": True,
        },
    },
)
