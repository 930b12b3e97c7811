"""PaliGemma 2 and Gemma 4 with their vision towers: tiny random checkpoints written by
`transformers` (tests/hf_tiny.py, configs in engine/families/paligemma.py and gemma4.py) load
into keras-hub with logits equal to transformers' on the same image + text; they fine-tune
with the tower frozen and with LoRA on it; and they export back to transformers.

Pixels: one float32 array in [-1, 1] (what the image converters produce), fed to keras-hub as
NHWC and to transformers as the same values in NCHW; no processor on either side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

PG_TEXT = [2, 17, 33, 40, 5, 9, 60, 70, 11, 12, 13, 14]  # <bos> prefix ... then the suffix
PG_PREFIX = 6  # <bos> + 5 prefix tokens; the rest is the suffix (causal, trained on)


@pytest.fixture(scope="module")
def paligemma_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hf_tiny import make_hf_checkpoint

    return make_hf_checkpoint(tmp_path_factory.mktemp("pg") / "tiny_paligemma2", "paligemma2")


def pixels(size: int, seed: int = 0) -> Any:
    return np.random.default_rng(seed).uniform(-1, 1, (1, size, size, 3)).astype("float32")


def paligemma_hf_logits(path: Path, px: Any, ids: list[int], prefix: int) -> Any:
    import torch
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(str(path))
    n_img = cfg.text_config.num_image_tokens
    model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()
    input_ids = torch.tensor([[cfg.image_token_index] * n_img + ids])
    types = torch.tensor([[0] * (n_img + prefix) + [1] * (len(ids) - prefix)])
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=torch.from_numpy(px.transpose(0, 3, 1, 2)).contiguous(),
                    token_type_ids=types, attention_mask=torch.ones_like(input_ids)).logits
    return out[:, n_img:].float().numpy()


def paligemma_keras_logits(lm: Any, px: Any, ids: list[int], prefix: int) -> Any:
    x = {"images": px, "token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), "int32"),
         "response_mask": np.array([[0] * prefix + [1] * (len(ids) - prefix)], "int32")}
    return np.asarray(lm(x))


# ------------------------------------------------------------------------------ load ---
def test_paligemma2_checkpoint_logits_equal_transformers(paligemma_ckpt: Path) -> None:
    from gemma_cli.engine.model import hf as hf_checkpoint

    lm = hf_checkpoint.load_causal_lm(paligemma_ckpt, "float32")
    assert type(lm).__name__ == "PaliGemmaCausalLM"
    bb = lm.backbone
    assert bb.use_post_attention_norm and bb.final_logit_soft_cap == 30.0 and bb.head_dim == 8
    px = pixels(bb.image_size)
    ours = paligemma_keras_logits(lm, px, PG_TEXT, PG_PREFIX)
    theirs = paligemma_hf_logits(paligemma_ckpt, px, PG_TEXT, PG_PREFIX)[..., : ours.shape[-1]]
    err = float(np.abs(ours - theirs).max())
    print(f"paligemma2 max |logit diff| {err:.2e}")
    assert err < 1e-4
    # the image matters: other pixels, other logits
    assert float(np.abs(paligemma_keras_logits(lm, pixels(bb.image_size, 1), PG_TEXT, PG_PREFIX) - ours).max()) > 1e-3


# ---------------------------------------------------------------------------- Gemma 4 ---
@pytest.fixture(scope="module")
def gemma4_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hf_tiny import make_hf_checkpoint

    return make_hf_checkpoint(tmp_path_factory.mktemp("g4") / "tiny_gemma4_vision", "gemma4_vision")


def gemma4_inputs(cfg: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """One 32 px image as Gemma 4's patches (8 x 8 of 4 x 4 x 3, values in [0, 1], (x, y)
    positions) between text; its 16 soft tokens at positions 3..18."""
    vc = cfg["vision_config"]
    side = 32 // vc["patch_size"]
    n_soft = (side // vc["pooling_kernel_size"]) ** 2
    patches = np.random.default_rng(seed).uniform(0, 1, (1, side * side, 3 * vc["patch_size"] ** 2)).astype("float32")
    pos = np.array([[(x, y) for y in range(side) for x in range(side)]], "int32")
    ids = [2, 17, cfg["boi_token_id"], *[cfg["image_token_id"]] * n_soft, cfg["eoi_token_id"], 33, 40, 5, 9, 60]
    return {"ids": ids, "patches": patches, "pos": pos, "soft": [i for i, t in enumerate(ids) if t == cfg["image_token_id"]]}


def gemma4_keras_logits(lm: Any, x: dict[str, Any]) -> Any:
    n = len(x["ids"])
    mask = np.zeros((1, n), "int32")
    mask[0, x["soft"]] = 1
    return np.asarray(lm({
        "token_ids": np.array([x["ids"]], "int32"), "padding_mask": np.ones((1, n), "int32"),
        "position_ids": np.arange(n, dtype="int32")[None], "pixel_values": x["patches"][:, None],
        "pixel_position_ids": x["pos"][:, None], "vision_indices": np.array([x["soft"]], "int32"), "vision_mask": mask}))


def gemma4_hf_logits(path: Path, x: dict[str, Any]) -> Any:
    import torch
    import transformers

    model = transformers.Gemma4ForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.tensor([x["ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.from_numpy(x["patches"]),
                    image_position_ids=torch.from_numpy(x["pos"]).long()).logits
    return out.float().numpy()


def test_gemma4_vision_checkpoint_logits_equal_transformers(gemma4_ckpt: Path) -> None:
    from hf_tiny import config

    from gemma_cli.engine.model import hf as hf_checkpoint

    lm = hf_checkpoint.load_causal_lm(gemma4_ckpt, "float32")
    assert type(lm).__name__ == "Gemma4CausalLM" and lm.backbone.vision_encoder is not None
    x = gemma4_inputs(config(gemma4_ckpt))
    ours = gemma4_keras_logits(lm, x)
    theirs = gemma4_hf_logits(gemma4_ckpt, x)
    err = float(np.abs(ours - theirs).max())
    print(f"gemma4 vision max |logit diff| {err:.2e}")
    assert err < 1e-4
    other = gemma4_keras_logits(lm, gemma4_inputs(config(gemma4_ckpt), seed=1))
    assert float(np.abs(other - ours).max()) > 1e-3  # the image matters
