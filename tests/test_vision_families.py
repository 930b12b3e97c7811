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
