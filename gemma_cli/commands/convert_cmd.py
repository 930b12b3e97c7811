"""`gemma convert` (in progress)."""
