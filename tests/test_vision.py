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


def run_config(tmp: Path, preset: Path, data: Path, **over: Any) -> Path:
    d: dict[str, Any] = {
        "model": {"preset": str(preset), "precision": "float32", "lora": {"rank": 8}, "vision": "lora"},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "data": {"paths": [str(data)], "format": "chat", "sequence_length": 48, "batch_size": 8},
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
