"""Packing that keeps documents apart vs unpacked padded batches: useful tokens per second.

The same texts three ways, as LoRA train steps of the same model on the same mesh:
  unpacked      one text per row, padded (keras-hub's own preprocessing);
  packed        whole texts packed one after another into rows, segment ids 1..k in
                `padding_mask` (gemma_cli/engine/patches/segments.py): no attention across texts;
  packed, 0/1   the same packed rows with a plain 0/1 mask (texts attend to earlier texts):
                the cost of the segment-aware mask itself.
A text longer than a row is cut; each text goes into the first row with room for it (texts
are not split across rows). Useful tokens are target positions with sample weight 1 (not padding, not the first
token of the next text). The variants take turns step by step (A B C A B C ...), `--steps`
timed steps each after a first one that compiles; medians; one JSON line:

  python benchmarks/segments_bench.py --preset DIR --data corpus.jsonl --seq 128 --batch 8 \
      --steps 20 --mesh 2,4 --lora 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pack(docs: list[list[int]], width: int, pad: int) -> tuple[list[list[int]], list[list[int]]]:
    """Whole docs (cut to `width`) first-fit into rows of `width`; (ids, segment ids 1..k, 0 = pad)."""
    rows: list[list[int]] = []
    segs: list[list[int]] = []
    for d in docs:
        d = d[:width]
        r = next((i for i, row in enumerate(rows) if len(row) + len(d) <= width), None)
        if r is None:
            rows.append([])
            segs.append([])
            r = -1
        segs[r] += [(segs[r][-1] + 1) if segs[r] else 1] * len(d)
        rows[r] += d
    for r, s in zip(rows, segs, strict=True):
        s += [0] * (width - len(r))
        r += [pad] * (width - len(r))
    return rows, segs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--data", required=True, help="JSONL with a 'text' field")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--mesh", default="2,4")
    ap.add_argument("--lora", type=int, default=8)
    ap.add_argument("--cpu-devices", type=int, default=8)
    a = ap.parse_args()

    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if a.cpu_devices:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.cpu_devices}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import keras
    import keras_hub
    import numpy as np

    from gemma_cli.engine.patches.segments import enable_segment_attention

    shape = tuple(int(s) for s in a.mesh.split(","))
    mesh = keras.distribution.DeviceMesh(shape=shape, axis_names=["batch", "model"], devices=keras.distribution.list_devices())
    layout = keras.distribution.LayoutMap(mesh)
    for pattern, axes in [  # gemma's Gemma 3 rules (as benchmarks/baseline_keras_hub.py)
        ("token_embedding/embeddings", ("model", "batch")),
        ("decoder_block.*attention.*(query|key|value).kernel", ("model", "batch", None)),
        ("decoder_block.*attention_output.kernel", ("model", None, "batch")),
        ("decoder_block.*ffw_gating.*kernel", ("batch", "model")),
        ("decoder_block.*ffw_linear.kernel", ("model", "batch")),
    ]:
        layout[pattern] = axes
    dist = keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")

    def model(segments: bool) -> object:
        keras.utils.set_random_seed(0)
        with dist.scope():
            lm = keras_hub.models.CausalLM.from_preset(a.preset, preprocessor=None)
            lm.backbone.enable_lora(rank=a.lora)
            if segments:
                enable_segment_attention(lm.backbone)
            lm.compile(
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                optimizer=keras.optimizers.AdamW(learning_rate=3e-4, weight_decay=0.01),
                weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
            )
        return lm

    tok = keras_hub.tokenizers.Tokenizer.from_preset(a.preset)
    texts = [json.loads(line)["text"] for line in open(a.data, encoding="utf-8") if line.strip()]
    docs = [[tok.start_token_id, *map(int, t), tok.end_token_id] for t in tok(texts)]
    width = a.seq + 1
    unpacked_ids = [d[:width] + [tok.pad_token_id] * (width - len(d[:width])) for d in docs]
    unpacked_seg = [[1] * len(d[:width]) + [0] * (width - len(d[:width])) for d in docs]
    packed_ids, packed_seg = pack(docs, width, tok.pad_token_id)

    def batches(ids: list[list[int]], seg: list[list[int]], binary: bool) -> tuple[list[tuple], float]:
        ids_a, seg_a = np.array(ids, "int32"), np.array(seg, "int32")
        weight = ((seg_a[:, 1:] != 0) & (seg_a[:, 1:] == seg_a[:, :-1])).astype("float32")
        mask = (seg_a[:, :-1] != 0).astype("int32") if binary else seg_a[:, :-1]
        n = len(ids_a) // a.batch * a.batch
        out = [({"token_ids": ids_a[i : i + a.batch, :-1], "padding_mask": mask[i : i + a.batch]},
                ids_a[i : i + a.batch, 1:], weight[i : i + a.batch]) for i in range(0, n, a.batch)]
        return out, float(weight[:n].sum() / weight[:n].size)

    plain, seg_lm = model(False), model(True)
    variants = {
        "unpacked": (plain, *batches(unpacked_ids, unpacked_seg, True)),
        "packed": (seg_lm, *batches(packed_ids, packed_seg, False)),
        "packed_01_mask": (plain, *batches(packed_ids, packed_seg, True)),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(a.steps + 1):  # one step of each variant in turn
        for name, (lm, data, _) in variants.items():
            x, y, w = data[i % len(data)]
            t = time.perf_counter()
            with dist.scope():
                logs = lm.train_on_batch(x, y, sample_weight=w, return_dict=True)
            float(logs["loss"])
            if i:  # the first step compiles
                times[name].append(time.perf_counter() - t)
    tokens = a.batch * a.seq
    result = {"seq": a.seq, "batch": a.batch, "texts": len(docs), "steps_per_variant": len(times["packed"])}
    for name, (_, data, frac) in variants.items():
        step = float(np.median(times[name]))
        result[name] = {"rows": len(data) * a.batch, "useful_fraction": frac, "step_seconds": step,
                        "tokens_per_second": tokens / step, "useful_tokens_per_second": tokens * frac / step}
    result["packed_vs_unpacked_useful_tps"] = result["packed"]["useful_tokens_per_second"] / result["unpacked"]["useful_tokens_per_second"]
    result["segment_mask_step_cost"] = result["packed"]["step_seconds"] / result["packed_01_mask"]["step_seconds"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
