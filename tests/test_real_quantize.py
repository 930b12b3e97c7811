"""Real tier: generation from a quantized Gemma 3 270M is coherent (issue #27).

The converted preset, quantized on load to int8 or int4 (no adapters) by the loader every verb
uses, answers the greedy continuations the float model gets right (tests/test_real_model.py);
the bar is 4 of the 5, as rounding may change one borderline argmax. Measured 2026-12-03: int8
5/5 (" oxygen. Water is a liquid…", " Thursday, Friday…"), int4 5/5 (" oxygen, and there are
three elements…", " and Thursday are the days…").

Generation from a quantized *run* is tested on the tiny model for int8 and int4
(tests/test_quantize.py); a real int4 LoRA run (2 steps) passing the same bar was measured
once here but costs 116 s, so it is not in the suite.

Cost: ≈ 42 s per mode on the shared 2 cores (load, quantize, compile greedy generation on one
device, one batch of five prompts).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from real_fixtures import real_preset_dir

pytestmark = pytest.mark.real

CONTINUATIONS = [
    ("Water is made of hydrogen and", "oxygen"),
    ("Monday, Tuesday, Wednesday,", "Thursday"),
    ("1, 2, 3, 4, 5,", "6, 7"),
    ("The opposite of hot is", "cold"),
    ("def fibonacci(n):\n", "return"),
]


@pytest.fixture(scope="module")
def preset() -> Path:
    return real_preset_dir()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_preset_generates_coherent_text(mode: str, preset: Path) -> None:
    """The real preset through the loader every verb uses (`load_causal_lm` →
    `apply_lora_and_quantize`, what `gemma generate PRESET model.quantize=MODE` runs), greedy on
    one device (the CLI path itself is covered on the tiny model in test_quantize.py)."""
    from gemma_cli.config import ModelConfig
    from gemma_cli.engine.model import load as model

    lm = model.load_causal_lm(str(preset), "float32")
    model.apply_lora_and_quantize(lm, ModelConfig(preset=str(preset), quantize=mode), lora=False)
    kinds = {getattr(ly, "quantization_mode", None) for ly in lm.backbone._flatten_layers()}
    assert mode in kinds
    lm.compile(sampler="greedy")
    outs = lm.generate([p for p, _ in CONTINUATIONS], max_length=24)
    right = [p for (p, want), out in zip(CONTINUATIONS, outs, strict=True) if want in out[len(p):]]
    assert len(right) >= 4, (mode, outs)
