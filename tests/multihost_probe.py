"""What one process of a multi-host run feeds the train step (used by test_multihost.py).

    GEMMA_COORDINATOR=127.0.0.1:PORT GEMMA_NUM_PROCESSES=2 GEMMA_PROCESS_ID=i \
    GEMMA_CPU_DEVICES=4 python tests/multihost_probe.py CONFIG

Builds the run exactly as `gemma finetune` does (prepare → tokenized dataset) and pulls two
batches through keras' own JAX input path (the one `fit` uses: data adapter → the
distribution's `distribute_dataset` → `jax.make_array_from_process_local_data`). Prints one
JSON document: the global batch shape, the rows this process holds, and the global batches
the single-process pipeline would produce, for comparison.
"""

from __future__ import annotations

import json
import sys

from gemma_cli.engine import runtime


def main(config_path: str) -> None:
    runtime.setup()
    runtime.silence_keras_stdout()
    import numpy as np
    from keras.src.backend.jax.trainer import JAXEpochIterator

    from gemma_cli.config import load_config
    from gemma_cli.engine import data as datalib
    from gemma_cli.engine.report import NullReporter
    from gemma_cli.engine.train.trainer import Trainer

    cfg = load_config(config_path)
    m = Trainer(cfg, NullReporter()).setup_model()
    texts, _ = datalib.load_texts(cfg.data)
    tok = m.preprocessor.tokenizer
    ids, mask = datalib.token_arrays(texts, tok, cfg.data.sequence_length, cfg.data.packing)
    ds = datalib.to_dataset(ids, mask, cfg.data.batch_size, cfg.train.seed, cfg.data.shuffle, 1)
    expected = [x["token_ids"].tolist() for x, _, _ in ds.take(2).as_numpy_iterator()]
    batches = []
    with m.distribution.scope():
        it = JAXEpochIterator(x=ds, steps_per_epoch=2)._get_iterator()  # noqa: SLF001
        for _ in range(2):
            x, _, _ = next(it)
            arr = x["token_ids"]
            rows: dict[int, list[int]] = {}
            for shard in arr.addressable_shards:
                start = shard.index[0].start or 0
                for r, row in enumerate(np.asarray(shard.data).tolist()):
                    rows[start + r] = row
            batches.append({"global_shape": list(arr.shape), "rows": {str(k): v for k, v in sorted(rows.items())}})
    print(json.dumps({"process": runtime.process_index(), "batches": batches, "expected": expected}))


if __name__ == "__main__":
    main(sys.argv[1])
