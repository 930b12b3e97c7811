"""Tiny random Hugging Face checkpoints, one per family, written by `transformers` itself.

`make_hf_checkpoint(dir, name)` builds the tiny model `name` of `Family.tiny_hf` (gemma,
gemma2, gemma3, gemma4, gemma4_moe, llama3: each family's distinctive settings live in its
module in gemma_cli/engine/families/) with random weights, and writes what a Hub repository
holds: config.json, model.safetensors (float32) and the tokenizer files keras-hub's converter
reads for that family:

- Gemma 1-3: tokenizer.model (the tiny SentencePiece model of tests/tiny.py), plus the
  tokenizer.json / tokenizer_config.json transformers writes from it;
- Gemma 4: tokenizer.json only (as the published Gemma 4 repositories), from a SentencePiece
  model with byte fallback (keras-hub's Gemma 4 reader rebuilds one with byte pieces) and the
  `<|turn>` / `<turn|>` turn markers;
- Llama 3: a byte-level BPE tokenizer.json trained here with the Llama 3 special tokens, and
  tokenizer_config.json naming bos/eos.

`logits(dir, ids)` runs the checkpoint in transformers (float32) for comparisons. Heavy imports
happen inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny import CORPUS, tiny_proto

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
GEMMA4_SPECIAL = ["<|turn>", "<turn|>"]
GEMMA4_VISION_SPECIAL = ["<|image>", "<|image|>", "<image|>", "<|video>", "<|video|>", "<video|>"]

# ids every test feeds (all below each tiny vocabulary; longer than the local windows)
IDS = [2, 17, 33, 40, 5, 9, 60, 70, 11, 12, 13, 14, 99, 100, 21, 22]


def _llama3_tokenizer(out: Path, vocab_size: int) -> tuple[int, int]:
    """Byte-level BPE + Llama 3 specials → tokenizer.json, tokenizer_config.json; (bos, eos) ids."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 20, vocab_size=vocab_size - len(LLAMA3_SPECIAL), min_frequency=1,
                            show_progress=False)
    bpe.add_special_tokens(LLAMA3_SPECIAL)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"  # noqa: SLF001
    )
    tok.save_pretrained(str(out))
    return tok.convert_tokens_to_ids("<|begin_of_text|>"), tok.convert_tokens_to_ids("<|end_of_text|>")


