"""PaliGemma (1 and 2) ↔ Hugging Face `PaliGemmaForConditionalGeneration`: one weight table,
read both ways (loading a checkpoint, `gemma export --format hf`).

keras-hub 0.32's own reader (`keras_hub/src/utils/transformers/convert_pali_gemma.py`) is
PaliGemma 1 only, and wrong beyond the published sizes:

- `head_dim` is read from `text_config.num_image_tokens` (256 for the 224px checkpoints, which
  is also Gemma 2B's head dim: right by coincidence only);
- Gemma 2 text settings (PaliGemma 2) are not read: post-attention/post-FFW norms, logit
  soft-caps, the sliding window, `query_pre_attn_scalar`, and the two extra norms per layer
  are not ported;
- it finds weights by keras-hub's single cached key prefix, which cannot serve the three
  prefixes of one transformers 5 checkpoint (`language_model.model.`, `vision_tower.`,
  `multi_modal_projector.`; older files: `vision_tower.vision_model.`, newer in-memory names:
  `model.language_model.` ...).

This module is that reader (`convert_backbone_config`, `convert_weights`, `convert_tokenizer`,
the interface of keras-hub's converter modules, named by `Family.hf_converter`) and its exact
inverse (`hf_weights`, `hf_config`) for export. keras-hub's text vocabulary is
`image_token_index` long (the image token and the padding rows after it are not embedded);
export pads the embedding back to `text_config.vocab_size` with zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# Where transformers (4.x files, 5.x files, 5.x module names) keeps each part of the model.
TEXT = ("language_model.model.", "model.language_model.", "language_model.")
VISION = ("vision_tower.vision_model.", "vision_tower.", "model.vision_tower.vision_model.", "model.vision_tower.")
PROJ = ("multi_modal_projector.", "model.multi_modal_projector.")


def convert_backbone_config(hf: dict[str, Any]) -> dict[str, Any]:
    """`PaliGemmaBackbone` kwargs from a `paligemma` config.json (PaliGemma 1 and 2)."""
    text, vis = hf["text_config"], hf["vision_config"]
    head_dim = int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"])
    kw: dict[str, Any] = {
        "vocabulary_size": int(hf["image_token_index"]),
        "image_size": int(vis.get("image_size", 224)),
        "num_layers": int(text["num_hidden_layers"]),
        "num_query_heads": int(text["num_attention_heads"]),
        "num_key_value_heads": int(text["num_key_value_heads"]),
        "hidden_dim": int(text["hidden_size"]),
        "intermediate_dim": int(text["intermediate_size"]) * 2,  # keras-hub Gemma: both gates
        "head_dim": head_dim,
        "vit_patch_size": int(vis["patch_size"]),
        "vit_num_heads": int(vis["num_attention_heads"]),
        "vit_hidden_dim": int(vis["hidden_size"]),
        "vit_num_layers": int(vis["num_hidden_layers"]),
        "vit_intermediate_dim": int(vis["intermediate_size"]),
        "layer_norm_epsilon": float(text.get("rms_norm_eps", 1e-6)),
    }
    if text.get("model_type") == "gemma2":
        window = text.get("sliding_window")
        kw.update({
            "query_head_dim_normalize": int(text.get("query_pre_attn_scalar", head_dim)) == head_dim,
            "use_post_ffw_norm": True,
            "use_post_attention_norm": True,
            "attention_logit_soft_cap": text.get("attn_logit_softcapping"),
            "final_logit_soft_cap": text.get("final_logit_softcapping"),
            "use_sliding_window_attention": window is not None,
            "sliding_window_size": int(window or 4096),
        })
    return kw


def _pairs(backbone: Any) -> Iterator[tuple[Any, tuple[str, ...], str, Callable[[Any], Any], Callable[[Any, tuple], Any]]]:
    """(keras variable, HF prefixes, HF key after the prefix, keras → HF, HF → keras)."""
    import numpy as np

    same = (lambda x: x, lambda x, s: x)
    dense = (lambda x: x.T, lambda x, s: x.T)

    def qkv_to_hf(k: Any) -> Any:  # (heads, hidden, head_dim) → (heads * head_dim, hidden)
        return k.transpose(0, 2, 1).reshape(-1, k.shape[1])

    def qkv_to_keras(x: Any, s: tuple) -> Any:
        return x.reshape(s[0], s[2], s[1]).transpose(0, 2, 1)

    def o_to_hf(k: Any) -> Any:  # (heads, head_dim, hidden) → (hidden, heads * head_dim)
        return k.reshape(-1, k.shape[2]).T

    def o_to_keras(x: Any, s: tuple) -> Any:
        return x.T.reshape(s[0], s[1], s[2])

    vit = backbone.vit_encoder
    enc = vit.get_layer("image_encoder")
    emb = enc.vision_embeddings
    yield emb.patch_embedding.kernel, VISION, "embeddings.patch_embedding.weight", \
        (lambda k: k.transpose(3, 2, 0, 1)), (lambda x, s: x.transpose(2, 3, 1, 0))
    yield emb.patch_embedding.bias, VISION, "embeddings.patch_embedding.bias", *same
    yield emb.position_embedding.embeddings, VISION, "embeddings.position_embedding.weight", *same
    yield enc.encoder_layer_norm.gamma, VISION, "post_layernorm.weight", *same
    yield enc.encoder_layer_norm.beta, VISION, "post_layernorm.bias", *same
    for i, blk in enumerate(enc.resblocks):
        pre = f"encoder.layers.{i}."
        for ln, hf in (("layer_norm_1", "layer_norm1"), ("layer_norm_2", "layer_norm2")):
            yield getattr(blk, ln).gamma, VISION, f"{pre}{hf}.weight", *same
            yield getattr(blk, ln).beta, VISION, f"{pre}{hf}.bias", *same
        for layer, hf in (("mlp_dense_1", "mlp.fc1"), ("mlp_dense_2", "mlp.fc2")):
            yield getattr(blk, layer).kernel, VISION, f"{pre}{hf}.weight", *dense
            yield getattr(blk, layer).bias, VISION, f"{pre}{hf}.bias", *same
        for layer, hf in (("query_proj", "q_proj"), ("key_proj", "k_proj"), ("value_proj", "v_proj"), ("out_proj", "out_proj")):
            d = getattr(blk.attn, layer)
            yield d.kernel, VISION, f"{pre}self_attn.{hf}.weight", *dense
            yield d.bias, VISION, f"{pre}self_attn.{hf}.bias", *same
    head = vit.get_layer("image_classifier")
    yield head.kernel, PROJ, "linear.weight", *dense
    yield head.bias, PROJ, "linear.bias", *same
    gemma2 = backbone.use_post_attention_norm
    for i in range(backbone.num_layers):
        blk = backbone.get_layer(f"decoder_block_{i}")
        pre = f"layers.{i}."
        att = blk.attention
        for d, hf in ((att.query_dense, "q_proj"), (att.key_dense, "k_proj"), (att.value_dense, "v_proj")):
            yield d.kernel, TEXT, f"{pre}self_attn.{hf}.weight", qkv_to_hf, qkv_to_keras
        yield att.output_dense.kernel, TEXT, f"{pre}self_attn.o_proj.weight", o_to_hf, o_to_keras
        yield blk.gating_ffw.kernel, TEXT, f"{pre}mlp.gate_proj.weight", *dense
        yield blk.gating_ffw_2.kernel, TEXT, f"{pre}mlp.up_proj.weight", *dense
        yield blk.ffw_linear.kernel, TEXT, f"{pre}mlp.down_proj.weight", *dense
        yield blk.pre_attention_norm.scale, TEXT, f"{pre}input_layernorm.weight", *same
        if gemma2:
            yield blk.post_attention_norm.scale, TEXT, f"{pre}post_attention_layernorm.weight", *same
            yield blk.pre_ffw_norm.scale, TEXT, f"{pre}pre_feedforward_layernorm.weight", *same
            yield blk.post_ffw_norm.scale, TEXT, f"{pre}post_feedforward_layernorm.weight", *same
        else:
            yield blk.pre_ffw_norm.scale, TEXT, f"{pre}post_attention_layernorm.weight", *same
    yield backbone.get_layer("final_normalization").scale, TEXT, "norm.weight", *same
    yield backbone.get_layer("token_embedding").embeddings, TEXT, "embed_tokens.weight", \
        (lambda x: x), (lambda x, s: np.asarray(x)[: s[0]])


def _keys(loader: Any) -> set[str]:
    """Every tensor name of the checkpoint keras-hub's `SafetensorLoader` reads."""
    if loader.safetensor_config is not None:
        return set(loader.safetensor_config["weight_map"])
    import safetensors
    from keras_hub.src.utils.preset_utils import SAFETENSOR_FILE, get_file

    with safetensors.safe_open(get_file(loader.preset, SAFETENSOR_FILE), framework="np") as f:
        return set(f.keys())


