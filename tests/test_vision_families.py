"""PaliGemma 2 and Gemma 4 with their vision towers: tiny random checkpoints written by
`transformers` (tests/hf_tiny.py, configs in engine/families/paligemma.py and gemma4.py) load
into keras-hub with logits equal to transformers' on the same image + text; they fine-tune
with the tower frozen and with LoRA on it; and they export back to transformers.

Pixels: one float32 array in [-1, 1] (what the image converters produce), fed to keras-hub as
NHWC and to transformers as the same values in NCHW; no processor on either side.
"""

from __future__ import annotations

import dataclasses
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


def paligemma_hf_logits(path: Any, px: Any, ids: list[int], prefix: int) -> Any:
    import torch
    import transformers

    if isinstance(path, Path):
        model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()
    else:  # a model (PEFT's)
        model = path
    cfg = model.config
    n_img = cfg.text_config.num_image_tokens
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


# --------------------------------------------------------------------- data and fine-tune ---
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220)}


def gemma(*args: Any) -> Any:
    from typer.testing import CliRunner

    from gemma_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def colour_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """24 plain-colour squares with a grey border, and their colours (relative paths)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    out = []
    for i in range(24):
        c = list(COLOURS)[i % 3]
        img = np.full((40, 40, 3), 128, np.uint8)
        img[6:34, 6:34] = np.clip(np.array(COLOURS[c]) + rng.integers(-20, 21, 3), 0, 255)
        Image.fromarray(img).save(root / "img" / f"{i}.png")
        out.append((f"img/{i}.png", c))
    return {"root": root, "items": out}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_config(tmp: Path, preset: Path, data_path: Path, vision: str = "frozen", steps: int = 8, **over: Any) -> Path:
    import yaml

    d: dict[str, Any] = {
        "model": {"preset": str(preset), "precision": "float32", "lora": {"rank": 4}, "vision": vision},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "data": {"paths": [str(data_path)], "format": "chat", "sequence_length": 32, "batch_size": 8},
        "optimizer": {"name": "adamw", "learning_rate": 2e-2},
        "train": {"max_steps": steps, "output_dir": str(tmp / "out"), "log_every": 1},
    }
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v}
    p = tmp / f"run_{vision}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def paligemma_records(items: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Both forms: big_vision's prefix/suffix, and a one-turn chat with an image part."""
    out: list[dict[str, Any]] = []
    for i, (path, c) in enumerate(items):
        if i % 2:
            out.append({"image": path, "prefix": "what colour?", "suffix": c})
        else:
            out.append({"messages": [
                {"role": "user", "content": [{"type": "image", "path": path}, {"type": "text", "text": "what colour?"}]},
                {"role": "assistant", "content": c}]})
    return out


def test_paligemma_rows_put_the_image_first_and_train_the_suffix(paligemma_ckpt: Path, colour_images: dict[str, Any]) -> None:
    from gemma_cli.engine.data import Renderer
    from gemma_cli.engine.data.images import VisionSpec, for_preset
    from gemma_cli.engine.data.pack import ImageSlots, RowBuilder
    from gemma_cli.engine.data.tokenize import Encoder
    from gemma_cli.engine.model import hf as hf_checkpoint

    spec, _ = for_preset(str(paligemma_ckpt))
    assert spec == VisionSpec(28, 4, max_images=1, layout="prefix")
    lm = hf_checkpoint.load_causal_lm(paligemma_ckpt, "float32")
    live = VisionSpec.of_model(lm)  # the same, scale/offset per channel or not
    assert dataclasses.replace(live, scale=0, offset=0) == dataclasses.replace(spec, scale=0, offset=0)
    assert np.allclose(live.scale, spec.scale) and np.allclose(live.offset, spec.offset)
    data = write_jsonl(colour_images["root"] / "pg.jsonl", paligemma_records([colour_images["items"][0], colour_images["items"][3]]))  # both red
    from types import SimpleNamespace

    cfg = SimpleNamespace(template=None, format="chat", messages_field=None, loss_on="assistant", field="text",
                          response_field=None, packing=False)
    r = Renderer(cfg, vision=spec)
    enc = Encoder(lm.preprocessor.tokenizer, spec)
    import json

    rows = []
    for i, line in enumerate(data.read_text().splitlines(), 1):
        doc = enc.doc(r(f"{data}:{i}", json.loads(line)), 33)
        b = RowBuilder(32, enc.pad_id, ImageSlots(28, 4, 1, -1, "prefix"))
        b.add(doc)
        rows.append(b.take(0).arrays)
    for row in rows:  # <bos> prefix \n | suffix <eos>: the response mask on the suffix, loss on it only
        ids, w, resp = row["token_ids"], row["weights"], row["response_mask"]
        n = int((row["segment_ids"] > 0).sum())
        assert ids[0] == 2 and row["images"].shape == (28, 28, 3)
        suffix = np.nonzero(resp)[0]
        assert len(suffix) and resp[: suffix[0]].sum() == 0 and resp[suffix[0] : n].all() and not resp[n:].any()
        assert np.array_equal(np.nonzero(w)[0], np.arange(suffix[0] - 1, n))  # predicting the suffix and <eos>
    assert np.array_equal(rows[0]["token_ids"], rows[1]["token_ids"])  # the two forms render the same
    assert not np.array_equal(rows[0]["images"], rows[1]["images"])


