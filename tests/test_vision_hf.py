"""Gemma 3 image+text checkpoints of Hugging Face, through gemma and back (issue #26).

One tiny random `Gemma3ForConditionalGeneration` written by transformers (tests/hf_tiny.py:
6 text layers, a 2-layer SigLIP tower of 16×16 images pooled to 4 tokens, its processor) and
one LoRA fine-tune of it with `model.vision: lora` (adapters on the tower's attention too) on
images drawn here:

1. loading keeps the tower and projector: keras' logits on an image + text input equal
   transformers' (float32, max |diff| <= 1e-4). The pixels are fed identically: the image is
   decoded and resized once by gemma's pipeline (`ImageRef.pixels`, [S, S, 3]) and handed to
   the keras model as `images` and to transformers as `pixel_values` (transposed to [3, S, S]);
   transformers gets `token_type_ids` marking the image tokens (bidirectional attention inside
   an image, as keras-hub's `vision_mask`).
2. `gemma export --format hf` of the run writes the whole model (tower, projector, processor
   and image processor configs, chat template); transformers' logits equal the run's, and
   gemma loads the export back to the same logits. `--format peft` of the run, put by `peft`
   on transformers' model of the original checkpoint, gives the run's logits too.
3. `gemma inspect` plans the checkpoint with its tower (rows, optimizer state of the tower's
   adapters, the tower's memory term).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hf_tiny import make_hf_vision_checkpoint, vision_logits
from typer.testing import CliRunner

from gemma_cli.cli import app

TOL = 1e-4
TEXT = [17, 33, 40, 5, 9, 60, 70, 11]  # ids of the tiny vocabulary after the image


def gemma(*args: Any) -> Any:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_vision_checkpoint(tmp_path_factory.mktemp("hf_vision") / "gemma3_vision")


@pytest.fixture(scope="module")
def probe(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One image + text input: ids with the image's tokens where it sits, and its pixels."""
    from PIL import Image

    from gemma_cli.engine.data.images import ImageRef, VisionSpec

    cfg = json.loads((ckpt / "config.json").read_text())
    spec = VisionSpec.of_hf(str(ckpt), cfg)
    assert spec is not None and (spec.image_size, spec.tokens_per_image) == (16, 4)
    path = tmp_path_factory.mktemp("probe") / "wide.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(path)
    img = cfg["image_token_index"]
    ids = [2, cfg["boi_token_index"], *[img] * 4, cfg["eoi_token_index"], *TEXT]
    return {"ids": ids, "pixels": ImageRef("probe", path=str(path)).pixels(spec)[None], "image_token": img}


def keras_logits(lm: Any, probe: dict[str, Any]) -> Any:
    ids = np.array([probe["ids"]])
    at = np.nonzero(ids[0] == probe["image_token"])[0]
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids), "images": probe["pixels"][None],
         "vision_indices": at[None].astype("int32"), "vision_mask": (ids == probe["image_token"]).astype("int32")}
    return np.asarray(lm(x))


def hf_logits(path: Any, probe: dict[str, Any]) -> Any:
    return vision_logits(path, probe["ids"], probe["pixels"], probe["image_token"])


