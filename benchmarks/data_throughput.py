"""Input-pipeline throughput of a run config, without the model: tokens per second that
`gemma_cli.engine.data.build` delivers for one process feeding every stream.

    python benchmarks/data_throughput.py CONFIG --batches 40

Prints one JSON document: seconds to build (index, checks, first batch), batches read,
tokens per second (all positions and non-padding ones), and peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--batches", type=int, default=40)
    a = ap.parse_args()
    from gemma_cli.engine.core import runtime

    runtime.setup(without_tensorflow=True)
    import keras_hub

    from gemma_cli.config import load_config
    from gemma_cli.engine.data import build

    cfg = load_config(a.config)
    tok = keras_hub.tokenizers.Tokenizer.from_preset(cfg.model.preset)
    n_b = cfg.mesh.shape[cfg.mesh.axes.index(cfg.mesh.batch_axis)]
    n_b = n_b if n_b > 0 else 1
    t0 = time.perf_counter()
    bundle = build(cfg.data, tok, seed=cfg.train.seed, streams=(0, n_b, n_b))
    t_build = time.perf_counter() - t0
    it = iter(bundle.train)
    next(it)  # the spin-up of the worker threads is not throughput
    t1 = time.perf_counter()
    useful = 0
    for _ in range(a.batches):
        x, _, _ = next(it)
        useful += int((x["padding_mask"] > 0).sum())
    dt = time.perf_counter() - t1
    per_batch = cfg.data.batch_size * cfg.data.sequence_length
    print(json.dumps({
        "build_seconds": round(t_build, 3),
        "batches": a.batches,
        "seconds": round(dt, 3),
        "tokens_per_second": per_batch * a.batches / dt,
        "useful_tokens_per_second": useful / dt,
        "workers": bundle.info.workers,
        "records": bundle.info.records,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