def convert_weights(backbone: Any, loader: Any, hf_config: dict[str, Any]) -> None:
    """Assign every backbone weight from the checkpoint (whichever prefixes it was saved with)."""
    del hf_config
    keys = _keys(loader)
    for var, prefixes, key, _, to_keras in _pairs(backbone):
        name = next((p + key for p in prefixes if p + key in keys), None)
        if name is None:
            raise ValueError(f"the checkpoint has no {prefixes[0]}{key} (nor under {', '.join(prefixes[1:])})")
        var.assign(to_keras(loader.get_tensor(name), tuple(var.shape)))


def convert_tokenizer(cls: Any, preset: str, **kwargs: Any) -> Any:
    from keras_hub.src.utils.preset_utils import get_file

    return cls(get_file(preset, "tokenizer.model"), **kwargs)


def hf_weights(backbone: Any, vocab_size: int | None = None) -> dict[str, Any]:
    """The `PaliGemmaForConditionalGeneration` state dict (float32 numpy, the names transformers
    5 saves); the embedding padded with zero rows to `vocab_size` (HF's text vocabulary)."""
    import keras
    import numpy as np

    out: dict[str, Any] = {}
    for var, prefixes, key, to_hf, _ in _pairs(backbone):
        out[prefixes[0].replace("vision_model.", "") + key] = np.ascontiguousarray(
            to_hf(np.asarray(keras.ops.convert_to_numpy(var), dtype=np.float32)))
    emb = "language_model.model.embed_tokens.weight"
    if vocab_size and vocab_size > out[emb].shape[0]:
        pad = np.zeros((vocab_size - out[emb].shape[0], out[emb].shape[1]), np.float32)
        out[emb] = np.concatenate([out[emb], pad])
    return out