@pytest.fixture(scope="module")
def run(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA fine-tune of the checkpoint, the tower's attention adapted too (3 steps, (2, 4))."""
    from test_vision import COLOURS, draw, record, write_jsonl

    tmp = tmp_path_factory.mktemp("hf_vision_run")
    (tmp / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = [record(str(draw(tmp / "img" / f"{i}.png", c, rng)), c) for i, c in enumerate(list(COLOURS) * 3)]
    cfg = {
        "model": {"preset": str(ckpt), "precision": "float32", "lora": {"rank": 4, "alpha": 8.0}, "vision": "lora"},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "layout": {"indivisible": "replicate"},  # 2 KV heads on a model axis of 4
        "data": {"paths": [str(write_jsonl(tmp / "train.jsonl", rows))], "format": "chat", "sequence_length": 32,
                 "batch_size": 4},
        "optimizer": {"name": "adamw", "learning_rate": 5e-2},
        "train": {"max_steps": 3, "output_dir": str(tmp / "run"), "log_every": 1},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = json.loads(gemma("finetune", path, "--json").stdout)
    return {"cfg": path, "dir": tmp / "run", "tmp": tmp, "summary": summary}


def test_checkpoint_loads_with_its_tower_equal_to_transformers(ckpt: Path, probe: dict[str, Any]) -> None:
    from gemma_cli.engine.model import load as model

    lm = model.load_causal_lm(str(ckpt), "float32")
    assert lm.backbone.vision_encoder is not None and lm.backbone.vision_encoder.pool_size == 2
    ours, theirs = keras_logits(lm, probe), hf_logits(ckpt, probe)
    print(f"keras vs transformers, image + text: max |diff| {np.abs(ours - theirs).max():.2e}")
    assert np.abs(ours - theirs).max() <= TOL
    assert np.abs(theirs).max() > 1.0  # weights large enough that a wrong tower would show


def test_inspect_plans_the_tower(run: dict[str, Any]) -> None:
    plan = json.loads(gemma("inspect", run["cfg"], "--json", "--optimizer").stdout)
    rows = {v["path"]: v for v in plan["variables"]}
    q = rows["image_encoder/encoder_block_0/multi_head_attention/query_proj/kernel"]
    assert q["spec"] == ["batch", "model"] and "image_encoder/encoder_block_1/mlp_dense_2/kernel" in rows
    assert "vision_output_encoder/vision_input_projection/kernel" in rows
    opt = {o["variable"] for o in plan["optimizer_variables"]}
    assert "image_encoder/encoder_block_1/multi_head_attention/value_proj/lora_kernel_a" in opt
    assert not any("proj/bias" in p for p in opt)  # LoRA trains the adapters only
    assert plan["totals"]["images_bytes_per_device"] > 0
    assert any(n.startswith("vision tower:") for n in plan["notes"])


def test_vision_lora_run_exports_to_transformers_and_peft(run: dict[str, Any], ckpt: Path, probe: dict[str, Any]) -> None:
    import peft
    import torch
    import transformers

    from gemma_cli import targets
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.model import runs
    from gemma_cli.engine.model.lora import lora_layers

    t = targets.resolve(str(run["dir"]), verb="export")
    lm = runs.load(t.config, t.checkpoint)
    tower = lora_layers(lm.backbone.vision_encoder)
    assert tower and all(np.abs(np.asarray(layer.lora_kernel_b)).max() > 0 for layer in tower)  # the tower's adapters trained
    tuned = keras_logits(lm, probe)
    assert np.abs(tuned - hf_logits(ckpt, probe)).max() > 100 * TOL

    out = run["tmp"] / "hf"
    gemma("export", run["dir"], "--format", "hf", "--out", out, "--json")
    files = {f.name for f in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model", "preprocessor_config.json",
            "processor_config.json", "chat_template.jinja"} <= files
    exported = hf_logits(out, probe)
    print(f"export vs run: max |diff| {np.abs(exported - tuned).max():.2e}")
    assert np.abs(exported - tuned).max() <= TOL
    proc = transformers.AutoProcessor.from_pretrained(str(out))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    assert proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == (
        "<bos><start_of_turn>user\n<start_of_image>what colour?<end_of_turn>\n<start_of_turn>model\n")

    back = keras_logits(model.load_causal_lm(str(out), "float32"), probe)  # round trip: gemma loads its export
    assert np.abs(back - tuned).max() <= TOL

    adapter = run["tmp"] / "peft"
    gemma("export", run["dir"], "--format", "peft", "--out", adapter, "--json")
    base = transformers.AutoModelForImageTextToText.from_pretrained(str(ckpt), dtype=torch.float32)
    with_lora = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    print(f"peft vs run: max |diff| {np.abs(hf_logits(with_lora, probe) - tuned).max():.2e}")
    assert np.abs(hf_logits(with_lora, probe) - tuned).max() <= TOL
