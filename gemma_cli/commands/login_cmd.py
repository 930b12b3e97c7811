"""`gemma login` (in progress)."""
