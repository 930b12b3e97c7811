"""Plain keras-hub generation baseline: CausalLM.from_preset(...).generate, timed twice.

  python benchmarks/baseline_generate.py --preset presets/gemma3_270m --max-length 64 \
      --batch 4 -p "The capital of France is" -p ...

The prompts are generated as one batch twice (the second call reuses the compiled function);
prints one JSON line: seconds and new tokens per call, tokens/s of the warm call.
"""

from __future__ import annotations

import argparse
import json
import os
import time

T_PROCESS = time.time()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("-p", "--prompt", action="append", required=True)
    a = ap.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras_hub

    t_import = time.time()
    lm = keras_hub.models.CausalLM.from_preset(a.preset)
    lm.compile(sampler="greedy")
    t_load = time.time()
    tok = lm.preprocessor.tokenizer
    calls = []
    for _ in range(2):
        t0 = time.perf_counter()
        outs = lm.generate(a.prompt, max_length=a.max_length)
        dt = time.perf_counter() - t0
        new = 0
        for p, o in zip(a.prompt, outs, strict=True):
            completion = o[len(p):] if o.startswith(p) else o
            new += len(tok(completion)) if completion else 0
        calls.append({"seconds": dt, "new_tokens": int(new)})
    print(json.dumps({
        "calls": calls,
        "first_seconds": calls[0]["seconds"],
        "warm_seconds": calls[1]["seconds"],
        "warm_tokens_per_second": calls[1]["new_tokens"] / calls[1]["seconds"],
        "import_seconds": t_import - T_PROCESS,
        "load_seconds": t_load - t_import,
        "sample": outs[0][:200],
    }))


if __name__ == "__main__":
    main()
