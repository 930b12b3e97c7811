"""Names other fine-tuning tools use, and what they are called here.

A config brought from TRL (`SFTConfig`), the Hugging Face `Trainer`, axolotl, LLaMA-Factory or
PEFT (`LoraConfig`) fails validation on its first foreign key; the config loader asks
`explain(key)` for a line that points at gemma's key instead of a spelling guess. The README's
table "Coming from TRL / axolotl / PEFT" is this table.
"""

from __future__ import annotations

# foreign key → (gemma's key, a note or ""); the keys are what users write, at any level
FOREIGN: dict[str, tuple[str, str]] = {
    # optimizer
    "learning_rate": ("optimizer.learning_rate", ""),
    "lr": ("optimizer.learning_rate", ""),
    "lr_scheduler_type": ("optimizer.schedule", "constant, cosine or linear"),
    "lr_scheduler": ("optimizer.schedule", "constant, cosine or linear"),
    "warmup_ratio": ("optimizer.warmup_ratio", ""),
    "warmup_steps": ("optimizer.warmup_steps", ""),
    "weight_decay": ("optimizer.weight_decay", ""),
    "max_grad_norm": ("optimizer.clipnorm", ""),
    "optim": ("optimizer.name", "adamw, adam, sgd or adafactor"),
    "gradient_accumulation_steps": ("optimizer.gradient_accumulation_steps", ""),
    # batch and sequence
    "per_device_train_batch_size": ("data.batch_size", "the global batch: per-device size × the mesh's batch axis"),
    "micro_batch_size": ("data.batch_size", "the global batch: per-device size × the mesh's batch axis"),
    "train_batch_size": ("data.batch_size", "the global batch"),
    "max_seq_length": ("data.sequence_length", ""),
    "max_length": ("data.sequence_length", "TRL's SFTConfig max_length; generate.max_length is the generation length"),
    "max_seq_len": ("data.sequence_length", ""),
    "sequence_len": ("data.sequence_length", ""),
    "cutoff_len": ("data.sequence_length", ""),
    "sample_packing": ("data.packing", ""),
    "dataset_text_field": ("data.field", ""),
    "datasets": ("data.name", "hf://ORG/NAME for a Hugging Face dataset, or data.paths for files"),
    "dataset": ("data.name", "hf://ORG/NAME for a Hugging Face dataset, or data.paths for files"),
    "dataset_name": ("data.name", "hf://ORG/NAME"),
    "dataset_config_name": ("data.subset", ""),
    "train_on_inputs": ("data.loss_on", "`all` trains on the prompt too, `assistant` on the answers only"),
    "completion_only_loss": ("data.loss_on", "`assistant` (the default for chat and prompt/completion data)"),
    "assistant_only_loss": ("data.loss_on", "`assistant` (the default for chat data)"),
    # training loop
    "num_train_epochs": ("train.epochs", ""),
    "num_epochs": ("train.epochs", ""),
    "save_steps": ("train.checkpoint_every", ""),
    "save_total_limit": ("train.keep_checkpoints", ""),
    "eval_steps": ("train.eval_every", ""),
    "logging_steps": ("train.log_every", ""),
    "gradient_checkpointing": ("train.remat", "`blocks` recomputes each decoder block's activations"),
    "output_dir": ("train.output_dir", ""),
    "seed": ("train.seed", ""),
    "max_steps": ("train.max_steps", ""),
    "report_to": ("train.report_to", "tensorboard, wandb, mlflow or none"),
    # model and LoRA (PEFT LoraConfig, axolotl)
    "base_model": ("model.preset", "a keras-hub preset, hf://org/repo or a local directory"),
    "model_name_or_path": ("model.preset", "a keras-hub preset, hf://org/repo or a local directory"),
    "lora_r": ("model.lora.rank", ""),
    "r": ("model.lora.rank", ""),
    "lora_alpha": ("model.lora.alpha", ""),
    "lora_target_modules": ("model.lora.target_layers", "q_proj, v_proj ... are understood"),
    "target_modules": ("model.lora.target_layers", "q_proj, v_proj ... are understood"),
    "bf16": ("model.precision", "bfloat16 or mixed_bfloat16"),
    "fp16": ("model.precision", "gemma trains in float32, bfloat16 or mixed_bfloat16"),
    "load_in_8bit": ("model.quantize", "int8"),
    # generation
    "max_new_tokens": ("generate.max_new_tokens", ""),
    "do_sample": ("generate.sampler", "greedy, top_k, top_p, random or beam"),
}

# foreign keys with no counterpart: what to do instead
UNSUPPORTED: dict[str, str] = {
    "lora_dropout": "gemma's LoRA (keras-hub) has no dropout; remove the key",
    "load_in_4bit": "4-bit loading is not supported; use model.quantize: int8 or no quantization",
}


def explain(key: str, here: str) -> str | None:
    """The message for an unknown `key` found at the dotted location `here` ('' for the root),
    when another tool uses that name; None when it is no known foreign name."""
    if key in UNSUPPORTED:
        return f"`{key}` is not a gemma key: {UNSUPPORTED[key]}"
    hit = FOREIGN.get(key)
    if hit is None:
        return None
    target, note = hit
    section, _, leaf = target.rpartition(".")
    if leaf == key:  # gemma's name too, in another section
        return f"did you mean `{target}`? (`{key}` belongs in the {section} section)"
    return f"did you mean `{target}`? (`{key}` is TRL/axolotl/PEFT's name)" + (f"; {note}" if note else "")
