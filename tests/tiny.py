"""Tiny Gemma presets for tests: random weights, a SentencePiece vocabulary trained here.

`make_tiny_preset(dir, family)` writes a real keras-hub preset directory (config.json,
tokenizer, weights) that every `gemma` verb loads exactly like a downloaded one. Families:
gemma (Gemma 1), gemma2, gemma3; their tiny sizes live with each family (engine/families/). The heavy imports happen inside the function so that test
modules can import this file cheaply.
"""

from __future__ import annotations

import io
from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "gemma fine tunes models from yaml run configs",
    "a mesh has a batch axis and a model axis",
    "layout rules map variable paths to mesh axes",
    "low rank adapters train few parameters",
    "the loss falls when the model learns the corpus",
    "Instruction: Response: what does inspect show",
    "0 1 2 3 4 5 6 7 8 9 . , ! ? : ; ( ) - _ / =",
]

SPECIAL = ["<start_of_turn>", "<end_of_turn>", "<img>", "<start_of_image>", "<end_of_image>"]


def tiny_proto(vocab_size: int = 128, special: list[str] = SPECIAL, byte_fallback: bool = False) -> bytes:
    """A sentencepiece BPE model trained on CORPUS, Gemma's special ids, `special` as user symbols."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=special,
        character_coverage=1.0,
        minloglevel=2,
        **({"byte_fallback": True} if byte_fallback else {}),
    )
    return buf.getvalue()


def tiny_backbone_config(family: str, vocab_size: int) -> dict:
    """The tiny backbone kwargs of `family`, from its module in gemma_cli/engine/families/."""
    from gemma_cli.engine import families

    _, cfg = families.tiny_config(family)
    return {**cfg, "vocabulary_size": vocab_size}


def make_tiny_preset(out_dir: str | Path, family: str = "gemma3", seed: int = 0, vocab_size: int = 128) -> Path:
    """Write a tiny preset of `family` to `out_dir` and return its path."""
    import keras
    import keras_hub

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    keras.utils.set_random_seed(seed)
    proto = tiny_proto(vocab_size)
    if family == "gemma3":
        tok = keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=False)
        bb = keras_hub.models.Gemma3Backbone(**tiny_backbone_config(family, vocab_size))
        pre = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer=tok, sequence_length=32)
        lm = keras_hub.models.Gemma3CausalLM(backbone=bb, preprocessor=pre)
    else:
        tok = keras_hub.models.GemmaTokenizer(proto=proto)
        bb = keras_hub.models.GemmaBackbone(**tiny_backbone_config(family, vocab_size))
        pre = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer=tok, sequence_length=32)
        lm = keras_hub.models.GemmaCausalLM(backbone=bb, preprocessor=pre)
    out.mkdir(parents=True, exist_ok=True)
    lm.save_to_preset(str(out))
    return out


# A tiny Gemma 3 vision tower: 16×16 images in 4×4 patches, pooled 2×2 → 4 image tokens.
TINY_VISION = dict(image_size=16, patch_size=4, num_heads=2, hidden_dim=16, num_layers=1, intermediate_dim=32,
                   pool_size=2, layer_norm_epsilon=1e-6)


def make_tiny_vision_preset(out_dir: str | Path, seed: int = 0, vocab_size: int = 128, max_images: int = 2) -> Path:
    """Write a tiny Gemma 3 *vision* preset (text backbone of the gemma3 tiny config plus a
    `Gemma3VisionEncoder`, its image converter and preprocessor) to `out_dir`."""
    import keras
    import keras_hub

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    keras.utils.set_random_seed(seed)
    proto = tiny_proto(vocab_size)
    text = tiny_backbone_config("gemma3", vocab_size)
    enc = keras_hub.models.Gemma3VisionEncoder(**TINY_VISION, output_dim=text["hidden_dim"])
    bb = keras_hub.models.Gemma3Backbone(**{**text, "image_size": TINY_VISION["image_size"], "vision_encoder": enc})
    tok = keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=True)
    conv = keras_hub.layers.Gemma3ImageConverter(image_size=(16, 16), scale=1 / 127.5, offset=-1.0)
    pre = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer=tok, image_converter=conv, sequence_length=64, max_images_per_prompt=max_images,
        num_vision_tokens_per_image=enc.num_vision_tokens_per_image)
    lm = keras_hub.models.Gemma3CausalLM(backbone=bb, preprocessor=pre)
    out.mkdir(parents=True, exist_ok=True)
    lm.save_to_preset(str(out))
    return out
