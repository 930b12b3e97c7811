"""`gemma` with one engine behaviour switched for an A/B measurement (benchmarks only).

  BENCH_NO_PREFETCH=1 python benchmarks/gemma_variant.py finetune CONFIG --json
  BENCH_REMAT=full    python benchmarks/gemma_variant.py finetune CONFIG --json
  BENCH_NO_TF=1       python benchmarks/gemma_variant.py inspect CONFIG --json

BENCH_NO_PREFETCH makes tf.data's prefetch a no-op (the engine's to_dataset prefetches);
BENCH_NO_TF=1 blocks `import tensorflow` (keras-hub then treats TF as absent; fine for plan-mode
`gemma inspect`, which reads no data). BENCH_REMAT enters keras.RematScope(mode=...) before the model is built, so every layer
recomputes its activations in the backward pass (gradient checkpointing).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    if os.environ.get("BENCH_NO_TF"):
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # import → ImportError: keras-hub runs without TF
    from gemma_cli.engine import runtime

    runtime.setup()
    if os.environ.get("BENCH_NO_PREFETCH"):
        import tensorflow as tf

        tf.data.Dataset.prefetch = lambda self, *a, **k: self  # type: ignore[method-assign]
    mode = os.environ.get("BENCH_REMAT")
    if mode:
        import keras

        keras.RematScope(mode=mode).__enter__()
    from gemma_cli.cli import main as cli_main

    sys.argv[0] = "gemma"
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
