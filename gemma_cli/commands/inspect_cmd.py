"""`gemma inspect` (in progress)."""
