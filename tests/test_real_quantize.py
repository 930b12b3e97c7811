"""Real tier: generation from a quantized Gemma 3 270M is coherent (issue #27).

`gemma generate PRESET model.quantize=int8|int4` quantizes the converted preset on load (no
adapters); an int4 LoRA run (`gemma finetune … model.quantize=int4`, 2 steps at a small
learning rate, so the adapters barely move the base) generates from its run directory. Each
answers the greedy continuations the float model gets right (tests/test_real_model.py); the
bar is 4 of the 5, as 4-bit rounding may change one borderline argmax (measured: int8 5/5,
int4 5/5 from the preset and from the run).

Cost: two generate processes' worth of loads (one CLI call per mode, the five prompts in one
batch) and one 2-step int4 fine-tune on one device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from real_fixtures import real_preset_dir
from typer.testing import CliRunner

from gemma_cli.cli import app

pytestmark = pytest.mark.real

CONTINUATIONS = [
    ("Water is made of hydrogen and", "oxygen"),
    ("Monday, Tuesday, Wednesday,", "Thursday"),
    ("1, 2, 3, 4, 5,", "6, 7"),
    ("The opposite of hot is", "cold"),
    ("def fibonacci(n):\n", "return"),
]
TEXT = [
    "The history of the city goes back more than two thousand years. It began as a small fishing "
    "village on the banks of the river, and over the centuries it grew into an important centre of trade.",
    "Merchants came from far away to sell cloth, spices and wine in its busy markets. Today the old "
    "town is a popular destination for tourists, who walk through its narrow streets.",
]


def _generate(target: Path, *over: str) -> list[dict[str, Any]]:
    args = [a for p, _ in CONTINUATIONS for a in ("-p", p)]
    r = CliRunner().invoke(app, ["generate", str(target), *over, *args, "--max-length", "24", "--sampler", "greedy",
                                 "--batch-size", str(len(CONTINUATIONS)), "--json"])
    assert r.exit_code == 0, r.stderr[-2000:]
    return json.loads(r.stdout)["results"]


def _right(results: list[dict[str, Any]]) -> list[str]:
    assert [x["prompt"] for x in results] == [p for p, _ in CONTINUATIONS]
    return [p for (p, want), x in zip(CONTINUATIONS, results, strict=True) if want in x["completion"]]


def _config(tmp: Path, preset: Path, **model: Any) -> Path:
    data = tmp / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXT * 4))
    cfg = {
        "model": {"preset": str(preset), "precision": "float32", **model},
        "mesh": {"shape": [1, 1], "axes": ["batch", "model"]},
        "data": {"paths": [str(data)], "sequence_length": 32, "batch_size": 2},
        "optimizer": {"name": "adamw", "learning_rate": 1e-4},
        "train": {"max_steps": 2, "output_dir": str(tmp / "run"), "checkpoint_every": 2, "log_every": 1},
        "generate": {"sampler": "greedy"},
    }
    p = tmp / "run.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_preset_generates_coherent_text(mode: str, tmp_path: Path) -> None:
    preset = real_preset_dir()
    results = _generate(_config(tmp_path, preset), f"model.quantize={mode}")
    right = _right(results)
    assert len(right) >= 4, (mode, [x["completion"] for x in results])


def test_int4_lora_run_generates_coherent_text(tmp_path: Path) -> None:
    preset = real_preset_dir()
    cfg = _config(tmp_path, preset, quantize="int4", lora={"rank": 4})
    r = CliRunner().invoke(app, ["finetune", str(cfg), "--json", "--quiet"])
    assert r.exit_code == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert s["steps"] == 2 and s["params"]["trainable"] < s["params"]["total"] / 100
    results = _generate(tmp_path / "run")
    right = _right(results)
    assert len(right) >= 4, [x["completion"] for x in results]
