"""How each multimodal family takes its images: the vision spec of PaliGemma and Gemma 4, and
the image arrays of their rows (Gemma 3's are in pack.py, the default `interleave` layout).

- `interleave` (Gemma 3): an image is `\\n\\n<start_of_image>` + `<img>` × 256 +
  `<end_of_image>\\n\\n` where it sits in the text; rows carry `images` [slots, S, S, 3],
  `vision_indices`, `vision_mask`.
- `prefix` (PaliGemma 1/2): one image per example, never in the text: the backbone puts its
  `(S / 14)²` tokens in front of `<bos>`. Rows carry `images` [S, S, 3] and `response_mask`
  (1 on the suffix: the tokens trained on, attended causally; the image and the prefix attend
  both ways), as keras-hub's `PaliGemmaCausalLMPreprocessor` makes them.
- `patches` (Gemma 4): an image is `<|image>` + `<|image|>` × n + `<image|>` (no newlines)
  where it sits; the pixels go in as flattened patches with their (x, y) positions. gemma
  centre-crops every image to a square and resizes it to the largest side whose patch grid
  fits the model's `max_soft_tokens` (`floor(sqrt(max_soft_tokens)) * pool * patch`: 768 px and
  256 tokens at Gemma 4's default 280), which is the size transformers' Gemma 4 processor
  gives a square image, so every image has the same n and no padding patches. Rows carry
  `pixel_values` [slots, P, 3·patch²], `pixel_position_ids` [slots, P, 2] (padding −1),
  `vision_indices`, `vision_mask`.
"""

from __future__ import annotations

import math
from typing import Any

GEMMA4_MARKERS = ("<|image>", "<|image|>", "<image|>")


def gemma4_side(max_soft_tokens: int, patch: int, pool: int) -> int:
    """The square side gemma resizes Gemma 4 images to (module docstring)."""
    return max(1, math.isqrt(max_soft_tokens)) * pool * patch


def spec_of_model(causal_lm: Any, cls: Any) -> Any:
    """The `VisionSpec` of a live PaliGemma or Gemma 4 CausalLM (None for the others)."""
    bb = causal_lm.backbone
    name = type(bb).__name__
    pre = getattr(causal_lm, "preprocessor", None)
    conv = getattr(pre, "image_converter", None)
    kw: dict[str, Any] = {}
    if conv is not None:
        for k in ("scale", "offset"):
            v = conv.get_config().get(k)
            if v is not None:
                kw[k] = tuple(v) if isinstance(v, list | tuple) else float(v)
    if name == "PaliGemmaBackbone":
        return cls(int(bb.image_size), int(bb.image_sequence_length), max_images=1, layout="prefix", **kw)
    enc = getattr(bb, "vision_encoder", None)
    if name == "Gemma4Backbone" and enc is not None:
        soft = int(getattr(conv, "max_soft_tokens", 0) or 280)
        side = gemma4_side(soft, int(enc.patch_size), int(enc.pool_size))
        tokens = (side // (int(enc.patch_size) * int(enc.pool_size))) ** 2
        if pre is not None and getattr(pre, "max_images_per_prompt", None):
            kw["max_images"] = int(pre.max_images_per_prompt)
        kw.setdefault("scale", 1 / 255)
        kw.setdefault("offset", 0.0)
        return cls(side, tokens, layout="patches", markers=GEMMA4_MARKERS, around="", patch_size=int(enc.patch_size),
                   pool=int(enc.pool_size), **kw)
    return None


def spec_of_config(bb_config: dict[str, Any], cls: Any) -> Any:
    """The `VisionSpec` of a serialized PaliGemma backbone config (by name, or a local preset)."""
    from gemma_cli.engine.families import backbone_class

    if backbone_class(bb_config) != "PaliGemmaBackbone":
        return None
    c = bb_config.get("config", bb_config)
    size = int(c["image_size"])
    return cls(size, (size // int(c["vit_patch_size"])) ** 2, max_images=1, layout="prefix")


def spec_of_hf(preset: str, cfg: dict[str, Any], cls: Any) -> Any:
    """The `VisionSpec` of a PaliGemma or Gemma 4 Hugging Face checkpoint (config.json and
    processor_config.json), None for the others."""
    import json
    from pathlib import Path

    vc = cfg.get("vision_config")
    if not isinstance(vc, dict):
        return None
    if cfg.get("model_type") == "paligemma":
        size = int(vc.get("image_size", 224))
        return cls(size, (size // int(vc["patch_size"])) ** 2, max_images=1, layout="prefix")
    if cfg.get("model_type") == "gemma4":
        try:
            ip = json.loads((Path(preset).expanduser() / "processor_config.json").read_text())["image_processor"]
        except (OSError, ValueError, KeyError, TypeError):
            ip = {}
        patch, pool = int(vc.get("patch_size", 16)), int(vc.get("pooling_kernel_size", 3))
        side = gemma4_side(int(ip.get("max_soft_tokens", 280)), patch, pool)
        rescale = float(ip.get("rescale_factor", 1 / 255)) if ip.get("do_rescale", True) else 1.0
        mean = ip.get("image_mean", [0.0] * 3) if ip.get("do_normalize") else [0.0] * 3
        std = ip.get("image_std", [1.0] * 3) if ip.get("do_normalize") else [1.0] * 3
        return cls(side, (side // (patch * pool)) ** 2, layout="patches", markers=GEMMA4_MARKERS, around="",
                   patch_size=patch, pool=pool, scale=tuple(rescale / s for s in std),
                   offset=tuple(-m / s for m, s in zip(mean, std, strict=True)))
    return None


def patchify(pixels: Any, patch: int) -> tuple[Any, Any]:
    """([P, patch·patch·3] patches in row-major order, [P, 2] (x, y) positions) of [S, S, 3]
    pixels, each patch flattened (row, column, channel) as transformers' Gemma 4 processor."""
    import numpy as np

    s = pixels.shape[0] // patch
    p = pixels.reshape(s, patch, s, patch, 3).transpose(0, 2, 1, 3, 4).reshape(s * s, patch * patch * 3)
    ys, xs = np.divmod(np.arange(s * s, dtype=np.int32), s)
    return p.astype(np.float32), np.stack([xs, ys], axis=-1).astype(np.int32)


def row_arrays(slots: Any, pics: list[Any], ids: Any, token_weights: Any) -> dict[str, Any]:
    """A row's image arrays for the `prefix` and `patches` layouts (`slots`: pack.ImageSlots;
    `token_weights`: the loss weight of each input token, whose non-zero ones are PaliGemma's
    suffix)."""
    import numpy as np

    if slots.layout == "prefix":
        image = pics[0] if pics else np.zeros((slots.size, slots.size, 3), np.float32)
        return {"images": np.asarray(image, np.float32), "response_mask": (token_weights > 0).astype(np.int32)}
    n = (slots.size // slots.patch) ** 2
    values = np.zeros((slots.slots, n, slots.patch * slots.patch * 3), np.float32)
    pos = np.full((slots.slots, n, 2), -1, np.int32)
    for k, p in enumerate(pics):
        values[k], pos[k] = patchify(p, slots.patch)
    mask = (ids == slots.soft_id).astype(np.int32)
    where = np.nonzero(mask)[0].astype(np.int32)
    indices = np.zeros(slots.slots * slots.tokens, dtype=np.int32)
    indices[: len(where)] = where[: len(indices)]
    return {"pixel_values": values, "pixel_position_ids": pos, "vision_indices": indices, "vision_mask": mask}
