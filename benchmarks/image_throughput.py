"""Images in the data pipeline vs what a training step eats (issue #26).

    python benchmarks/image_throughput.py OUT_DIR [--images 64] [--steps 4] [--skip-step]

1. Writes OUT_DIR/images: photo-sized images (half PNG 1024×768, half JPEG 1600×1200, noisy
   shapes so that they do not compress to nothing) and a chat JSONL naming them, one image per
   record; and OUT_DIR/preset: the bench model's text backbone (benchmarks/make_bench_preset.py
   sizes) with a Gemma 3 vision tower of the real geometry (896-pixel images, 14-pixel patches,
   4096 patches pooled to 256 image tokens) but narrow and one layer deep, so that a CPU step
   is affordable.
2. Pipeline: `gemma_cli.engine.data.build` for one process feeding every stream of a (2, 4)
   mesh, as `gemma finetune` builds it, with `data.workers` 0 (the calling thread) and 2
   threads: images/s decoded, centre-cropped, resized to 896 and scaled, delivered in batches.
3. Step: `gemma finetune` on the same config (LoRA on the text, tower frozen), median step
   time → images/s the step consumes (batch × images per record / step).

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# the tower: Gemma 3's geometry, narrow (hidden 64, 2 heads, MLP 128, one layer)
TOWER = dict(image_size=896, patch_size=14, num_heads=2, hidden_dim=64, num_layers=1, intermediate_dim=128, pool_size=4)
TEXT = dict(num_layers=2, num_query_heads=4, num_key_value_heads=4, hidden_dim=128, intermediate_dim=512, head_dim=32)
BATCH, SEQ = 4, 320  # 256 image tokens + the turn's text


def write_images(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    data = root / "train.jsonl"
    if data.exists() and len(data.read_text().splitlines()) == n:
        return data
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        w, h = (1024, 768) if i % 2 == 0 else (1600, 1200)
        img = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        for _ in range(6):
            y, x = int(rng.integers(0, h - 100)), int(rng.integers(0, w - 100))
            img[y : y + int(rng.integers(50, 300)), x : x + int(rng.integers(50, 300))] = rng.integers(0, 255, 3)
        name = f"{i}.png" if i % 2 == 0 else f"{i}.jpg"
        Image.fromarray(img).save(root / name, **({"quality": 90} if name.endswith(".jpg") else {}))
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "image", "path": name}, {"type": "text", "text": "what is the peak?"}]},
            {"role": "assistant", "content": "the fox jumps over the lazy dog"}]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def write_preset(out: Path) -> Path:
    if (out / "config.json").exists():
        return out
    sys.path.insert(0, str(ROOT))
    import keras
    import keras_hub

    from tests.tiny import tiny_backbone_config, tiny_proto

    keras.utils.set_random_seed(0)
    cfg = {**tiny_backbone_config("gemma3", 128), **TEXT, "sliding_window_size": 512}
    enc = keras_hub.models.Gemma3VisionEncoder(**TOWER, output_dim=cfg["hidden_dim"])
    bb = keras_hub.models.Gemma3Backbone(**{**cfg, "image_size": TOWER["image_size"], "vision_encoder": enc})
    tok = keras_hub.models.Gemma3Tokenizer(proto=tiny_proto(128), has_vision_tokens=True)
    conv = keras_hub.layers.Gemma3ImageConverter(image_size=(896, 896), scale=1 / 127.5, offset=-1.0)
    pre = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer=tok, image_converter=conv, sequence_length=SEQ + 256,
                                                      max_images_per_prompt=1, num_vision_tokens_per_image=256)
    tmp = out.with_name(out.name + ".tmp")
    keras_hub.models.Gemma3CausalLM(backbone=bb, preprocessor=pre).save_to_preset(str(tmp))
    tmp.rename(out)
    return out


def write_config(out: Path, preset: Path, data: Path, workers: int, steps: int) -> Path:
    import yaml

    cfg = {
        "model": {"preset": str(preset), "precision": "float32", "lora": {"rank": 8}},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "data": {"paths": [str(data)], "format": "chat", "sequence_length": SEQ, "batch_size": BATCH, "workers": workers},
        "optimizer": {"name": "adamw", "learning_rate": 1e-3},
        "train": {"max_steps": steps, "output_dir": str(out / f"run_w{workers}"), "log_every": 1},
    }
    p = out / f"config_w{workers}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def pipeline(cfg_path: Path, batches: int) -> dict[str, float]:
    """Images/s the data pipeline delivers (the first batch, the threads' spin-up, not counted)."""
    from gemma_cli.engine.core import runtime

    runtime.setup(without_tensorflow=True)
    import keras_hub

    from gemma_cli.config import load_config
    from gemma_cli.engine.data import build
    from gemma_cli.engine.data.images import VisionSpec

    cfg = load_config(str(cfg_path))
    preset = cfg.model.preset
    tok = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    spec = VisionSpec.of_preset(preset, json.loads((Path(preset) / "config.json").read_text()))
    t0 = time.perf_counter()
    bundle = build(cfg.data, tok, seed=0, streams=(0, 2, 2), vision=spec)
    it = iter(bundle.train)
    x, _, _ = next(it)
    t_first = time.perf_counter() - t0
    t1 = time.perf_counter()
    images = 0
    for _ in range(batches):
        x, _, _ = next(it)
        images += int((abs(x["images"]).reshape(x["images"].shape[0], x["images"].shape[1], -1).max(-1) > 0).sum())
    dt = time.perf_counter() - t1
    return {"workers": bundle.info.workers, "images_per_second": images / dt, "images": images, "seconds": round(dt, 3),
            "first_batch_seconds": round(t_first, 3)}


def step(cfg_path: Path) -> dict[str, float | None]:
    """`gemma finetune` on the config: the median step time (metrics.jsonl) → images/s eaten."""
    import yaml

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "TF_CPP_MIN_LOG_LEVEL": "3"}
    gemma = str(Path(sys.executable).parent / "gemma")
    p = subprocess.run([gemma, "finetune", str(cfg_path), "--json", "--quiet"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=900)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1][:300] if (p.stderr or p.stdout) else "failed"}
    out = Path(yaml.safe_load(cfg_path.read_text())["train"]["output_dir"])
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    el = [(r["step"], r["elapsed"]) for r in recs if "elapsed" in r]
    diffs = sorted((e2 - e1) / (s2 - s1) for (s1, e1), (s2, e2) in zip(el[1:], el[2:], strict=False) if s2 > s1)
    s = diffs[len(diffs) // 2] if diffs else None
    return {"step_seconds": s, "images_per_second": BATCH / s if s else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip-step", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    t = time.perf_counter()
    data = write_images(out / "images", a.images)
    preset = write_preset(out / "vision_preset")
    setup = time.perf_counter() - t
    doc: dict[str, object] = {"setup_seconds": round(setup, 1), "batch": BATCH, "sequence_length": SEQ, "tower": TOWER,
                              "pipeline": {}}
    for w in (0, 2):
        doc["pipeline"][f"workers_{w}"] = pipeline(write_config(out, preset, data, w, a.steps), a.batches)  # type: ignore[index]
    if not a.skip_step:
        doc["step"] = step(write_config(out, preset, data, 0, a.steps))
    doc["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
