"""What a failed preset download or load means to the user: one error of the family."""

from __future__ import annotations

from gemma_cli.errors import RuntimeFailure, UsageError


def load_error(preset: str, e: Exception) -> Exception:
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    if any(k in low for k in ("connection", "resolve", "timed out", "network", "max retries", "unreachable")):
        return RuntimeFailure(f"cannot download preset {preset}: network unreachable ({text.splitlines()[0][:160]})")
    if any(k in low for k in ("401", "403", "unauthorized", "forbidden", "credentials")):
        via = "hf" if preset.startswith("hf://") else "kaggle"
        return UsageError(f"preset {preset}: access denied", hint=f"run `gemma login {via}` and accept the model's license")
    if "not found" in low or "404" in low or "unknown preset" in low or "invalid preset" in low:
        return UsageError(f"model.preset: {preset}: no such preset ({text.splitlines()[0][:160]})")
    return RuntimeFailure(f"cannot load preset {preset}: {text.splitlines()[0][:300]}")
