"""`gemma config validate` says what will train (issue #28): method, LoRA or full, the trainable
parameters, quantization, data, mesh; `--json` gives the same as fields (`will_train`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gemma_cli import run_facts
from gemma_cli.cli import app


def _cfg(tmp: Path, preset: str, lora: dict[str, Any] | None, **model: Any) -> Path:
    (tmp / "d.jsonl").write_text(json.dumps({"text": "hello there"}) + "\n")
    doc = {"model": {"preset": preset, **({"lora": lora} if lora is not None else {}), **model},
           "mesh": {"shape": [2, 4]},
           "data": {"paths": [str(tmp / "d.jsonl")]},
           "train": {"max_steps": 7, "output_dir": str(tmp / "out")}}
    p = tmp / "x.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def _validate(*args: Any) -> Any:
    return CliRunner().invoke(app, ["config", "validate", *map(str, args), "--offline"])


def test_rank_zero_says_full_fine_tune(tmp_path: Path) -> None:
    from gemma_cli.engine import families

    cfg = _cfg(tmp_path, "gemma3_1b", {"rank": 0})
    r = _validate(cfg)
    assert r.exit_code == 0, r.stderr
    n = families.published_params("gemma3_1b")
    assert "full fine-tune of every weight" in r.stdout and "LoRA" not in r.stdout, r.stdout
    assert "mesh (2, 4) over batch, model" in r.stdout and "7 steps" in r.stdout, r.stdout
    doc = json.loads(_validate(cfg, "--json").stdout)
    assert doc["valid"] is True
    w = doc["will_train"]
    assert w["training"] == {"kind": "full", "trainable_params": n}
    assert w["method"] == "sft" and w["mesh"]["shape"] == [2, 4] and w["data"]["source"] == "local"


def test_lora_names_rank_targets_and_the_tutorials_count(tmp_path: Path) -> None:
    """gemma_2b_en, LoRA rank 4 on query and value: Keras' Gemma LoRA tutorial prints 1,363,968
    trainable parameters; the estimate is read from the architecture table, not from there."""
    r = _validate(_cfg(tmp_path, "gemma_2b_en", {"rank": 4}), "--json")
    assert r.exit_code == 0, r.stderr
    t = json.loads(r.stdout)["will_train"]["training"]
    assert t == {"kind": "lora", "rank": 4, "alpha": 4, "targets": ["query", "value"], "trainable_params": 1_363_968}
    r = _validate(_cfg(tmp_path, "gemma_2b_en", {"rank": 8, "target_layers": ["query"]}, quantize="int8"))
    assert "LoRA rank 8 on query (≈ " in r.stdout and "int8 frozen weights" in r.stdout, r.stdout


@pytest.mark.parametrize("targets", [["query", "value"], ["query", "key", "value", "attention_output",
                                                          "ffw_gating", "ffw_gating_2", "ffw_linear"]])
def test_the_estimate_is_the_models_count(tiny_gemma3: Path, targets: list[str]) -> None:
    """The LoRA estimate against the variables keras-hub creates (shapes traced, no weights)."""
    import math

    from gemma_cli.engine.model import load

    bb = run_facts._backbone_config(str(tiny_gemma3))
    assert bb is not None
    real = sum(math.prod(shape) for path, shape, _ in load.abstract_variables(bb, "float32", 3, targets)
               if "lora_kernel" in path)
    assert real > 0 and run_facts.lora_estimate(bb, 3, targets) == real
