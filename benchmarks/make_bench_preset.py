"""Write the bench model: a Gemma 3 preset scaled up from tests/tiny.py (random weights).

`python benchmarks/make_bench_preset.py OUT_DIR [--hidden 256 --layers 4 ...]` writes a real
keras-hub preset directory (config.json, tokenizer, weights) with tests/tiny.py's 128-token
SentencePiece vocabulary. Sizes are chosen so one LoRA step on 8 simulated CPU devices takes
roughly 50-200 ms on a 2-core machine; key/value heads divide the model axis of a (2, 4) mesh.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--ffw", type=int, default=1024)
    a = ap.parse_args()
    out = Path(a.out)
    if (out / "config.json").exists():
        print(out)
        return
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    import keras
    import keras_hub

    from tests.tiny import tiny_backbone_config, tiny_proto

    keras.utils.set_random_seed(0)
    vocab = 128
    cfg = tiny_backbone_config("gemma3", vocab)
    cfg.update(
        num_layers=a.layers,
        num_query_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        hidden_dim=a.hidden,
        intermediate_dim=a.ffw,
        head_dim=a.head_dim,
        sliding_window_size=512,
    )
    tok = keras_hub.models.Gemma3Tokenizer(proto=tiny_proto(vocab), has_vision_tokens=False)
    bb = keras_hub.models.Gemma3Backbone(**cfg)
    pre = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer=tok, sequence_length=128)
    lm = keras_hub.models.Gemma3CausalLM(backbone=bb, preprocessor=pre)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    lm.save_to_preset(str(tmp))
    tmp.rename(out)
    print(out)


if __name__ == "__main__":
    main()
