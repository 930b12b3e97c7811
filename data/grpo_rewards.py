"""Reward functions of the GRPO example (TRL's signature: they run unchanged under TRL too).

`first_word`: 1.0 when the completion's first word is the record's `answer` (case-insensitive),
else 0.0 — the value alone, as a parser downstream would read it.
"""

import re

WORD = re.compile(r"[\w']+")


def first_word(prompts, completions, answer, **kwargs):
    out = []
    for completion, want in zip(completions, answer):
        m = WORD.search(completion)
        out.append(1.0 if m and m.group(0).lower() == str(want).lower() else 0.0)
    return out
