"""Gemma 3 270M LoRA training step on a GPU: step time, tokens/s, MFU → gpu_result.json.

Runs where keras + keras-hub + jax[cuda] are installed but TensorFlow is not (the lent GPU
machine): the model is built from benchmarks/gemma3_270m_config.json (the converted preset's
architecture) with random weights, and fit() is fed numpy batches. The training step is the
one `gemma finetune` compiles: enable_lora, AdamW, SparseCategoricalCrossentropy(from_logits),
weighted SparseCategoricalAccuracy; single device.

  python benchmarks/gpu_train.py OUT.json [--steps 30]

FLOPs per token: 6 × params (forward 2N, backward 4N: the convention for a full fine-tune);
with LoRA the frozen weights need no weight gradient, so the work actually done is ≈ 4 × N
(+ the adapters'); MFU is given for both, against the H100 SXM's dense bf16 peak 989 TFLOP/s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

PEAK = 989e12  # H100 SXM dense bf16 (no sparsity)


def measure(cfg: dict, dtype: str, batch: int, seq: int, steps: int, lora: int | None) -> dict:
    import keras
    import keras_hub
    import numpy as np

    keras.utils.set_random_seed(0)
    bb = keras_hub.models.Gemma3Backbone(**{**cfg, "dtype": dtype})
    lm = keras_hub.models.Gemma3CausalLM(backbone=bb, preprocessor=None)
    if lora:
        bb.enable_lora(lora)
    n_params = int(sum(np.prod(v.shape) for v in lm.weights))
    n_train = int(sum(np.prod(v.shape) for v in lm.trainable_weights))
    lm.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    rng = np.random.default_rng(0)
    n = batch * steps
    ids = rng.integers(3, cfg["vocabulary_size"], size=(n, seq + 1), dtype=np.int32)
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((n, seq), dtype=bool)}
    y, sw = ids[:, 1:], np.ones((n, seq), dtype=np.float32)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, b, logs=None):  # noqa: ANN001
            float((logs or {}).get("loss", 0.0))
            times.append(time.perf_counter())

    t0 = time.perf_counter()
    # keras.Model.fit: keras-hub's PipelineModel.fit wants tf/grain even with no preprocessor
    keras.Model.fit(lm, x, y, sample_weight=sw, batch_size=batch, epochs=1,
           verbose=0, callbacks=[Timer()], shuffle=False)
    d = np.diff(np.array(times))
    step = float(np.median(d[2:])) if len(d) > 3 else float(np.median(d))
    tokens = batch * seq
    tps = tokens / step
    return {
        "dtype": dtype, "lora": lora, "batch": batch, "seq": seq, "steps": len(times),
        "params": n_params, "trainable": n_train,
        "step_s": step, "tokens_per_s": tps, "time_to_first_step_s": times[0] - t0,
        "mfu_6N": 6 * n_params * tps / PEAK, "mfu_4N": (4 * n_params + 2 * n_train) * tps / PEAK,
    }


def main() -> None:
    out = Path(sys.argv[1])
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 30
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax

    cfg = json.loads((Path(__file__).parent / "gemma3_270m_config.json").read_text())["config"]
    for k in ("name", "trainable", "dtype"):
        cfg.pop(k, None)
    dev = str(jax.devices()[0].device_kind)
    runs = []
    for dtype, batch, seq, lora in (("bfloat16", 16, 512, 8), ("float32", 16, 512, 8), ("bfloat16", 32, 1024, 8), ("bfloat16", 16, 512, None)):
        try:
            r = measure(cfg, dtype, batch, seq, steps, lora)
        except Exception as e:  # record, go on
            r = {"dtype": dtype, "batch": batch, "seq": seq, "lora": lora, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps(r), flush=True)
        runs.append(r)
    out.write_text(json.dumps({"device": dev, "jax": jax.__version__, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
