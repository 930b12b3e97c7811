"""Score the demo's held-out answers before and after fine-tuning.

Reads the held-out questions (`demo_heldout.jsonl`: `prompt` and `expect`) and two outputs of
`gemma eval ... --data data/demo_heldout.jsonl --reward data/demo_reward.py:expected --out FILE`
(one JSON object per question, in order, with `completion` and gemma eval's `pass`), or of
`gemma generate --chat --prompt-file data/demo_heldout.jsonl --jsonl` (no `pass`: scored here).
An answer is correct when any of its question's `expect` strings (a command, flag or config
key) appears in it, ignoring case (`correct`, which data/demo_reward.py gives gemma eval).
The last line printed is

    demo: held-out answers correct before B/N, after A/N

Run: python data/score_demo.py BEFORE.jsonl AFTER.jsonl [--heldout data/demo_heldout.jsonl] [--details]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELDOUT = Path(__file__).with_name("demo_heldout.jsonl")


class ScoreError(Exception):
    """A file that cannot be scored: the message names it and says why."""


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-empty line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ScoreError(f"{path}: cannot read ({e.strerror})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScoreError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ScoreError(f"{path}:{n}: expected a JSON object")
        out.append(rec)
    return out


def correct(answer: str, expect: list[str]) -> bool:
    """Whether any expected string appears in the answer, ignoring case."""
    low = answer.lower()
    return any(e.lower() in low for e in expect)


def marks(heldout: list[dict], outputs: list[dict], where: str) -> list[bool]:
    """Per question: is the generated answer correct? Outputs must answer the held-out
    prompts one for one, in order."""
    if len(outputs) != len(heldout):
        raise ScoreError(f"{where}: {len(outputs)} answers for {len(heldout)} held-out questions")
    out = []
    for k, (h, o) in enumerate(zip(heldout, outputs, strict=True), 1):
        if "completion" not in o:
            raise ScoreError(f"{where}:{k}: no `completion` field (expected `gemma generate --jsonl` output)")
        if "prompt" in o and o["prompt"] != h["prompt"]:
            raise ScoreError(f"{where}:{k}: answers {o['prompt']!r}, expected the held-out question {h['prompt']!r}")
        if isinstance(o.get("pass"), bool):  # scored by gemma eval with data/demo_reward.py
            out.append(o["pass"])
        else:
            out.append(correct(str(o["completion"]), list(h["expect"])))
    return out


def score_line(before: list[bool], after: list[bool]) -> str:
    n = len(after)
    return f"demo: held-out answers correct before {sum(before)}/{n}, after {sum(after)}/{n}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path, help="gemma eval --out (or gemma generate --jsonl) of the base model")
    ap.add_argument("after", type=Path, help="gemma eval --out (or gemma generate --jsonl) of the fine-tuned run")
    ap.add_argument("--heldout", type=Path, default=HELDOUT, help="held-out questions (prompt, expect)")
    ap.add_argument("--details", action="store_true", help="print each question with both answers first")
    args = ap.parse_args(argv)
    try:
        held = read_jsonl(args.heldout)
        for n, h in enumerate(held, 1):
            if not isinstance(h.get("prompt"), str) or not isinstance(h.get("expect"), list) or not h["expect"]:
                raise ScoreError(f"{args.heldout}:{n}: a held-out record needs `prompt` (string) and `expect` (non-empty list)")
        before_out, after_out = read_jsonl(args.before), read_jsonl(args.after)
        before = marks(held, before_out, str(args.before))
        after = marks(held, after_out, str(args.after))
    except ScoreError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    if args.details:
        for h, b, a, bo, ao in zip(held, before, after, before_out, after_out, strict=True):
            print(f"Q: {h['prompt']}   (expects {' or '.join(h['expect'])})")
            print(f"  before {'✓' if b else '✗'} {_one_line(bo['completion'])}")
            print(f"  after  {'✓' if a else '✗'} {_one_line(ao['completion'])}")
    print(score_line(before, after))
    return 0


def _one_line(text: str, width: int = 110) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


if __name__ == "__main__":
    raise SystemExit(main())
