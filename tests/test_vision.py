"""Images in, text out: a tiny random Gemma 3 vision model (tests/tiny.py) learns to name the
colour of a shape drawn here, and every bad image input exits 2 with file:line before the
model loads.

One fine-tune for the module (`vision_run`): LoRA on the text backbone, the vision tower frozen
(the default), on 8 simulated devices at (2, 4). Held-out images are new shapes at new
positions, sizes and shades; accuracy is read from the model's first answer token.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gemma_cli.cli import app

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220)}
QUESTION = "what colour?"


def gemma(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def draw(path: Path, colour: str, rng: Any, size: int = 40) -> Path:
    """A shape (square or disc) of `colour` (shade jittered) at a random place on grey."""
    import numpy as np
    from PIL import Image

    img = np.full((size, size, 3), 128, dtype=np.uint8)
    base = np.array(COLOURS[colour], dtype=np.int64)
    shade = np.clip(base + rng.integers(-25, 26, 3), 0, 255).astype(np.uint8)
    r = int(rng.integers(11, 17))
    cy, cx = (int(v) for v in rng.integers(r - 4, size - r + 4, 2))
    yy, xx = np.mgrid[:size, :size]
    if rng.integers(2):
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    else:
        m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    img[m] = shade
    Image.fromarray(img).save(path)
    return path


def record(image: str, answer: str) -> dict[str, Any]:
    return {"messages": [
        {"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": answer},
    ]}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_config(tmp: Path, preset: Path, data_path: Path, **over: Any) -> Path:
    d: dict[str, Any] = {
        "model": {"preset": str(preset), "precision": "float32", "lora": {"rank": 8}},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "data": {"paths": [str(data_path)], "format": "chat", "sequence_length": 48, "batch_size": 8},
        "optimizer": {"name": "adamw", "learning_rate": 3e-2},
        "train": {"max_steps": 150, "output_dir": str(tmp / "out"), "log_every": 20},
    }
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v}
    p = tmp / "run.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def vision_preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny import make_tiny_vision_preset

    return make_tiny_vision_preset(tmp_path_factory.mktemp("vision") / "tiny_gemma3_vision")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Training and held-out images (relative paths in the JSONL) and their colours."""
    import numpy as np

    root = tmp_path_factory.mktemp("shapes")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    train, held = [], []
    for i in range(96):
        c = names[i % 3]
        draw(root / "img" / f"t{i}.png", c, rng)
        train.append(record(f"img/t{i}.png", c))
    for i in range(30):
        c = names[i % 3]
        held.append((draw(root / "img" / f"h{i}.png", c, rng), c))
    return {"root": root, "train": write_jsonl(root / "train.jsonl", train), "held": held}


