"""Reward functions of the GRPO example (TRL's signature: they run unchanged under TRL too).

`first_number`: 1.0 when the first number in the completion is the record's `answer`, else 0.0.
"""

import re

NUMBER = re.compile(r"-?\d+")


def first_number(prompts, completions, answer, **kwargs):
    out = []
    for completion, want in zip(completions, answer):
        m = NUMBER.search(completion)
        out.append(1.0 if m and m.group(0) == str(want) else 0.0)
    return out
