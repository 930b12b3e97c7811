"""Likelihood scoring (gemma eval's `Scorer`) vs the forward pass of a training step, tokens/s.

Loads CONFIG's model on its mesh (as `gemma eval` does), then times, on the same batch of
B × S tokens, warm calls (after one compiling call each) of
  - `Scorer.score`: teacher-forced log-probs of every token (the chunked head of training's loss);
  - a training step's forward: the compiled model's logits and its cross-entropy loss, jitted.
Prints one JSON document: tokens/s of each and their ratio.

Run: python benchmarks/eval_speed.py CONFIG [--batch 4] [--seq 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    from gemma_cli.config import load_config
    from gemma_cli.engine.core import runtime

    runtime.setup()
    runtime.silence_keras_stdout()
    import jax
    import keras
    import numpy as np

    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.evaluate.likelihood import Scorer
    from gemma_cli.engine.sample.generate import Generator

    cfg = load_config(a.config, a.overrides)
    gen = Generator(cfg, NullReporter(), None, a.batch)
    lm = gen.lm
    rng = np.random.default_rng(0)
    vocab = int(lm.backbone.vocabulary_size)
    ids = rng.integers(4, vocab, size=(gen.batch_size, a.seq), dtype=np.int32)
    ids[:, 0] = int(gen.tokenizer.start_token_id)
    docs = [(row, np.ones(a.seq, np.float32)) for row in ids]
    scorer = Scorer(lm, gen.distribution, batch_axis=gen.batch_axis, batch_size=gen.batch_size)

    def timed(fn) -> float:
        fn()  # compiles
        best = float("inf")
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    t_score = timed(lambda: scorer.score(docs))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    tv = [v.value for v in lm.trainable_variables]
    ntv = [v.value for v in lm.non_trainable_variables]

    @jax.jit
    def forward(tv, ntv, x, y):
        logits, _ = lm.stateless_call(tv, ntv, x, training=False)
        return loss_fn(y, logits)

    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((len(ids), a.seq - 1), bool)}
    with gen.distribution.scope():
        t_fwd = timed(lambda: jax.block_until_ready(forward(tv, ntv, x, ids[:, 1:])))
    tokens = gen.batch_size * a.seq
    doc = {"batch": gen.batch_size, "seq": a.seq, "score_s": t_score, "forward_s": t_fwd,
           "likelihood_tokens_per_second": tokens / t_score, "forward_tokens_per_second": tokens / t_fwd,
           "ratio": t_fwd / t_score}
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