@pytest.fixture(scope="module")
def paligemma_runs(paligemma_ckpt: Path, colour_images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import json

    data = write_jsonl(colour_images["root"] / "train_pg.jsonl", paligemma_records(colour_images["items"]))
    out = {}
    for vision in ("frozen", "lora"):
        tmp = tmp_path_factory.mktemp(f"pg_{vision}")
        cfg = run_config(tmp, paligemma_ckpt, data, vision)
        r = gemma("finetune", cfg, "--json")
        assert r.exit_code == 0, r.stderr[-3000:] + r.stdout[-2000:]
        out[vision] = {"cfg": cfg, "summary": json.loads(r.stdout)}
    return out


@pytest.mark.parametrize("vision", ["frozen", "lora"])
def test_paligemma_finetunes_with_tower(paligemma_runs: dict[str, Any], vision: str) -> None:
    s = paligemma_runs[vision]["summary"]
    print(vision, s["first_loss"], s["final_loss"])
    assert s["final_loss"] < s["first_loss"]


@pytest.mark.parametrize("vision", ["frozen", "lora"])
def test_paligemma_tower_plan_equals_live_at_2x4(paligemma_runs: dict[str, Any], vision: str) -> None:
    """The tower's default layout planned without weights equals the live variables' shardings
    under the run's distribution; `frozen`: no adapters in the tower, `lora`: on its q/v."""
    from gemma_cli.config import load_config
    from gemma_cli.engine.model import runs
    from gemma_cli.engine.plan import layout as layoutlib

    cfg = load_config(str(paligemma_runs[vision]["cfg"]))
    lay = layoutlib.layout_for(cfg)
    planned = {v.path: tuple(v.spec) for v in lay.plan.variables}
    assert planned["image_encoder/encoder_block_0/multi_head_attention/query_proj/kernel"] == ("batch", "model")
    assert planned["image_encoder/encoder_block_0/mlp_dense_2/kernel"] == ("model", "batch")
    assert planned["image_classifier/kernel"] == ("batch", "model")
    tower_lora = [p for p in planned if p.startswith("image_encoder/") and "lora" in p]
    assert bool(tower_lora) == (vision == "lora"), tower_lora
    lm = runs.load(cfg, distribution=lay.distribution, adapters=True)
    live = {}
    for v in lm.backbone.weights:
        spec = tuple(v.value.sharding.spec)
        live[v.path] = spec + (None,) * (len(v.shape) - len(spec))
    assert live == planned
    trainable = {v.path for v in lm.backbone.trainable_weights}
    assert {p for p in trainable if p.startswith(("image_encoder/", "image_classifier/"))} == set(tower_lora)


def gemma4_records(items: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Chat records with an image part, and LLaMA-Factory's `images` + `<image>` form."""
    out: list[dict[str, Any]] = []
    for i, (path, c) in enumerate(items):
        if i % 2:
            out.append({"messages": [{"role": "user", "content": "<image>what colour?"},
                                     {"role": "assistant", "content": c}], "images": [path]})
        else:
            out.append({"messages": [
                {"role": "user", "content": [{"type": "image", "path": path}, {"type": "text", "text": "what colour?"}]},
                {"role": "assistant", "content": c}]})
    return out


def test_gemma4_rows_carry_patches_where_the_image_is(gemma4_ckpt: Path, colour_images: dict[str, Any]) -> None:
    import json
    from types import SimpleNamespace

    from gemma_cli.engine.data import Renderer
    from gemma_cli.engine.data.images import VisionSpec, for_preset, ref
    from gemma_cli.engine.data.pack import ImageSlots, RowBuilder
    from gemma_cli.engine.data.tokenize import Encoder
    from gemma_cli.engine.data.vision_layouts import patchify
    from gemma_cli.engine.families import gemma4
    from gemma_cli.engine.model import hf as hf_checkpoint

    spec, _ = for_preset(str(gemma4_ckpt))
    assert (spec.layout, spec.image_size, spec.tokens_per_image, spec.patch_size, spec.max_images) == ("patches", 32, 16, 4, 2)
    lm = hf_checkpoint.load_causal_lm(gemma4_ckpt, "float32")
    assert VisionSpec.of_model(lm) == spec
    items = [colour_images["items"][0], colour_images["items"][3]]  # both red
    data = write_jsonl(colour_images["root"] / "g4.jsonl", gemma4_records(items))
    cfg = SimpleNamespace(template=None, format="chat", messages_field=None, loss_on="assistant", field="text",
                          response_field=None, packing=False)
    r = Renderer(cfg, "chat", chat=gemma4.CHAT, vision=spec)
    enc = Encoder(lm.preprocessor.tokenizer, spec)
    slots = ImageSlots(32, 16, 2, enc.special("<|image|>"), "patches", 4)
    rows = []
    for i, line in enumerate(data.read_text().splitlines(), 1):
        b = RowBuilder(48, enc.pad_id, slots)
        b.add(enc.doc(r(f"{data}:{i}", json.loads(line)), 49))
        rows.append(b.take(0).arrays)
    for row in rows:
        ids, soft = row["token_ids"], np.nonzero(row["vision_mask"])[0]
        assert len(soft) == 16 and np.array_equal(row["vision_indices"][:16], soft) and not row["vision_indices"][16:].any()
        assert ids[soft[0] - 1] == enc.special("<|image>") and ids[soft[-1] + 1] == enc.special("<image|>")
        turn = int(np.nonzero(ids == enc.special("<|turn>"))[0][0])  # the image opens the user's turn
        assert enc.decode([int(t) for t in ids[turn + 1 : soft[0] - 1]]) == "user\n"
        assert not row["weights"][soft[0] - 2 : soft[-1] + 1].any()  # never trained on image tokens
        assert row["pixel_values"].shape == (2, 64, 48) and (row["pixel_position_ids"][1] == -1).all()
    assert np.array_equal(rows[0]["token_ids"], rows[1]["token_ids"])  # both forms, same tokens
    px = ref("t", str(colour_images["root"] / items[0][0]), "image").pixels(spec)
    values, pos = patchify(px, 4)
    assert np.allclose(rows[0]["pixel_values"][0], values) and np.array_equal(rows[0]["pixel_position_ids"][0], pos)
    assert 0.0 <= values.min() and values.max() <= 1.0  # transformers' Gemma 4 rescale, no normalisation


@pytest.fixture(scope="module")
def gemma4_runs(gemma4_ckpt: Path, colour_images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import json

    data = write_jsonl(colour_images["root"] / "train_g4.jsonl", gemma4_records(colour_images["items"]))
    out = {}
    for vision in ("frozen", "lora"):
        tmp = tmp_path_factory.mktemp(f"g4_{vision}")
        cfg = run_config(tmp, gemma4_ckpt, data, vision, data={"sequence_length": 48})
        r = gemma("finetune", cfg, "--json")
        assert r.exit_code == 0, r.stderr[-3000:] + r.stdout[-2000:]
        out[vision] = {"cfg": cfg, "summary": json.loads(r.stdout)}
    return out


@pytest.mark.parametrize("vision", ["frozen", "lora"])
def test_gemma4_finetunes_with_tower(gemma4_runs: dict[str, Any], vision: str) -> None:
    s = gemma4_runs[vision]["summary"]
    print(vision, s["first_loss"], s["final_loss"])
    assert s["final_loss"] < s["first_loss"]


@pytest.mark.parametrize("vision", ["frozen", "lora"])
def test_gemma4_tower_plan_equals_live_at_2x4(gemma4_runs: dict[str, Any], vision: str) -> None:
    from gemma_cli.config import load_config
    from gemma_cli.engine.model import runs
    from gemma_cli.engine.plan import layout as layoutlib

    cfg = load_config(str(gemma4_runs[vision]["cfg"]))
    lay = layoutlib.layout_for(cfg)
    planned = {v.path: tuple(v.spec) for v in lay.plan.variables}
    assert planned["image_encoder/encoder_block_0/attention/query/dense/kernel"] == (None, "batch", "model")
    assert planned["image_encoder/encoder_block_0/ffw_linear/dense/kernel"] == ("model", "batch")
    assert planned["vision_output_encoder/vision_input_projection/kernel"] == ("batch", "model")
    tower_lora = [p for p in planned if p.startswith("image_encoder/") and "lora" in p]
    assert len(tower_lora) == (2 * 7 * 2 if vision == "lora" else 0), tower_lora  # 2 blocks x 7 linears x (a, b)
    lm = runs.load(cfg, distribution=lay.distribution, adapters=True)
    live = {}
    for v in lm.backbone.weights:
        spec = tuple(v.value.sharding.spec)
        live[v.path] = spec + (None,) * (len(v.shape) - len(spec))
    assert live == planned
    trainable = {v.path for v in lm.backbone.trainable_weights}
    assert {p for p in trainable if p.startswith(("image_encoder/", "vision_output_encoder/", "patch_embedder/"))} == set(tower_lora)


# ---------------------------------------------------------------------------- export ---
def _export_run(run: dict[str, Any], tmp: Path) -> tuple[Any, Path]:
    """`gemma export RUN --format hf` of a LoRA-tower run; (our model of that run, the export)."""
    from gemma_cli.config import load_config
    from gemma_cli.engine.model import checkpoint as ckptlib
    from gemma_cli.engine.model import runs

    cfg = load_config(str(run["cfg"]))
    out = tmp / "hf"
    r = gemma("export", cfg.train.output_dir, "--format", "hf", "--out", out, "--json")
    assert r.exit_code == 0, r.stderr[-3000:] + r.stdout[-2000:]
    lm = runs.load(cfg, ckptlib.latest(Path(cfg.train.output_dir)), adapters=True)
    return lm, out


def test_paligemma_lora_run_exports_to_transformers(paligemma_runs: dict[str, Any], tmp_path: Path) -> None:
    lm, out = _export_run(paligemma_runs["lora"], tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.model", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    px = pixels(lm.backbone.image_size, 2)
    ours = paligemma_keras_logits(lm, px, PG_TEXT, PG_PREFIX)
    theirs = paligemma_hf_logits(out, px, PG_TEXT, PG_PREFIX)[..., : ours.shape[-1]]
    err = float(np.abs(ours - theirs).max())
    print(f"paligemma2 export max |logit diff| {err:.2e}")
    assert err < 1e-4
    assert_tower_trained(paligemma_runs["lora"], out, "vision_tower.encoder.layers.0.self_attn.q_proj.weight")
    from gemma_cli.engine.model import hf as hf_checkpoint  # and back into gemma

    back = paligemma_keras_logits(hf_checkpoint.load_causal_lm(out, "float32"), px, PG_TEXT, PG_PREFIX)
    assert float(np.abs(back - ours).max()) < 1e-4



def test_paligemma_tower_lora_exports_to_peft(paligemma_runs: dict[str, Any], paligemma_ckpt: Path, tmp_path: Path) -> None:
    """`--format peft` of the run with LoRA on the tower (and on the text query/value): PEFT
    over the base checkpoint gives the run's logits."""
    import json

    import peft
    import torch
    import transformers

    from gemma_cli.config import load_config
    from gemma_cli.engine.model import checkpoint as ckptlib
    from gemma_cli.engine.model import runs

    cfg = load_config(str(paligemma_runs["lora"]["cfg"]))
    r = gemma("export", cfg.train.output_dir, "--format", "peft", "--out", tmp_path / "peft", "--json")
    assert r.exit_code == 0, r.stderr[-3000:] + r.stdout[-2000:]
    targets = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["target_modules"]
    assert "vision_tower" in targets and "language_model" in targets
    lm = runs.load(cfg, ckptlib.latest(Path(cfg.train.output_dir)), adapters=True)
    px = pixels(lm.backbone.image_size, 3)
    ours = paligemma_keras_logits(lm, px, PG_TEXT, PG_PREFIX)
    base = transformers.PaliGemmaForConditionalGeneration.from_pretrained(str(paligemma_ckpt), dtype=torch.float32)
    with_lora = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    theirs = paligemma_hf_logits(with_lora, px, PG_TEXT, PG_PREFIX)[..., : ours.shape[-1]]
    err = float(np.abs(ours - theirs).max())
    print(f"paligemma2 PEFT max |logit diff| {err:.2e}")
    assert err < 1e-4


def assert_tower_trained(run: dict[str, Any], out: Path, key: str) -> None:
    """The export carries the run's merged tower LoRA: this tower weight moved off the base's."""
    from safetensors.numpy import load_file

    from gemma_cli.config import load_config

    base = load_file(str(Path(load_config(str(run["cfg"])).model.preset) / "model.safetensors"))
    assert float(np.abs(load_file(str(out / "model.safetensors"))[key] - base[key]).max()) > 1e-5


def test_gemma4_lora_run_exports_to_transformers(gemma4_runs: dict[str, Any], tmp_path: Path) -> None:
    from hf_tiny import config

    lm, out = _export_run(gemma4_runs["lora"], tmp_path)
    assert config(out)["architectures"] == ["Gemma4ForConditionalGeneration"] and "vision_config" in config(out)
    x = gemma4_inputs(config(out), seed=2)
    ours = gemma4_keras_logits(lm, x)
    theirs = gemma4_hf_logits(out, x)
    err = float(np.abs(ours - theirs).max())
    print(f"gemma4 vision export max |logit diff| {err:.2e}")
    assert err < 1e-4
    assert_tower_trained(gemma4_runs["lora"], out, "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight")
    from gemma_cli.engine.model import hf as hf_checkpoint  # and back into gemma

    assert float(np.abs(gemma4_keras_logits(hf_checkpoint.load_causal_lm(out, "float32"), x) - ours).max()) < 1e-4


# ------------------------------------------------------------------------- bad input ---
@pytest.mark.parametrize("family", ["gemma4", "paligemma"])
def test_audio_part_exits_2_with_file_line(family: str, gemma4_ckpt: Path, paligemma_ckpt: Path,
                                           colour_images: dict[str, Any], tmp_path: Path) -> None:
    """Neither model has an audio encoder gemma loads: an audio part is one `Error:` line naming
    file:line, exit 2, before the model loads."""
    path, c = colour_images["items"][0]
    image = str(colour_images["root"] / path)
    ok = {"messages": [{"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": "hi"}]},
                       {"role": "assistant", "content": c}]}
    bad = {"messages": [{"role": "user", "content": [{"type": "image", "path": image},
                                                     {"type": "audio", "path": "clip.wav"}]},
                        {"role": "assistant", "content": c}]}
    data = write_jsonl(tmp_path / "audio.jsonl", [ok, bad])
    ckpt = gemma4_ckpt if family == "gemma4" else paligemma_ckpt
    r = gemma("finetune", run_config(tmp_path, ckpt, data, data={"sequence_length": 48}))
    assert r.exit_code == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{data}:2" in lines[0] and "audio" in lines[0], lines[0]
