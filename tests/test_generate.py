"""`gemma generate`: prompts in, completions out, under a real (2, 4) mesh on 8 CPU devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gemma_cli.cli import app
from gemma_cli.commands.generate_cmd import read_prompts
from gemma_cli.engine.sample.generate import wrap_template
from gemma_cli.errors import UsageError

runner = CliRunner()


def tiny_config(tmp_path: Path, preset: Path, **extra: str) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the quick brown fox jumps over the lazy dog"] * 40))
    out = tmp_path / "run"
    text = f"""\
model:
  preset: {preset}
  precision: float32
  lora: {{rank: 4}}
mesh: {{shape: [2, 4]}}
layout: {{indivisible: replicate}}
data:
  paths: [{corpus}]
  template: "Q: {{text}} A: {{text}}"
  sequence_length: 16
  batch_size: 4
optimizer: {{learning_rate: 0.01}}
train: {{max_steps: 3, output_dir: {out}}}
generate: {{max_length: 12}}
"""
    p = tmp_path / "tiny.yaml"
    p.write_text(text)
    return p


def test_read_prompts_sources(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "from jsonl"}\nplain line\n\n')
    assert read_prompts(["a"], str(f), "x\n{\"prompt\": \"y\"}\n") == ["a", "from jsonl", "plain line", "x", "y"]
    with pytest.raises(UsageError, match="prompt 1 is empty"):
        read_prompts([" "], None, None)
    with pytest.raises(UsageError, match="no prompt"):
        read_prompts([], None, "")
    with pytest.raises(UsageError, match=r"<stdin>:1: a JSON line needs a string field 'prompt'"):
        read_prompts([], None, '{"text": "x"}\n')


def test_templates() -> None:
    t = "Instruction:\n{instruction}\n\nResponse:\n{response}"
    assert wrap_template("Hi?", t) == "Instruction:\nHi?\n\nResponse:\n"
    with pytest.raises(UsageError):
        wrap_template("x", "only {one}")


def test_bad_targets_exit_2(tmp_path: Path, tiny_gemma3: Path) -> None:
    r = runner.invoke(app, ["generate", str(tmp_path / "nope/dir"), "-p", "x"])
    assert r.exit_code == 2 and "no such file or directory" in r.stderr
    run = tmp_path / "emptyrun"
    run.mkdir()
    (run / "config.yaml").write_text("model: {preset: x}\n")
    r = runner.invoke(app, ["generate", str(run), "-p", "x"])
    assert r.exit_code == 2 and "no checkpoint" in r.stderr, r.stderr
    cfg = tiny_config(tmp_path, tiny_gemma3)
    r = runner.invoke(app, ["generate", str(cfg), "-p", ""])
    assert r.exit_code == 2 and "empty" in r.stderr
    r = runner.invoke(app, ["generate", str(cfg), "-p", "x", "--json", "--jsonl"])
    assert r.exit_code == 2


def test_generate_json_under_mesh_one_prompt_and_batches(tmp_path: Path, tiny_gemma3: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_gemma3)
    # one prompt on a batch axis of 2: keras-hub alone raises IndivisibleError here
    r = runner.invoke(app, ["generate", str(cfg), "--json", "-q"], input="the quick\n")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["prompt"] for x in doc["results"]] == ["the quick"]
    res = doc["results"][0]
    assert res["prompt_tokens"] >= 2 and res["completion_tokens"] <= 12
    assert not res["completion"].startswith("the quick")
    # three prompts in batches of 2 (padded): one compilation, three results, order kept
    r = runner.invoke(app, ["generate", str(cfg), "-p", "a", "-p", "b", "-p", "c", "--jsonl", "--echo"])
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["prompt"] for x in lines] == ["a", "b", "c"]
    assert all(x["completion"].startswith(x["prompt"]) for x in lines)
    assert "1 compilation(s)" in r.stderr


def test_generate_from_finetuned_run(tmp_path: Path, tiny_gemma3: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_gemma3)
    r = runner.invoke(app, ["finetune", str(cfg), "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    run = json.loads(r.stdout)["output_dir"]
    r = runner.invoke(app, ["generate", run, "-p", "the quick", "--template", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "run" and doc["results"][0]["prompt"] == "the quick"
    assert "step_00000003" in r.stderr  # the adapter of the latest checkpoint was loaded
