"""What one process of a multi-host run feeds the train step (used by test_multihost.py).

    GEMMA_COORDINATOR=127.0.0.1:PORT GEMMA_NUM_PROCESSES=2 GEMMA_PROCESS_ID=i \
    GEMMA_CPU_DEVICES=4 python tests/multihost_probe.py CONFIG [key=value ...]

Builds the run's data exactly as `gemma finetune` does (`SFTRecipe.setup_model` → `data.build` for this
process's streams) and pulls two batches through keras' own JAX input path (the one `fit`
uses: data adapter → `jax.make_array_from_process_local_data`). Prints one JSON document: the
global batch shape, the rows this process holds, the records it read, and the global batches
the pipeline gives a single process feeding every stream, for comparison.
"""

from __future__ import annotations

import json
import sys

from gemma_cli.engine.core import runtime


def main(config_path: str, overrides: list[str]) -> None:
    runtime.setup()
    runtime.silence_keras_stdout()
    import numpy as np
    from keras.src.backend.jax.trainer import JAXEpochIterator

    from gemma_cli.config import load_config
    from gemma_cli.engine import data as datalib
    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.train.sft import SFTRecipe

    cfg = load_config(config_path, overrides)
    m = SFTRecipe(cfg, NullReporter()).setup_model()
    tok = m.preprocessor.tokenizer
    first, stop, total = datalib.streams_for(m.distribution, cfg.mesh.batch_axis)
    full = datalib.build(cfg.data, tok, seed=cfg.train.seed, streams=(0, total, total))
    it = iter(full.train)
    expected = [next(it)[0]["token_ids"].tolist() for _ in range(2)]

    mine = datalib.build(cfg.data, tok, seed=cfg.train.seed, streams=(first, stop, total))
    # the streams whose records this process's own pipeline reads and tokenizes while it trains
    # (an instance attribute: the reference pipeline above prefetches in its own threads)
    pipe = mine._pipe  # noqa: SLF001
    loaded: set[int] = set()
    original = pipe.load

    def counting(stream, k):
        loaded.add(stream)
        return original(stream, k)

    pipe.load = counting
    batches = []
    with m.distribution.scope():
        it = JAXEpochIterator(x=mine.train, steps_per_epoch=2)._get_iterator()  # noqa: SLF001
        for _ in range(2):
            x, _, _ = next(it)
            arr = x["token_ids"]
            rows: dict[int, list[int]] = {}
            for shard in arr.addressable_shards:
                start = shard.index[0].start or 0
                for r, row in enumerate(np.asarray(shard.data).tolist()):
                    rows[start + r] = row
            batches.append({"global_shape": list(arr.shape), "rows": {str(k): v for k, v in sorted(rows.items())}})
    print(json.dumps({
        "process": runtime.process_index(),
        "streams": [first, stop, total],
        "batches": batches,
        "expected": expected,
        "streams_loaded": sorted(loaded),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