def _init(model: Any, seed: int) -> None:
    """Weights large enough that every setting shows in the logits (norm scales around 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if ("norm" in name or "scale" in name) else 0.2
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(0.8)


def make_hf_checkpoint(out_dir: str | Path, name: str, seed: int = 0) -> Path:
    """Write the tiny Hugging Face checkpoint `name` (see the module docstring) to `out_dir`."""
    import torch
    import transformers

    from gemma_cli.engine import families

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    fam, spec = families.tiny_hf_config(name)
    kwargs = dict(spec["kwargs"])
    if fam.name == "llama3":
        kwargs["bos_token_id"], kwargs["eos_token_id"] = _llama3_tokenizer(out, kwargs["vocab_size"])
    elif fam.name == "gemma4":
        vision = "vision_config" in kwargs  # the image/video markers, and the config's ids of them
        special = GEMMA4_SPECIAL + (GEMMA4_VISION_SPECIAL if vision else [])
        vocab = spec.get("tokenizer_vocab", kwargs["vocab_size"])
        (out / "tokenizer.model").write_bytes(tiny_proto(vocab, special, byte_fallback=True))
        tok = transformers.GemmaTokenizer.from_pretrained(str(out))
        tok.save_pretrained(str(out))
        (out / "tokenizer.model").unlink()
        if vision:
            ids = dict(zip(GEMMA4_VISION_SPECIAL, tok.convert_tokens_to_ids(GEMMA4_VISION_SPECIAL), strict=True))
            kwargs.update(boi_token_id=ids["<|image>"], image_token_id=ids["<|image|>"], eoi_token_id=ids["<image|>"],
                          video_token_id=ids["<|video|>"])
            vc = kwargs["vision_config"]  # what transformers' Gemma4Processor saves, image part only
            proc = {"image_processor": {"image_processor_type": "Gemma4ImageProcessor", "do_resize": True,
                                        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False,
                                        "image_mean": [0.0] * 3, "image_std": [1.0] * 3, "patch_size": vc["patch_size"],
                                        "pooling_kernel_size": vc["pooling_kernel_size"],
                                        "max_soft_tokens": spec["max_soft_tokens"]},
                    "image_seq_length": spec["max_soft_tokens"], "processor_class": "Gemma4Processor"}
            (out / "processor_config.json").write_text(json.dumps(proc, indent=1))
    else:  # `tokenizer_vocab`: fewer pieces than the model's (padded) vocabulary, as PaliGemma's
        (out / "tokenizer.model").write_bytes(tiny_proto(spec.get("tokenizer_vocab", kwargs["vocab_size"])))
        transformers.GemmaTokenizer.from_pretrained(str(out)).save_pretrained(str(out))
    config = getattr(transformers, spec["config"])(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, spec["model"])(config).eval()
    _init(model, seed)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def logits(path: str | Path, ids: list[int] | None = None) -> Any:
    """float32 logits (1, len(ids), vocab) of a checkpoint run by transformers."""
    import numpy as np
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids or IDS])).logits
    return np.asarray(out.float().numpy())


def config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())


def make_hf_vision_checkpoint(out_dir: str | Path, name: str = "gemma3_vision", seed: int = 0) -> Path:
    """Write the tiny image+text Hugging Face checkpoint `name` (`Family.tiny_hf_vision`):
    config.json, model.safetensors, the tiny SentencePiece tokenizer naming its image tokens,
    and the processor (preprocessor_config.json, processor_config.json), as a Hub repository of
    a vision+text Gemma holds them. Weights as `_init` sets them."""
    import torch
    import transformers

    from gemma_cli.engine import families

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    _, spec = families.tiny_hf_vision_config(name)
    kwargs = dict(spec["kwargs"])
    (out / "tokenizer.model").write_bytes(tiny_proto(kwargs["text_config"]["vocab_size"]))
    tok = transformers.GemmaTokenizer.from_pretrained(str(out), extra_special_tokens=spec["tokenizer_tokens"])
    kwargs.update({k: tok.convert_tokens_to_ids(t) for k, t in spec["image_tokens"].items()})
    size = kwargs["vision_config"]["image_size"]
    images = getattr(transformers, spec["image_processor"])(size={"height": size, "width": size})
    processor = getattr(transformers, spec["processor"])(image_processor=images, tokenizer=tok,
                                                          image_seq_length=kwargs["mm_tokens_per_image"])
    processor.save_pretrained(str(out))
    config = getattr(transformers, spec["config"])(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, spec["model"])(config).eval()
    _init(model, seed)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def vision_logits(path: Any, ids: list[int], pixels: Any, image_token: int) -> Any:
    """float32 logits of an image+text checkpoint (a directory, or a loaded torch model such as
    a PeftModel) run by transformers: `pixels` [N, S, S, 3]
    float32 as gemma feeds the keras model (decoded, resized, scaled), given as transformers'
    `pixel_values` [N, 3, S, S]; `token_type_ids` mark the image tokens (their attention is
    bidirectional within an image, as keras-hub's `vision_mask` makes it)."""
    import numpy as np
    import torch
    import transformers

    model = path if isinstance(path, torch.nn.Module) else (
        transformers.AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32).eval())
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=x, pixel_values=torch.tensor(np.asarray(pixels).transpose(0, 3, 1, 2)),
                    token_type_ids=(x == image_token).long(), attention_mask=torch.ones_like(x)).logits
    return np.asarray(out.float().numpy())
