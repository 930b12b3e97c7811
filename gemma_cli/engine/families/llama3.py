"""Llama 3 (keras-hub `Llama3Backbone`; keras-hub's presets keep an untied output embedding).

Default layout: keras-hub's own `LlamaBackbone.get_layout_map`. Chat: Llama 3 uses header
tokens rather than Gemma's turns; chat data is not rendered for it yet (`chat=None`).
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

FAMILY = Family(
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
    # backbone only (no tokenizer preset yet): for engine tests that build the model directly
    tiny={"llama3": dict(num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32, intermediate_dim=64)},
)
