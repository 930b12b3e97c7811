"""The plain keras-hub baseline: the distributed-tuning tutorial's few lines, timed.

DeviceMesh + LayoutMap (gemma's Gemma 3 rules, copied) + ModelParallel, CausalLM.from_preset
in the distribution's scope, enable_lora, compile with AdamW, fit on a tf.data of token batches
made by the model's own preprocessor (padded to sequence_length; no packing). Prints one JSON
line with the same timings `gemma finetune --json` reports:

  python benchmarks/baseline_keras_hub.py --preset DIR --data corpus.jsonl --seq 128 \
      --batch 8 --steps 20 --mesh 2,4 --lora 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T_PROCESS = time.time()

# gemma_cli/engine/families/gemma3.py RULES, on a mesh whose axes are (batch, model).
RULES = [
    ("token_embedding/embeddings", ("model", "batch")),
    ("decoder_block.*attention.*(query|key|value).kernel", ("model", "batch", None)),
    ("decoder_block.*attention_output.kernel", ("model", None, "batch")),
    ("decoder_block.*ffw_gating.*kernel", ("batch", "model")),
    ("decoder_block.*ffw_linear.kernel", ("model", "batch")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--data", required=True, help="JSONL with a 'text' field")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mesh", default="2,4")
    ap.add_argument("--lora", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--sync-every", type=int, default=10,
                    help="read the loss (a host sync) after the first step and every N steps, as gemma's log_every")
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
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    t_import = time.time()

    shape = tuple(int(s) for s in a.mesh.split(","))
    device_mesh = keras.distribution.DeviceMesh(
        shape=shape, axis_names=["batch", "model"], devices=keras.distribution.list_devices()
    )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in RULES:
        layout_map[pattern] = axes
    model_parallel = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")

    with model_parallel.scope():
        gemma_lm = keras_hub.models.CausalLM.from_preset(a.preset)
        gemma_lm.backbone.enable_lora(rank=a.lora)
        gemma_lm.preprocessor.sequence_length = a.seq

    texts = [json.loads(line)["text"] for line in open(a.data, encoding="utf-8") if line.strip()]
    # <bos> text <eos>, cut/padded to seq + 1, then shifted: what CausalLMPreprocessor does
    tok = gemma_lm.preprocessor.tokenizer
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=a.seq + 1, start_value=tok.start_token_id, end_value=tok.end_token_id,
        pad_value=tok.pad_token_id, return_padding_mask=True,
    )
    ids, mask = packer(tok(texts))
    ids, mask = np.asarray(ids), np.asarray(mask)
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    y, sw = ids[:, 1:], mask[:, 1:].astype("float32")
    useful_fraction = float(sw.sum()) / sw.size
    ds = (
        tf.data.Dataset.from_tensor_slices((x, y, sw))
        .shuffle(len(texts), seed=0)
        .repeat()
        .batch(a.batch, drop_remainder=True)
    )
    gemma_lm.preprocessor = None  # the batches are already tokenized
    t_load = time.time()

    times: list[float] = []  # at the syncs
    synced: list[int] = []  # the steps they closed

    class Timer(keras.callbacks.Callback):
        # reads the loss where gemma does (step 1, every log_every steps, the last step): the
        # time between two syncs is the steps' compute, dispatch overlapping it in between
        def on_train_batch_end(self, batch, logs=None):  # noqa: ANN001
            step = batch + 1
            if step == 1 or step % a.sync_every == 0 or step == a.steps:
                float((logs or {}).get("loss", 0.0))
                times.append(time.time())
                synced.append(step)

    with model_parallel.scope():
        gemma_lm.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            optimizer=keras.optimizers.AdamW(learning_rate=a.lr, weight_decay=0.01),
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
        )
        t0 = time.time()
        gemma_lm.fit(ds, epochs=1, steps_per_epoch=a.steps, verbose=0, callbacks=[Timer()])
    # per-step time of each window between syncs (the first step, which compiles, excluded)
    steps = np.diff(np.array(times)) / np.maximum(np.diff(np.array(synced)), 1)
    step_s = float((times[-1] - times[0]) / (synced[-1] - synced[0])) if len(times) > 1 else None
    step_med = float(np.median(steps)) if len(steps) else None
    tokens = a.batch * a.seq
    print(
        json.dumps(
            {
                "steps": synced[-1] if synced else 0,
                "step_seconds": step_s,
                "step_seconds_median": step_med,
                "tokens_per_second": tokens / step_med if step_med else None,
                "useful_tokens_per_second": tokens * useful_fraction / step_med if step_med else None,
                "useful_fraction": useful_fraction,
                "time_to_first_step": times[0] - t0 if times else None,
                "import_seconds": t_import - T_PROCESS,
                "load_seconds": t_load - t_import,
                "wall_seconds": time.time() - T_PROCESS,
                "params": int(sum(np.prod(v.shape) for v in gemma_lm.weights)),
                "trainable": int(sum(np.prod(v.shape) for v in gemma_lm.trainable_weights)),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
