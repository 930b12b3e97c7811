"""Write the preference pairs of the DPO example (configs/gemma3_270m_dpo.yaml) from the demo data.

- `demo_dpo_pairs.jsonl`: every training question of `make_demo.py` with two answers: `chosen`,
  the house-style answer of the demo (`gemma: ...` naming the command, flag or key), and
  `rejected`, a vague answer that names nothing (from `VAGUE`), in TRL's standard form
  `{"prompt": str, "chosen": str, "rejected": str}`.
- `demo_dpo_heldout.jsonl`: the 20 held-out questions (phrased unlike every training question),
  their reference answer as `chosen` and a vague answer written unlike the training ones
  (`VAGUE_HELDOUT`: other words, other shapes) as `rejected`.

A pretrained model finds the vague answers likelier (short, common words); preference tuning
should turn that around on the held-out pairs, whose rejected answers it never saw.

Run: python data/make_dpo_demo.py            (rewrites both .jsonl files next to this file)
     python data/make_dpo_demo.py --check    (exit 1 if a committed file differs)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_demo import heldout, records  # noqa: E402

HERE = Path(__file__).parent
PAIRS_FILE = HERE / "demo_dpo_pairs.jsonl"
HELDOUT_FILE = HERE / "demo_dpo_heldout.jsonl"

VAGUE = [
    "It depends on your setup. Have a look at the documentation.",
    "There are a few ways to do that; check the docs for details.",
    "You can probably find that in the settings somewhere.",
    "That is a good question. Try searching online for it.",
    "I am not sure, but the manual should explain it.",
    "Try a few options and see which one works for you.",
    "It should work if you configure it correctly.",
    "Most tools have an option for that, so look around.",
]
VAGUE_HELDOUT = [
    "Hmm, hard to say without more context.",
    "Maybe ask someone on your team who knows the tool?",
    "Usually that just works; restart and hope for the best.",
    "Please consult the relevant guide.",
    "No idea, sorry.",
]


def pairs() -> list[dict]:
    out = []
    for i, rec in enumerate(records()):
        (user, answer) = (t["content"] for t in rec["messages"])
        out.append({"prompt": user, "chosen": answer, "rejected": VAGUE[i % len(VAGUE)]})
    random.Random(7).shuffle(out)
    return out


def heldout_pairs() -> list[dict]:
    return [
        {"prompt": h["prompt"], "chosen": h["messages"][1]["content"], "rejected": VAGUE_HELDOUT[i % len(VAGUE_HELDOUT)]}
        for i, h in enumerate(heldout())
    ]


def main() -> int:
    files = {PAIRS_FILE: pairs(), HELDOUT_FILE: heldout_pairs()}
    texts = {p: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs) for p, recs in files.items()}
    if "--check" in sys.argv:
        stale = [p.name for p, t in texts.items() if not p.exists() or p.read_text(encoding="utf-8") != t]
        for p in texts:
            print(f"{p.name}: {'differs; run python data/make_dpo_demo.py' if p.name in stale else 'up to date'}")
        return 1 if stale else 0
    for p, t in texts.items():
        p.write_text(t, encoding="utf-8")
    print(f"wrote {len(files[PAIRS_FILE])} pairs to {PAIRS_FILE.name}, {len(files[HELDOUT_FILE])} held-out pairs to "
          f"{HELDOUT_FILE.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
