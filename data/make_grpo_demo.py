"""Write the GRPO example's prompts: small additions, answered by the first number.

    python data/make_grpo_demo.py   # → data/grpo_arith_train.jsonl (200), data/grpo_arith_heldout.jsonl (40)

Prompts are `a + b =` with a, b in 0..19, the form the pretrained 270M already half answers
(greedy: about a third right), so sampled groups disagree and GRPO has a signal. The held-out
pairs are not in the training file (no pair appears in both).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = random.Random(0)
    pairs = [(a, b) for a in range(20) for b in range(20)]
    rng.shuffle(pairs)
    train, held = pairs[:200], pairs[200:240]
    with (HERE / "grpo_arith_train.jsonl").open("w") as f:
        for a, b in train:
            f.write(json.dumps({"prompt": f"{a} + {b} =", "answer": str(a + b)}) + "\n")
    with (HERE / "grpo_arith_heldout.jsonl").open("w") as f:
        for a, b in held:
            f.write(json.dumps({"prompt": f"{a} + {b} =", "answer": str(a + b)}) + "\n")


if __name__ == "__main__":
    main()
