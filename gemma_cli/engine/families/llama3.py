"""Llama 3 (keras-hub `Llama3Backbone`; keras-hub's presets keep an untied output embedding).

Default layout: keras-hub's own `LlamaBackbone.get_layout_map`. Chat: Llama 3 uses header
tokens rather than Gemma's turns; chat data is not rendered for it yet (`chat=None`), but an
export to `transformers` carries Llama 3's chat template.
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.families import Family, Preset, keras_hub_rules
from gemma_cli.engine.families.gemma import dims

BASE: dict[str, Any] = {
    "vocabulary_size": 128256,
    "rope_max_wavelength": 500000.0,
    "rope_position_scaling_factor": 1.0,
    "rope_frequency_adjustment_factor": None,
    "rope_low_freq_factor": None,
    "rope_high_freq_factor": None,
    "rope_pretraining_sequence_length": None,
    "layer_norm_epsilon": 1e-05,
    "dropout": 0,
    "tie_word_embeddings": False,
}

# Llama 3's instruct format: header-delimited roles, each message closed by <|eot_id|>
CHAT_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def fix_hf_kwargs(hf_config: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Backbone kwargs keras-hub 0.32's Llama 3 converter leaves out of a config.json.

    - `layer_norm_epsilon`: it ignores `rms_norm_eps` (Llama 3 uses 1e-5; keras-hub's default
      is 1e-6).
    - Llama 3.1+ RoPE scaling: it reads `rope_scaling`; transformers 5 writes the same settings
      as `rope_parameters` (`rope_type: llama3`), which it ignores.
    """
    out = dict(kwargs)
    if "rms_norm_eps" in hf_config:
        out["layer_norm_epsilon"] = float(hf_config["rms_norm_eps"])
    rope = hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {}
    if rope.get("rope_type") == "llama3" and out.get("rope_frequency_adjustment_factor") is None:
        out["rope_frequency_adjustment_factor"] = rope["factor"]
        out["rope_low_freq_factor"] = rope["low_freq_factor"]
        out["rope_high_freq_factor"] = rope["high_freq_factor"]
        out["rope_pretraining_sequence_length"] = rope["original_max_position_embeddings"]
    return out


FAMILY = Family(
    hf_lora_names={
        "q_proj": "query", "k_proj": "key", "v_proj": "value", "o_proj": "attention_output",
        "gate_proj": "feedforward_gate_dense", "up_proj": "feedforward_intermediate_dense",
        "down_proj": "feedforward_output_dense",
    },
    name="llama3",
    backbone_classes=("Llama3Backbone", "LlamaBackbone"),
    module="keras_hub.src.models.llama3.llama3_backbone",
    layer_name="llama3_backbone",
    layout_rules=keras_hub_rules("LlamaBackbone"),
    layout_source="keras-hub LlamaBackbone.get_layout_map",
    block_name="transformer_layer_{i}",
    dim_names=(
        ("token_embedding/embeddings", ("vocab", "hidden")),
        ("token_embedding/reverse_embeddings", ("hidden", "vocab")),
        (r".*self_attention/(query|key|value)/kernel", ("hidden", "heads", "head_dim")),
        (r".*self_attention/attention_output/kernel", ("heads", "head_dim", "hidden")),
        (r".*feedforward_(intermediate|gate)_dense/kernel", ("hidden", "ffw")),
        (r".*feedforward_output_dense/kernel", ("ffw", "hidden")),
        (r".*self_attention/(query|key|value)/lora_kernel_a", ("hidden", "heads", "rank")),
    ),
    chat=None,
    hf_model_types=("llama",),
    hf_tokenizer_files=("tokenizer.json",),
    hf_kwargs_fixup=fix_hf_kwargs,
    hf_chat_template=CHAT_TEMPLATE,
    presets={
        "llama3_8b_en": Preset({**BASE, **dims(32, 32, 8, 4096, 14336)}, 8_030_261_248),
        "llama3.2_1b": Preset(
            {
                **BASE,
                **dims(16, 32, 8, 2048, 8192),
                "rope_frequency_adjustment_factor": 32.0,
                "rope_low_freq_factor": 1.0,
                "rope_high_freq_factor": 4.0,
                "rope_pretraining_sequence_length": 8192,
            },
            1_498_482_688,
        ),
    },
    aliases={"llama3_instruct_8b_en": "llama3_8b_en", "llama3.2_instruct_1b": "llama3.2_1b"},
    tiny_hf={
        # untied output embedding (8B), Llama 3.1+ RoPE scaling, RMSNorm epsilon 1e-5
        "llama3": {
            "config": "LlamaConfig",
            "model": "LlamaForCausalLM",
            "kwargs": dict(
                vocab_size=320,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
                max_position_embeddings=256,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            ),
        },
    },
    # backbone only (no tokenizer preset yet): for engine tests that build the model directly
    tiny={"llama3": dict(num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32, intermediate_dim=64)},
)
