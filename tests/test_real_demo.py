"""Real tier: the demo's fine-tune on the real Gemma 3 270M lowers the held-out loss, and the
fine-tuned run generates coherent text from its output_dir on a (2, 4) mesh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_fixtures import real_preset_dir
from typer.testing import CliRunner

from gemma_cli.cli import app

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    preset = real_preset_dir()
    out = tmp_path_factory.mktemp("demo") / "run"
    r = runner.invoke(
        app,
        [
            "finetune",
            str(ROOT / "configs/gemma3_270m_demo.yaml"),
            f"model.preset={preset}",
            f"data.paths=[{ROOT / 'data/demo_gemma_cli.jsonl'}]",
            "train.max_steps=12",
            "train.eval_every=12",
            "train.checkpoint_every=12",
            f"train.output_dir={out}",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_lora_lowers_held_out_loss(demo_run: dict) -> None:
    evals = demo_run["evals"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 12
    before, after = evals[0]["eval_loss"], evals[-1]["eval_loss"]
    # 24 held-out demo records, never trained on; 12 LoRA steps of 4×96 tokens
    assert after < before - 0.1, (before, after)
    assert demo_run["params"]["trainable"] < demo_run["params"]["total"] / 100  # LoRA, not full
    assert Path(demo_run["checkpoint"], "adapter.lora.h5").exists()


def test_generate_from_finetuned_run_on_mesh(demo_run: dict) -> None:
    r = runner.invoke(
        app, ["generate", demo_run["output_dir"], "--json", "--max-length", "24"], input="The capital of France is\n"
    )
    assert r.exit_code == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["kind"] == "run"
    text = doc["results"][0]["completion"]
    words = [w for w in text.replace(".", " ").split() if w.isalpha()]
    assert len(words) >= 4, text
    assert any(w in text for w in ("Paris", "France", "capital", "city")), text
