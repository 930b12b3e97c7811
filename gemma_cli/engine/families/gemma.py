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


def _np(variable: Any) -> Any:
    import keras
    import numpy as np

    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def hf_weights(backbone: Any) -> dict[str, Any]:
    """The `transformers` Gemma / Gemma 2 state dict of a `GemmaBackbone` (float32 numpy).

    The exact inverse of keras-hub's importer (`utils/transformers/convert_gemma.py`).
    keras-hub 0.32's own exporter keeps only the first key/value head (`kernel[0]`, right for
    gemma_2b's single KV head only) and writes Gemma 2's four norms under Gemma 1's names.
    """
    gemma2 = backbone.use_post_attention_norm
    out: dict[str, Any] = {"model.embed_tokens.weight": _np(backbone.get_layer("token_embedding").embeddings)}
    for i in range(backbone.num_layers):
        blk = backbone.get_layer(f"decoder_block_{i}")
        pre = f"model.layers.{i}."
        att = blk.attention
        for name, dense in (("q", att.query_dense), ("k", att.key_dense), ("v", att.value_dense)):
            k = _np(dense.kernel)  # (heads, hidden, head_dim) → (heads * head_dim, hidden)
            out[f"{pre}self_attn.{name}_proj.weight"] = k.transpose(0, 2, 1).reshape(-1, k.shape[1])
        o = _np(att.output_dense.kernel)  # (heads, head_dim, hidden) → (hidden, heads * head_dim)
        out[f"{pre}self_attn.o_proj.weight"] = o.reshape(-1, o.shape[2]).T
        out[f"{pre}mlp.gate_proj.weight"] = _np(blk.gating_ffw.kernel).T
        out[f"{pre}mlp.up_proj.weight"] = _np(blk.gating_ffw_2.kernel).T
        out[f"{pre}mlp.down_proj.weight"] = _np(blk.ffw_linear.kernel).T
        out[f"{pre}input_layernorm.weight"] = _np(blk.pre_attention_norm.scale)
        if gemma2:
            out[f"{pre}post_attention_layernorm.weight"] = _np(blk.post_attention_norm.scale)
            out[f"{pre}pre_feedforward_layernorm.weight"] = _np(blk.pre_ffw_norm.scale)
            out[f"{pre}post_feedforward_layernorm.weight"] = _np(blk.post_ffw_norm.scale)
        else:
            out[f"{pre}post_attention_layernorm.weight"] = _np(blk.pre_ffw_norm.scale)
    out["model.norm.weight"] = _np(backbone.get_layer("final_normalization").scale)
    return {k: v.copy() for k, v in out.items()}  # contiguous, for safetensors


def hf_config(backbone: Any, config: dict[str, Any], tokenizer_config: dict[str, Any]) -> None:
    """config.json for `transformers` Gemma / Gemma 2 (keras-hub 0.32 writes a Gemma 1 config
    for both, without architectures, soft-caps, sliding window, query scaling or norm eps)."""
    del tokenizer_config
    gemma2 = backbone.use_post_attention_norm
    keep = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    config.clear()
    config.update(
        {
            "architectures": ["Gemma2ForCausalLM" if gemma2 else "GemmaForCausalLM"],
            "model_type": "gemma2" if gemma2 else "gemma",
            "vocab_size": backbone.vocabulary_size,
            "hidden_size": backbone.hidden_dim,
            "intermediate_size": backbone.intermediate_dim // 2,
            "num_hidden_layers": backbone.num_layers,
            "num_attention_heads": backbone.num_query_heads,
            "num_key_value_heads": backbone.num_key_value_heads,
            "head_dim": backbone.head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 8192,
            "rms_norm_eps": backbone.layer_norm_epsilon,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "tie_word_embeddings": True,
            "attention_bias": False,
            "torch_dtype": backbone.dtype_policy.compute_dtype,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 1,
            **keep,
        }
    )
    if gemma2:
        config.update(
            {
                "query_pre_attn_scalar": backbone.head_dim
                if backbone.query_head_dim_normalize
                else backbone.hidden_dim // backbone.num_query_heads,
                "attn_logit_softcapping": backbone.attention_logit_soft_cap,
                "final_logit_softcapping": backbone.final_logit_soft_cap,
                "sliding_window": backbone.sliding_window_size,
                # keras-hub: layer i slides when i is even
                "layer_types": [
                    "sliding_attention" if backbone.use_sliding_window_attention and i % 2 == 0 else "full_attention"
                    for i in range(backbone.num_layers)
                ],
            }
        )

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


_TINY_HF = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8,
)

_TINY = dict(num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32, intermediate_dim=128, head_dim=8)

FAMILY = Family(
    peft_export=True,
    gate_divisor=2,
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
    hf_export_fixup=hf_config,
    hf_export_weights=hf_weights,
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
    tiny_hf={
        "gemma": {"config": "GemmaConfig", "model": "GemmaForCausalLM", "kwargs": dict(_TINY_HF)},
        # Gemma 2: logit soft-caps (small enough to bite on a tiny model), local layers with a
        # 4-token window alternating with global ones, query scaled by head_dim
        "gemma2": {
            "config": "Gemma2Config",
            "model": "Gemma2ForCausalLM",
            "kwargs": {
                **_TINY_HF,
                "query_pre_attn_scalar": 8,
                "attn_logit_softcapping": 5.0,
                "final_logit_softcapping": 3.0,
                "sliding_window": 4,
            },
        },
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