@pytest.fixture(scope="module")
def vision_run(vision_preset: Path, shapes: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("vision_run")
    cfg = run_config(tmp, vision_preset, shapes["train"])
    before = held_out_accuracy(cfg, shapes["held"], checkpoint=False)
    r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, r.stderr + r.stdout[-2000:]
    after = held_out_accuracy(cfg, shapes["held"], checkpoint=True)
    return {"cfg": cfg, "tmp": tmp, "summary": json.loads(r.stdout), "before": before, "after": after}


def held_out_accuracy(cfg_path: Path, held: list[tuple[Path, str]], *, checkpoint: bool) -> float:
    """Share of held-out images whose colour the model's first answer token names (greedy,
    over the three colour words' first tokens), loaded as `gemma generate` loads a run."""
    import numpy as np

    from gemma_cli.config import load_config
    from gemma_cli.engine.data import Renderer
    from gemma_cli.engine.data.images import VisionSpec, ref
    from gemma_cli.engine.data.pack import ImageSlots, RowBuilder
    from gemma_cli.engine.data.tokenize import Doc, Encoder
    from gemma_cli.engine.model import checkpoint as ckptlib
    from gemma_cli.engine.model import load as modellib
    from gemma_cli.engine.model import runs

    cfg = load_config(str(cfg_path))
    ckpt = ckptlib.latest(Path(cfg.train.output_dir)) if checkpoint else None
    lm = runs.load(cfg, ckpt, adapters=True)
    spec = VisionSpec.of_model(lm)
    enc = Encoder(modellib.tokenizer_of(lm), spec)
    slots = ImageSlots(spec.image_size, spec.tokens_per_image, spec.max_images, enc.special("<img>"))
    stop = enc.special("<end_of_turn>")
    prompts, pixels = [], []
    for path, _ in held:
        image = ref("held", str(path), "image")
        ids_per, _ = enc.pieces_of(Renderer.for_chat().prompt([("user", QUESTION)], images=[image]))
        prompts.append([t for x in ids_per for t in x])
        pixels.append(image.pixels(spec))
    answers: list[list[int]] = [[] for _ in held]
    for _ in range(8):  # greedy, one token at a time (the model as a user's generate sees it)
        rows, last = [], []
        for p, a, px in zip(prompts, answers, pixels, strict=True):
            ids = np.array([*p, *a, 0], dtype=np.int32)
            b = RowBuilder(48, enc.pad_id, slots)
            b.add(Doc(ids, np.zeros(len(ids), np.float32), "held", images=[px]))
            rows.append(b.take(0).arrays)
            last.append(len(ids) - 2)
        x = {k: np.stack([r[k] for r in rows]) for k in ("token_ids", "images", "vision_indices", "vision_mask")}
        x["padding_mask"] = np.stack([r["segment_ids"] > 0 for r in rows]).astype("int32")
        logits = np.asarray(lm(x))
        for i, a in enumerate(answers):
            if not a or a[-1] != stop:
                a.append(int(logits[i, last[i]].argmax()))
    said = [enc.decode([t for t in a if t != stop]).strip() for a in answers]
    return sum(s == c for s, (_, c) in zip(said, held, strict=True)) / len(held)


# --------------------------------------------------------------------------- learning ---
def test_lora_learns_colours_from_images(vision_run: dict[str, Any]) -> None:
    assert vision_run["before"] <= 0.6, vision_run
    assert vision_run["after"] >= 0.9, vision_run
    print(f"held-out accuracy {vision_run['before']:.2f} -> {vision_run['after']:.2f}")
    assert vision_run["summary"]["final_loss"] < vision_run["summary"]["first_loss"]


# ------------------------------------------------------------------------ the tower plan ---
@pytest.mark.parametrize(("shape", "vision"), [((1, 8), "lora"), ((2, 4), "frozen"), ((8, 1), "lora")])
def test_tower_plan_equals_live(vision_preset: Path, shapes: dict[str, Any], tmp_path: Path, shape: tuple[int, int],
                                vision: str) -> None:
    """The vision tower's default layout: planned without weights, then the live variables
    under the distribution carry exactly the planned specs, on (1, 8), (2, 4) and (8, 1)
    (LoRA on text; the tower frozen, or with its own adapters for `model.vision: lora`)."""
    from gemma_cli.config import load_config
    from gemma_cli.engine.model import runs
    from gemma_cli.engine.plan import layout as layoutlib

    path = run_config(tmp_path, vision_preset, shapes["train"], mesh={"shape": list(shape)}, model={"vision": vision})
    cfg = load_config(str(path))
    lay = layoutlib.layout_for(cfg)
    planned = {v.path: tuple(v.spec) for v in lay.plan.variables}
    assert planned["image_encoder/encoder_block_0/multi_head_attention/query_proj/kernel"] == ("batch", "model")
    assert planned["image_encoder/encoder_block_0/multi_head_attention/out_proj/kernel"] == ("model", "batch")
    assert planned["image_encoder/encoder_block_0/mlp_dense_2/kernel"] == ("model", "batch")
    assert planned["vision_output_encoder/vision_input_projection/kernel"] == ("batch", "model")
    assert any("query_proj/lora" in p for p in planned) == (vision == "lora")
    lm = runs.load(cfg, distribution=lay.distribution, adapters=True)
    live = {}
    for v in lm.backbone.weights:
        spec = tuple(v.value.sharding.spec)
        live[v.path] = spec + (None,) * (len(v.shape) - len(spec))
    assert set(live) == set(planned)
    assert live == planned
    trainable = {v.path for v in lm.backbone.vision_encoder.weights if v.trainable}
    assert all("lora_kernel" in p for p in trainable) and bool(trainable) == (vision == "lora")


# -------------------------------------------------------------------------- bad input ---
def _bad(tmp: Path, preset: Path, rows: list[dict[str, Any]], **over: Any) -> str:
    data = write_jsonl(tmp / "bad.jsonl", rows)
    r = gemma("finetune", run_config(tmp, preset, data, **over))
    assert r.exit_code == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_missing_image_names_file_line(vision_preset: Path, shapes: dict[str, Any], tmp_path: Path) -> None:
    ok = record(str(shapes["root"] / "img" / "t0.png"), "red")
    line = _bad(tmp_path, vision_preset, [ok, record("nowhere.png", "red")])
    assert "bad.jsonl:2" in line and "nowhere.png" in line and "does not exist" in line


def test_corrupt_image(vision_preset: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    line = _bad(tmp_path, vision_preset, [record("broken.png", "red")])
    assert "bad.jsonl:1" in line and "broken.png" in line


def test_web_url_refused(vision_preset: Path, tmp_path: Path) -> None:
    rec = {"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                                     {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "red"}]}
    line = _bad(tmp_path, vision_preset, [rec])
    assert "bad.jsonl:1" in line and "download the image first" in line


def test_too_many_images(vision_preset: Path, shapes: dict[str, Any], tmp_path: Path) -> None:
    img = str(shapes["root"] / "img" / "t0.png")
    rec = {"messages": [{"role": "user", "content": "<image><image><image> which?"},
                        {"role": "assistant", "content": "red"}], "images": [img, img, img]}
    line = _bad(tmp_path, vision_preset, [rec])
    assert "bad.jsonl:1" in line and "3 images" in line and "at most 2" in line


def test_audio_part_refused(vision_preset: Path, tmp_path: Path) -> None:
    rec = {"messages": [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGR...", "format": "wav"}},
                                     {"type": "text", "text": "what is said?"}]},
        {"role": "assistant", "content": "hello"}]}
    line = _bad(tmp_path, vision_preset, [rec])
    assert "bad.jsonl:1" in line and "audio" in line and "audio encoder" in line


def test_image_for_text_only_preset(tiny_gemma3: Path, shapes: dict[str, Any], tmp_path: Path) -> None:
    line = _bad(tmp_path, tiny_gemma3, [record(str(shapes["root"] / "img" / "t0.png"), "red")])
    assert "bad.jsonl:1" in line and "text-only" in line and str(tiny_gemma3) in line and "gemma3_4b" in line


def test_packing_with_images_refused(vision_preset: Path, shapes: dict[str, Any], tmp_path: Path) -> None:
    line = _bad(tmp_path, vision_preset, [record(str(shapes["root"] / "img" / "t0.png"), "red")],
                data={"packing": True})
    assert "data.packing" in line and "never packed" in line


# ------------------------------------------------------------------- data: image forms ---
def test_image_forms_place_tokens_where_the_image_is(vision_preset: Path, shapes: dict[str, Any]) -> None:
    """Path (relative to the data file), base64, data URL and the `images` list with `<image>`
    give the same tokens and pixels; image tokens and the prompt carry no loss."""
    import numpy as np

    from gemma_cli.engine.data import Renderer
    from gemma_cli.engine.data.images import VisionSpec
    from gemma_cli.engine.data.tokenize import Encoder

    raw = (shapes["root"] / "img" / "t1.png").read_bytes()
    b64 = base64.b64encode(raw).decode()
    forms = [
        [{"type": "image", "path": "img/t1.png"}, {"type": "text", "text": QUESTION}],
        [{"type": "image", "base64": b64}, {"type": "text", "text": QUESTION}],
        [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}, {"type": "text", "text": QUESTION}],
    ]
    recs = [{"messages": [{"role": "user", "content": c}, {"role": "assistant", "content": "green"}]} for c in forms]
    recs.append({"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                              {"role": "assistant", "content": "green"}], "images": ["img/t1.png"]})
    import keras_hub

    tok = keras_hub.tokenizers.Tokenizer.from_preset(str(vision_preset))
    spec = VisionSpec.of_preset(str(vision_preset), json.loads((vision_preset / "config.json").read_text()))
    assert (spec.image_size, spec.tokens_per_image, spec.max_images) == (16, 4, 2)
    cfg = type("D", (), dict(template=None, format="chat", messages_field=None, loss_on="assistant", field="text",
                             response_field=None, packing=False))()
    r = Renderer(cfg, vision=spec)
    enc = Encoder(tok, spec)
    where = f"{shapes['root'] / 'train.jsonl'}:1"
    docs = [enc.doc(r(where, rec), 48) for rec in recs]
    for d in docs[1:]:
        assert np.array_equal(d.ids, docs[0].ids) and np.allclose(d.images[0], docs[0].images[0])
    soft = enc.special("<img>")
    at = np.nonzero(docs[0].ids == soft)[0]
    assert len(at) == 4 and np.all(docs[0].weights[at] == 0) and np.all(docs[0].weights[: at[-1] + 2] == 0)
    assert docs[0].ids[at[0] - 1] == enc.special("<start_of_image>")


def test_resize_matches_keras_hub_converter(vision_preset: Path, shapes: dict[str, Any]) -> None:
    """Decoded and resized as keras-hub's Gemma3ImageConverter does (crop to square, bilinear)."""
    import keras_hub
    import numpy as np
    from PIL import Image

    from gemma_cli.engine.data.images import ImageRef, VisionSpec

    path = shapes["root"] / "wide.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(path)
    spec = VisionSpec(16, 4)
    ours = ImageRef("x", path=str(path)).pixels(spec)
    conv = keras_hub.layers.Gemma3ImageConverter(image_size=(16, 16), scale=1 / 127.5, offset=-1.0)
    theirs = np.asarray(conv(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)[None]))[0]
    assert np.abs(ours - theirs).max() < 1e-4


# ------------------------------------------------------------------------- generation ---
def test_generate_with_image_names_the_colour(vision_run: dict[str, Any], shapes: dict[str, Any]) -> None:
    """`gemma generate RUN --chat --image img.png -p ...` on the fine-tuned run."""
    out = vision_run["tmp"] / "out"
    said = {}
    for path, colour in shapes["held"][:3]:
        r = gemma("generate", out, "--chat", "--image", path, "-p", QUESTION, "--max-new-tokens", "8", "--jsonl")
        assert r.exit_code == 0, r.stderr[-2000:]
        said[colour] = json.loads(r.stdout.strip().splitlines()[-1])["completion"].strip()
    assert said == {c: c for c in said}, said


def test_generate_image_on_text_only_model_refused(tiny_gemma3: Path, shapes: dict[str, Any]) -> None:
    r = gemma("generate", tiny_gemma3, "--chat", "--image", shapes["held"][0][0], "-p", "hi")
    assert r.exit_code == 2
    assert "text-only" in r.stderr and "Traceback" not in r.stderr


def test_generate_jsonl_prompts_with_image_parts(vision_run: dict[str, Any], shapes: dict[str, Any]) -> None:
    """`gemma generate RUN --chat --prompt-file prompts.jsonl`: chat records whose image parts
    (paths relative to the file) and `images` lists differ per prompt, in one batch."""
    held = shapes["held"][3:7]
    rows = [record(Path(p).name, c) for p, c in held[:3]]
    rows.append({"prompt": f"<image>{QUESTION}", "images": [Path(held[3][0]).name]})
    prompts = write_jsonl(Path(held[0][0]).parent / "prompts.jsonl", rows)
    r = gemma("generate", vision_run["tmp"] / "out", "--chat", "--prompt-file", prompts, "--max-new-tokens", "8",
              "--jsonl")
    assert r.exit_code == 0, r.stderr[-2000:]
    said = [json.loads(line)["completion"].strip() for line in r.stdout.strip().splitlines()]
    assert said == [c for _, c in held], said


def test_eval_scores_image_records(vision_run: dict[str, Any], shapes: dict[str, Any], tmp_path: Path) -> None:
    """`gemma eval RUN --data held.jsonl`: chat records with images, generated and scored by
    likelihood with their images."""
    data = write_jsonl(tmp_path / "held.jsonl", [record(str(p), c) for p, c in shapes["held"][:6]])
    r = gemma("eval", vision_run["tmp"] / "out", "--data", data, "--reward", "contains", "--json")
    assert r.exit_code == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    metrics = doc["targets"][0]["metrics"]
    names = list(COLOURS)
    wrong = [record(str(p), names[(names.index(c) + 1) % 3]) for p, c in shapes["held"][:6]]
    r = gemma("eval", vision_run["tmp"] / "out", "--data", write_jsonl(tmp_path / "wrong.jsonl", wrong), "--json",
              "--no-generate")
    assert r.exit_code == 0, r.stderr[-2000:]
    worse = json.loads(r.stdout)["targets"][0]["metrics"]["loss"]
    print(f"eval on images: contains {metrics['reward contains']}, reference loss {metrics['loss']:.3f} "
          f"(a wrong colour: {worse:.3f})")
    assert metrics["reward contains"] >= 0.8 and metrics["loss"] < worse - 0.5


def test_eval_image_records_on_text_only_model_refused(tiny_gemma3: Path, shapes: dict[str, Any], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "held.jsonl", [record(str(p), c) for p, c in shapes["held"][:2]])
    r = gemma("eval", tiny_gemma3, "--data", data, "--reward", "contains")
    assert r.exit_code == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "held.jsonl:1" in lines[0] and "text-only" in lines[0], r.stderr


def test_export_hf_of_vision_run_equals_transformers(vision_run: dict[str, Any], shapes: dict[str, Any]) -> None:
    """`gemma export RUN --format hf` of the keras-preset vision run: transformers' logits on a
    held-out image + question equal the run's (float32; the same pixels fed to both)."""
    import numpy as np
    from hf_tiny import vision_logits

    from gemma_cli import targets
    from gemma_cli.engine.data import Renderer
    from gemma_cli.engine.data.images import SOFT, VisionSpec, ref
    from gemma_cli.engine.data.tokenize import Encoder
    from gemma_cli.engine.model import load as modellib
    from gemma_cli.engine.model import runs

    out = vision_run["tmp"] / "hf"
    r = gemma("export", vision_run["tmp"] / "out", "--format", "hf", "--out", out, "--json")
    assert r.exit_code == 0, r.stderr[-2000:]
    t = targets.resolve(str(vision_run["tmp"] / "out"), verb="export")
    lm = runs.load(t.config, t.checkpoint)
    spec = VisionSpec.of_model(lm)
    enc = Encoder(modellib.tokenizer_of(lm), spec)
    image = ref("held", str(shapes["held"][0][0]), "image")
    ids_per, _ = enc.pieces_of(Renderer.for_chat().prompt([("user", QUESTION)], images=[image]))
    ids = np.array([[t for x in ids_per for t in x]])
    soft = enc.special(SOFT)
    pixels = image.pixels(spec)[None]
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids), "images": pixels[None],
         "vision_indices": np.nonzero(ids[0] == soft)[0][None].astype("int32"), "vision_mask": (ids == soft).astype("int32")}
    ours = np.asarray(lm(x))
    theirs = vision_logits(out, list(ids[0]), pixels, soft)
    print(f"keras-preset vision run vs its HF export: max |diff| {np.abs(ours - theirs).max():.2e}")
    assert np.abs(ours - theirs).max() <= 1e-4
