"""Architectures of the well-known presets, shipped with gemma: plan any of them offline.

`get(preset)` returns the serialized keras-hub backbone config of a known preset, the same
dict a preset's `config.json` holds (`{"module", "class_name", "config", "registered_name"}`),
so that `keras.saving.deserialize_keras_object` rebuilds the backbone (without weights when
traced under `jax.eval_shape`). No keras import here: this module is plain data.

The numbers are the published ones (keras-hub's Kaggle presets / the Hugging Face configs,
converted the way `keras_hub/src/utils/transformers/convert_*.py` does: keras-hub's Gemma 1/2
`intermediate_dim` is twice HF's `intermediate_size` (the gating kernels are intermediate/2
wide), Gemma 3's is HF's as is; `query_head_dim_normalize` is `query_pre_attn_scalar ==
head_dim`). Every entry is checked by the tests against the
parameter count keras-hub publishes for the preset.

Gemma 3 4B/12B/27B are vision+text models; here they are the text-only backbone
(`vision_encoder: None`, as the `*_text` presets), which is what fine-tuning shards. The
vision tower (~0.42B parameters) is left out of the plan.

Example:
    >>> get("gemma_7b_en")["config"]["num_layers"]
    28
    >>> get("kaggle://keras/gemma/keras/gemma_7b_en/2") == get("gemma_7b_en")
    True
"""

from __future__ import annotations

import copy
import re
from typing import Any

_GEMMA = ("keras_hub.src.models.gemma.gemma_backbone", "GemmaBackbone")
_GEMMA3 = ("keras_hub.src.models.gemma3.gemma3_backbone", "Gemma3Backbone")
_LLAMA3 = ("keras_hub.src.models.llama3.llama3_backbone", "Llama3Backbone")