def hf_config(backbone: Any, tokens_per_image: int, vocab_size: int, pad_id: int = 0, bos_id: int = 2,
              eos_id: int = 1) -> dict[str, Any]:
    """config.json of `PaliGemmaForConditionalGeneration` for a `PaliGemmaBackbone`."""
    b = backbone
    text: dict[str, Any] = {
        "model_type": "gemma2" if b.use_post_attention_norm else "gemma",
        "vocab_size": vocab_size,
        "hidden_size": b.hidden_dim,
        "intermediate_size": b.intermediate_dim // 2,
        "num_hidden_layers": b.num_layers,
        "num_attention_heads": b.num_query_heads,
        "num_key_value_heads": b.num_key_value_heads,
        "head_dim": b.head_dim,
        "rms_norm_eps": b.layer_norm_epsilon,
        "hidden_activation": "gelu_pytorch_tanh",
        "num_image_tokens": tokens_per_image,
        "pad_token_id": pad_id, "bos_token_id": bos_id, "eos_token_id": eos_id,
    }
    if b.use_post_attention_norm:
        text.update({
            "query_pre_attn_scalar": b.head_dim if b.query_head_dim_normalize else b.hidden_dim // b.num_query_heads,
            "attn_logit_softcapping": b.attention_logit_soft_cap,
            "final_logit_softcapping": b.final_logit_soft_cap,
            "sliding_window": b.sliding_window_size if b.use_sliding_window_attention else None,
            "layer_types": ["sliding_attention" if (i % 2 == 0 and b.use_sliding_window_attention) else "full_attention"
                            for i in range(b.num_layers)],
        })
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": b.vit_hidden_dim,
        "intermediate_size": b.vit_intermediate_dim,
        "num_hidden_layers": b.vit_num_layers,
        "num_attention_heads": b.vit_num_heads,
        "image_size": b.image_size,
        "patch_size": b.vit_patch_size,
        "projection_dim": b.hidden_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
    }
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "image_token_index": b.vocabulary_size,
        "projection_dim": b.hidden_dim,
        "hidden_size": b.hidden_dim,
        "text_config": text,
        "vision_config": vision,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def export(causal_lm: Any, out: Any) -> None:
    """`gemma export --format hf` of a PaliGemma CausalLM into the directory `out`: config.json,
    model.safetensors (float32; the vocabulary padded by 64 rows after the image token, as the
    published checkpoints), tokenizer.model + tokenizer_config.json, and the SigLIP image
    processor's preprocessor_config.json (resize to the tower's size, `x / 127.5 - 1`)."""
    import json

    from safetensors.numpy import save_file

    bb = causal_lm.backbone
    vocab = int(bb.vocabulary_size) + 64
    tok = causal_lm.preprocessor.tokenizer if causal_lm.preprocessor is not None else None
    ids = {"pad_id": int(getattr(tok, "pad_token_id", 0)), "bos_id": int(getattr(tok, "start_token_id", 2)),
           "eos_id": int(getattr(tok, "end_token_id", 1))} if tok is not None else {}
    config = hf_config(bb, int(bb.image_sequence_length), vocab, **ids)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(hf_weights(bb, vocab), str(out / "model.safetensors"), metadata={"format": "pt"})
    if tok is not None and getattr(tok, "proto", None):
        (out / "tokenizer.model").write_bytes(tok.proto)
        (out / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
            "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 8192,
            "processor_class": "PaliGemmaProcessor"}, indent=2))
    size = int(bb.image_size)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "processor_class": "PaliGemmaProcessor",
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "image_seq_length": int(bb.image_sequence_length)}, indent=2))


def __getattr__(name: str) -> Any:  # `backbone_cls`, as keras-hub's converter modules have it
    if name == "backbone_cls":
        import keras_hub

        return keras_hub.models.PaliGemmaBackbone
    raise AttributeError(name)
