"""The run-config schema: every malformed config exits 2 with one line naming file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gemma_cli.cli import app
from gemma_cli.config import load_config, parse_config
from gemma_cli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

GOOD = """\
model:
  preset: gemma_2b_en
  lora:
    rank: 4
mesh:
  shape: [2, 4]
  axes: [batch, model]
data:
  name: imdb_reviews
  batch_size: 4
"""


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_say_how_to_run(path: Path) -> None:
    cfg = load_config(str(path))
    assert cfg.name == path.stem
    head = path.read_text().splitlines()[:6]
    assert any(f"configs/{path.name}" in line or "make demo" in line for line in head), head


def test_good_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.mesh.resolve(8) == (2, 4)
    assert cfg.optimizer.exclude_from_weight_decay == ["bias", "scale"]
    assert cfg.layout.is_default and cfg.layout.indivisible == "error"
    assert cfg.model.lora_rank == 4
    assert cfg.output_dir == Path("runs/x")


# (yaml text, expected line, expected fragment)
BAD = [
    (GOOD.replace("rank: 4", "rnak: 4"), 4, "model.lora.rnak: unknown key (did you mean 'rank'?)"),
    (GOOD.replace("shape: [2, 4]", "shape: [-1, -1]"), 6, "at most one -1"),
    (GOOD.replace("batch_size: 4", "batch_size: four"), 10, "data.batch_size"),
    (GOOD.replace("batch_size: 4", "batch_size: 3"), 10, "not divisible by the 'batch' mesh axis (2)"),
    (GOOD.replace("  axes: [batch, model]", "  axes: [batch]"), 7, "mesh.axes: 1 axes"),
    (GOOD + "layout:\n  rules:\n    - pattern: 'decoder_block.*(query'\n      axes: [model, null]\n", 13, "regex does not compile"),
    (GOOD + "layout:\n  rules:\n    - pattern: query\n      axes: [modle, null]\n", 14, "axis 'modle' is not a mesh axis"),
    (GOOD.replace("preset: gemma_2b_en", "preset: [oops"), 3, "flow sequence started at line 2"),
    (GOOD + "optimizer:\n  name: lion\n", 12, "optimizer.name"),
    (GOOD + "train:\n  max_steps: 0\n", 12, "train.max_steps"),
    (GOOD.replace("model:\n  preset: gemma_2b_en\n", "model:\n  precision: float32\n"), 1, "model.preset: required key is missing"),
]


@pytest.mark.parametrize("text,line,fragment", BAD)
def test_bad_config_exits_2_with_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)
    r = runner.invoke(app, ["config", "validate", path])
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert err[0].startswith(f"Error: {path}:{line}: "), r.stderr
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("rank: 4", "rnak: 4").replace("batch_size: 4", "batch_size: -1")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert len(e.value.problems) == 2
    assert ":4: model.lora.rnak" in e.value.problems[0] and ":10: data.batch_size" in e.value.problems[1]


def test_overrides_are_typed_and_reported(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    cfg = load_config(path, ["optimizer.learning_rate=1e-4", "mesh.shape=[1,8]", "data.batch_size=8"])
    assert cfg.optimizer.learning_rate == pytest.approx(1e-4)
    assert cfg.mesh.shape == [1, 8]
    with pytest.raises(ConfigError, match=r"override 'optimizer.learnig_rate=1': .*did you mean 'learning_rate'"):
        load_config(path, ["optimizer.learnig_rate=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["optimizer.learning_rate"])
    r = runner.invoke(app, ["config", "validate", path, "model.lora.rank=abc"])
    assert r.exit_code == 2 and "override 'model.lora.rank=abc'" in r.stderr


def test_mesh_fill_and_device_mismatch() -> None:
    cfg = parse_config(GOOD.replace("[2, 4]", "[2, -1]"))
    assert cfg.mesh.resolve(8) == (2, 4)
    cfg = parse_config(GOOD)
    with pytest.raises(Exception, match=r"needs 8 devices but 4 are available"):
        cfg.mesh.resolve(4)


def test_layout_default_shorthand_and_bad_string() -> None:
    assert parse_config(GOOD + "layout: default\n").layout.is_default
    cfg = parse_config(GOOD + "layout: default\n", overrides=["layout.indivisible=replicate"])
    assert cfg.layout.is_default and cfg.layout.indivisible == "replicate"
    with pytest.raises(ConfigError, match="rules must be 'default'"):
        parse_config(GOOD + "layout: defualt\n")


def test_show_json_is_one_document(tmp_path: Path) -> None:
    r = runner.invoke(app, ["config", "show", write(tmp_path, GOOD), "--json", "train.seed=7"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["train"]["seed"] == 7 and doc["model"]["preset"] == "gemma_2b_en"


def test_validate_reads_stdin() -> None:
    r = runner.invoke(app, ["config", "validate", "-", "--json", "--offline"], input=GOOD)
    assert r.exit_code == 0 and json.loads(r.stdout)["valid"] is True


def test_validate_json_reports_problems(tmp_path: Path) -> None:
    r = runner.invoke(app, ["config", "validate", write(tmp_path, GOOD.replace("rank", "rnak")), "--json"])
    assert r.exit_code == 2
    assert json.loads(r.stdout)["problems"][0].endswith("(did you mean 'rank'?)")


def test_missing_file_exits_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["config", "validate", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "no such config file" in r.stderr


def test_cli_import_is_light_and_help_lists_verbs() -> None:
    code = (
        "import sys, gemma_cli.cli\n"
        "heavy=[m for m in ('keras','keras_hub','jax','tensorflow','tensorflow_datasets','pydantic','gemma_cli.config') if m in sys.modules]\n"
        "print(heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    r = subprocess.run([sys.executable, "-m", "gemma_cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for verb in ("login", "inspect", "finetune", "generate", "config"):
        assert verb in r.stdout
    r = subprocess.run([sys.executable, "-m", "gemma_cli", "--version"], capture_output=True, text=True)
    assert r.stdout.startswith("gemma ")
