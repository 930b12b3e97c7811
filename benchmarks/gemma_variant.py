"""`gemma` with one engine behaviour switched for an A/B measurement (benchmarks only).

  BENCH_REMAT=full    python benchmarks/gemma_variant.py finetune CONFIG --json
  BENCH_NO_TF=1       python benchmarks/gemma_variant.py inspect CONFIG --json

BENCH_NO_TF=1 blocks `import tensorflow` (keras-hub then treats TF as absent; fine for plan-mode
`gemma inspect`, which reads no data). BENCH_REMAT builds the backbone inside keras.RematScope(mode=...) (gradient checkpointing); with
keras 3.15 + keras-hub 0.32 fit then fails ('Unable to automatically build the model'): kept to
reproduce that, not used by run.py.
"""

from __future__ import annotations

import os
import sys


def _in_remat_scope(init, mode: str):  # noqa: ANN001, ANN202
    def wrapped(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        import keras

        with keras.RematScope(mode=mode):
            init(self, *a, **k)

    return wrapped


def main() -> int:
    if os.environ.get("BENCH_NO_TF"):
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # import → ImportError: keras-hub runs without TF
    from gemma_cli.engine.core import runtime

    runtime.setup()
    mode = os.environ.get("BENCH_REMAT")
    if mode:
        import keras_hub

        # only the backbone's layers: a global scope would also wrap the tokenizer (strings) and fail
        for cls in (keras_hub.models.Gemma3Backbone, keras_hub.models.GemmaBackbone):
            cls.__init__ = _in_remat_scope(cls.__init__, mode)
    from gemma_cli.cli import main as cli_main

    sys.argv[0] = "gemma"
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