_GEMMA1_BASE: dict[str, Any] = {
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
_GEMMA2_BASE: dict[str, Any] = {
    **_GEMMA1_BASE,
    "use_post_ffw_norm": True,
    "use_post_attention_norm": True,
    "final_logit_soft_cap": 30.0,
    "attention_logit_soft_cap": 50.0,
    "sliding_window_size": 4096,
    "use_sliding_window_attention": True,
}
_GEMMA3_BASE: dict[str, Any] = {
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
_LLAMA3_BASE: dict[str, Any] = {
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


def _dims(
    layers: int, heads: int, kv: int, hidden: int, inter: int, head_dim: int | None = None
) -> dict[str, Any]:
    d = {
        "num_layers": layers,
        "num_query_heads": heads,
        "num_key_value_heads": kv,
        "hidden_dim": hidden,
        "intermediate_dim": inter,
    }
    if head_dim is not None:
        d["head_dim"] = head_dim
    return d


# name → (family (module, class), backbone name, config, published parameter count)
_TABLE: dict[str, tuple[tuple[str, str], str, dict[str, Any], int]] = {
    # Gemma 1 (HF intermediate_size 16384 / 24576 → keras-hub 32768 / 49152)
    "gemma_2b_en": (
        _GEMMA,
        "gemma_backbone",
        {**_GEMMA1_BASE, **_dims(18, 8, 1, 2048, 32768, 256)},
        2_506_172_416,
    ),
    "gemma_7b_en": (
        _GEMMA,
        "gemma_backbone",
        {**_GEMMA1_BASE, **_dims(28, 16, 16, 3072, 49152, 256)},
        8_537_680_896,
    ),
    # Gemma 2
    "gemma2_2b_en": (
        _GEMMA,
        "gemma_backbone",
        {**_GEMMA2_BASE, **_dims(26, 8, 4, 2304, 18432, 256)},
        2_614_341_888,
    ),
    "gemma2_9b_en": (
        _GEMMA,
        "gemma_backbone",
        {**_GEMMA2_BASE, **_dims(42, 16, 8, 3584, 28672, 256)},
        9_241_705_984,
    ),
    # 27B: query_pre_attn_scalar 144 (= hidden / heads) != head_dim 128
    "gemma2_27b_en": (
        _GEMMA,
        "gemma_backbone",
        {**_GEMMA2_BASE, **_dims(46, 32, 16, 4608, 73728, 128), "query_head_dim_normalize": False},
        27_227_128_320,
    ),
    # Gemma 3 (intermediate_dim = HF intermediate_size; 270m, 1b: window 512, no rope scaling)
    "gemma3_270m": (
        _GEMMA3,
        "gemma3_backbone",
        {
            **_GEMMA3_BASE,
            **_dims(18, 4, 1, 640, 2048, 256),
            "sliding_window_size": 512,
            "global_rope_scaling_factor": 1.0,
        },
        268_098_176,
    ),
    "gemma3_1b": (
        _GEMMA3,
        "gemma3_backbone",
        {
            **_GEMMA3_BASE,
            **_dims(26, 4, 1, 1152, 6912, 256),
            "sliding_window_size": 512,
            "global_rope_scaling_factor": 1.0,
        },
        999_885_952,
    ),
    "gemma3_4b_text": (
        _GEMMA3,
        "gemma3_backbone",
        {**_GEMMA3_BASE, **_dims(34, 8, 4, 2560, 10240, 256)},
        3_880_099_328,
    ),
    "gemma3_12b_text": (
        _GEMMA3,
        "gemma3_backbone",
        {**_GEMMA3_BASE, **_dims(48, 16, 8, 3840, 15360, 256)},
        11_765_788_416,
    ),
    # 27B: query_pre_attn_scalar 168 (= hidden / heads) != head_dim 128
    "gemma3_27b_text": (
        _GEMMA3,
        "gemma3_backbone",
        {**_GEMMA3_BASE, **_dims(62, 32, 16, 5376, 21504, 128), "query_head_dim_normalize": False},
        27_009_002_240,
    ),
    # Llama 3 (keras-hub's presets keep a separate output embedding: untied)
    "llama3_8b_en": (
        _LLAMA3,
        "llama3_backbone",
        {**_LLAMA3_BASE, **_dims(32, 32, 8, 4096, 14336)},
        8_030_261_248,
    ),
    "llama3.2_1b": (
        _LLAMA3,
        "llama3_backbone",
        {
            **_LLAMA3_BASE,
            **_dims(16, 32, 8, 2048, 8192),
            "rope_frequency_adjustment_factor": 32.0,
            "rope_low_freq_factor": 1.0,
            "rope_high_freq_factor": 4.0,
            "rope_pretraining_sequence_length": 8192,
        },
        1_498_482_688,
    ),
}

# Other names with the same architecture as an entry of the table.
_ALIASES: dict[str, str] = {
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
    "gemma3_instruct_270m": "gemma3_270m",
    "function_gemma_instruct_270m": "gemma3_270m",
    "gemma3_instruct_1b": "gemma3_1b",
    "gemma3_instruct_4b_text": "gemma3_4b_text",
    "gemma3_instruct_12b_text": "gemma3_12b_text",
    "gemma3_instruct_27b_text": "gemma3_27b_text",
    # vision+text presets: planned as their text backbone (see the module docstring)
    "gemma3_4b": "gemma3_4b_text",
    "gemma3_instruct_4b": "gemma3_4b_text",
    "gemma3_12b": "gemma3_12b_text",
    "gemma3_instruct_12b": "gemma3_12b_text",
    "gemma3_27b": "gemma3_27b_text",
    "gemma3_instruct_27b": "gemma3_27b_text",
    "llama3_instruct_8b_en": "llama3_8b_en",
    "llama3.2_instruct_1b": "llama3.2_1b",
}

# Presets with a vision tower that the plan leaves out.
VISION_PRESETS = frozenset(
    {
        "gemma3_4b",
        "gemma3_instruct_4b",
        "gemma3_12b",
        "gemma3_instruct_12b",
        "gemma3_27b",
        "gemma3_instruct_27b",
    }
)

_KAGGLE = re.compile(
    r"kaggle://keras/[A-Za-z0-9_.\-]+/keras/(?P<name>[A-Za-z0-9_.\-]+?)(?:/\d+)?/?"
)


def canonical(preset: str) -> str | None:
    """The known name behind `preset` (`kaggle://keras/gemma/keras/gemma_7b_en/2` → `gemma_7b_en`)."""
    name = preset.strip()
    m = _KAGGLE.fullmatch(name)
    if m:
        name = m.group("name")
    if name in _TABLE or name in _ALIASES:
        return name
    return None


def names() -> list[str]:
    """Every preset name `get` knows (bare names; kaggle:// forms map onto them)."""
    return sorted({*_TABLE, *_ALIASES})


def is_vision(preset: str) -> bool:
    return canonical(preset) in VISION_PRESETS


def published_params(preset: str) -> int | None:
    """The parameter count keras-hub publishes for the (text) backbone of `preset`."""
    name = canonical(preset)
    if name is None:
        return None
    return _TABLE[_ALIASES.get(name, name)][3]


def get(preset: str) -> dict[str, Any] | None:
    """The serialized backbone config of a known preset, or None.

    Args:
        preset: str. A keras-hub preset name (`gemma_7b_en`) or its
            `kaggle://keras/<model>/keras/<name>[/<version>]` handle.

    Returns:
        dict | None. `{"module", "class_name", "config", "registered_name"}` as in the
        preset's `config.json` (bfloat16 dtype policy), a fresh copy each call.
    """
    name = canonical(preset)
    if name is None:
        return None
    (module, cls), layer_name, config, _ = _TABLE[_ALIASES.get(name, name)]
    inner: dict[str, Any] = {
        "name": layer_name,
        "trainable": True,
        "dtype": {
            "module": "keras",
            "class_name": "DTypePolicy",
            "config": {"name": "bfloat16"},
            "registered_name": None,
        },
    }
    inner.update(copy.deepcopy(config))
    return {
        "module": module,
        "class_name": cls,
        "config": inner,
        "registered_name": f"keras_hub>{cls}",
    }
