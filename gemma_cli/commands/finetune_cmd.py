"""`gemma finetune` (in progress)."""
