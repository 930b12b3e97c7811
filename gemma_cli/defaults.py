"""The defaults of a run, in one place: the schema (`config.py`) reads them, `gemma init` writes
only what it learns from the machine and the data, and `--help` / `gemma config show` show them.

Chosen from what the peers ship, so that a recipe brought from TRL, axolotl or Unsloth behaves
as its author expects:

- Learning rate by method. LoRA 2e-4: the value of TRL's and PEFT's LoRA examples, axolotl's
  QLoRA configs and Unsloth's notebooks (a low-rank update needs a larger step). Full fine-tune
  2e-5: TRL's SFTConfig default (HF Trainer's 5e-5 is for encoder fine-tunes and is known to
  wreck instruction-tuned decoders).
- Cosine decay after a linear warmup of 3% of the steps: TRL's SFT examples and axolotl's
  configs (`lr_scheduler_type: cosine`, `warmup_ratio: 0.03`); a ratio rather than a step count
  so that a 50-step smoke test and a 50k-step run both warm up sensibly.
- `sequence_length` 1024: TRL SFTConfig's `max_length` default. The former 128 cut most chat
  conversations (the data report counts the records cut; `gemma init --data` sizes it from the
  data instead).
- Generation: `max_new_tokens` 256 (HF users count new tokens, not the prompt), `top_k` 50 and
  `top_p` 1.0 (transformers' GenerationConfig defaults; the former hidden `top_k` 5 sampled far
  narrower than anyone expects), greedy by default as transformers.
- Trackers: TensorBoard (always written locally with metrics.jsonl; needs no account).
"""

from __future__ import annotations

LR_LORA = 2e-4
LR_FULL = 2e-5
SCHEDULE = "cosine"
WARMUP_RATIO = 0.03
SEQUENCE_LENGTH = 1024
BATCH_SIZE = 2
MAX_NEW_TOKENS = 256
TOP_K = 50
TOP_P = 1.0
TEMPERATURE = 1.0
REPORT_TO = ("tensorboard",)


def learning_rate(lora_rank: int) -> float:
    """The default learning rate of a run: LoRA (rank > 0) or full fine-tune."""
    return LR_LORA if lora_rank > 0 else LR_FULL


def warmup_steps(total_steps: int, ratio: float = WARMUP_RATIO) -> int:
    """Warmup steps for `ratio` of `total_steps` optimizer updates (rounded up, as TRL does)."""
    import math

    return int(math.ceil(max(total_steps, 0) * ratio))
