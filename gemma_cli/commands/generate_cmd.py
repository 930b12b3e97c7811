"""`gemma generate` (in progress)."""
