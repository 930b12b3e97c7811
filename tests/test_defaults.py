"""Verbs without CONFIG (issue #17): $GEMMA_CONFIG, ./gemma.yaml, the most recent run under runs/;
`gemma runs` on a real finished run; `gemma init` on 1 and 8 devices; `gemma inspect --live` on a
run against its plan.

Cost control: one project with one real finished run feeds the default, inspect, generate and
export tests; the interrupted and diverged runs are the ones test_finetune.py already makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import CORPUS
from typer.testing import CliRunner

from gemma_cli import targets
from gemma_cli.cli import app
from gemma_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def gemma(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(project: Path, preset: Path, name: str = "tiny", **train: Any) -> Path:
    corpus = project / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for _ in range(6) for t in CORPUS[:6]))
    cfg = {
        "name": name,
        "model": {"preset": str(preset), "precision": "float32", "lora": {"rank": 4}},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "layout": {"indivisible": "replicate"},
        "data": {"paths": [str(corpus)], "sequence_length": 16, "batch_size": 4, "eval_holdout": 8},
        "optimizer": {"learning_rate": 1e-2},
        "train": {"max_steps": STEPS, "output_dir": str(project / "runs" / name), "checkpoint_every": 2,
                  "log_every": 2, **train},
        "generate": {"max_length": 12},
    }
    p = project / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.fixture()
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEMMA_CONFIG", raising=False)
    return tmp_path


# ------------------------------------------------------------ defaults, no model loaded ---
def test_nothing_to_choose_exits_2_naming_the_three_places(cwd: Path) -> None:
    for verb in (["config", "show"], ["config", "validate"], ["inspect"], ["generate", "-p", "x"],
                 ["export", "--out", "e"]):
        r = gemma(*verb)
        assert r.exit_code == 2, (verb, r.stderr)
        err = r.stderr.strip()
        assert err.startswith("Error: no CONFIG given and none found") and len(err.splitlines()) == 1, err
        for place in ("$GEMMA_CONFIG is not set", f"no gemma.yaml in {cwd}", "runs/"):
            assert place in err, (place, err)
        assert "gemma init" in err and "Traceback" not in err


def test_env_then_gemma_yaml_then_latest_run(cwd: Path, tiny_gemma3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_runs import make_run, status

    older = make_run(cwd / "runs", "older", age=100, status=status("finished"), summary={"steps": 10}, ckpts=(10,))
    make_run(cwd / "runs", "newer", age=10, status=status("interrupted", reason="SIGTERM at step 1"))
    make_run(cwd / "runs", "newest_broken", age=1, config="model: [\n")

    # 3. the most recent usable run: its config.yaml (a broken newer one is skipped and named)
    r = gemma("config", "show", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "newer"
    assert "using runs/newer (the most recent run under runs/; skipped newer: runs/newest_broken is broken" in r.stderr
    # generate/export want fine-tuned weights: the most recent run with a checkpoint, its latest
    t = targets.resolve(None, [], verb="generate")
    assert (t.kind, t.run_dir, t.checkpoint) == ("run", Path("runs/older"), Path("runs/older/checkpoints/step_00000010"))
    assert "runs/newer has no checkpoint yet" in t.chosen_because
    # overrides alone: `gemma config show train.seed=3` is not a CONFIG named train.seed=3
    r = gemma("config", "show", "train.seed=3", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["train"]["seed"] == 3

    # 2. gemma.yaml wins over runs; generate/export use the run it trained once it has a checkpoint
    local = write_config(cwd, tiny_gemma3, name="gemma")
    local.rename(cwd / "gemma.yaml")
    r = gemma("config", "validate", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["config"] == "gemma.yaml", r.stdout
    assert "using gemma.yaml (gemma.yaml in the working directory)" in r.stderr
    t = targets.resolve(None, [], verb="generate")
    assert (t.kind, t.checkpoint, t.source) == ("config", None, "gemma.yaml")  # no run of it yet
    own = make_run(cwd / "runs", "gemma", status=status("finished"), summary={"steps": 3}, ckpts=(3,))
    t = targets.resolve(None, [], verb="export")
    assert (t.kind, t.run_dir.resolve(), t.chosen_because) == ("run", own, "the run of gemma.yaml")
    assert targets.resolve(None, [], verb="inspect").source == "gemma.yaml"

    # 1. $GEMMA_CONFIG wins over both; naming nothing is an error, never a fall-through
    monkeypatch.setenv("GEMMA_CONFIG", str(older))
    r = gemma("config", "show", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "older"
    assert f"using {older} (from $GEMMA_CONFIG)" in r.stderr
    monkeypatch.setenv("GEMMA_CONFIG", str(cwd / "missing.yaml"))
    for verb in (["config", "show"], ["inspect"], ["generate", "-p", "x"]):
        r = gemma(*verb)
        assert r.exit_code == 2 and f"$GEMMA_CONFIG names {cwd / 'missing.yaml'}, which does not exist" in r.stderr


def test_finetune_keeps_config_required(cwd: Path) -> None:
    r = gemma("finetune")
    assert r.exit_code == 2 and "`gemma init` writes a gemma.yaml" in r.stderr
    (cwd / "gemma.yaml").write_text("model: {preset: gemma3_1b}\n")
    r = gemma("finetune", "train.max_steps=3")
    assert r.exit_code == 2 and "gemma finetune gemma.yaml" in r.stderr, r.stderr


def test_explicit_targets_say_what_they_are(cwd: Path, tiny_gemma3: Path) -> None:
    with pytest.raises(UsageError, match="no such config file"):
        targets.resolve("nope.yaml", [], verb="inspect")
    with pytest.raises(UsageError, match="a preset; `gemma config` takes a run config or a fine-tune run"):
        targets.resolve(str(tiny_gemma3), [], verb="config")
    t = targets.resolve("kaggle://keras/gemma3/keras/gemma3_1b", [], verb="export")
    assert (t.kind, t.config.model.precision, t.checkpoint) == ("preset", "float32", None)


# --------------------------------------------------------------------- the real run ---
# `gemma runs` on real interrupted (SIGTERM, with `running` seen mid-run) and diverged runs is
# asserted in test_finetune.py, on the runs it already makes.
@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_gemma3: Path) -> dict[str, Any]:
    """A project directory holding one real finished run under runs/."""
    proj = tmp_path_factory.mktemp("project")
    cfg = write_config(proj, tiny_gemma3)
    r = gemma("finetune", cfg, "--json", "-q")
    assert r.exit_code == 0, (r.stderr, r.exception)
    return {"dir": proj, "out": proj / "runs" / "tiny", "cfg": cfg, "summary": json.loads(r.stdout)}


def test_real_finished_run_in_gemma_runs(project: dict[str, Any]) -> None:
    r = gemma("runs", project["dir"] / "runs", "--json")
    assert r.exit_code == 0, r.stderr
    (row,) = json.loads(r.stdout)["runs"]
    s = project["summary"]
    assert row["name"] == "tiny" and row["status"] == "finished" and row["reason"] is None
    assert (row["steps"], row["total_steps"], row["checkpoint_step"]) == (STEPS, STEPS, STEPS)
    assert row["train_loss"] == pytest.approx(s["final_loss"]) and row["eval_loss"] == pytest.approx(s["eval_loss"])
    assert row["checkpoint"] == s["checkpoint"]
    status = json.loads((project["out"] / "status.json").read_text())
    assert status["status"] == "finished" and status["pid"] == os.getpid() and status["step"] == STEPS


def test_quickstart_short_forms_after_a_run(project: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project["dir"])
    monkeypatch.delenv("GEMMA_CONFIG", raising=False)
    # typed exactly as the README's quickstart has it
    r = gemma("inspect", "--layer", "decoder_block_1")
    assert r.exit_code == 0, r.stderr
    assert "using runs/tiny (the most recent run under runs/" in r.stderr
    assert "decoder_block_1" in r.stdout and "attention/query/kernel" in r.stdout


def test_inspect_live_on_the_run_matches_its_plan(project: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project["dir"])
    monkeypatch.delenv("GEMMA_CONFIG", raising=False)
    r = gemma("inspect", "--live", "--optimizer", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"]["mode"] == "live" and doc["target"]["kind"] == "run"
    assert Path(doc["model"]["checkpoint"]).resolve() == Path(project["summary"]["checkpoint"])
    assert doc["totals"]["mismatches"] == 0 and not [p for p in doc["problems"] if p["level"] == "mismatch"]
    rows = doc["variables"] + doc["optimizer_variables"]
    assert rows and all(r_["plan_spec"] == r_["spec"] for r_ in rows)
    assert any("model" in r_["spec"] for r_ in doc["variables"])  # something is really sharded
    # the human table puts the plan next to the live spec
    r = gemma("inspect", "--live", "--layer", "decoder_block_1")
    assert r.exit_code == 0, r.stderr
    assert "plan" in r.stdout and "every variable as planned" in r.stdout and "step_00000006 loaded" in r.stdout


def test_generate_and_export_default_to_the_latest_checkpoint(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(project["dir"])
    monkeypatch.delenv("GEMMA_CONFIG", raising=False)
    r = gemma("generate", "-p", "the quick", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "run" and Path(doc["checkpoint"]).resolve() == Path(project["summary"]["checkpoint"])
    assert doc["chosen_because"] == "the most recent run under runs/"
    assert f"latest checkpoint step_{STEPS:08d}" in r.stderr
    r = gemma("export", "--format", "preset", "--out", tmp_path / "exported", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert Path(doc["checkpoint"]).resolve() == Path(project["summary"]["checkpoint"]) and doc["lora_merged"] > 0


# ------------------------------------------------------------------------- gemma init ---
def test_init_on_8_devices_then_the_short_forms(cwd: Path, tiny_gemma3: Path) -> None:
    data = cwd / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": t, "response": t[::-1]}) + "\n" for t in CORPUS))
    r = gemma("init", "--preset", tiny_gemma3, "--data", "train.jsonl", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    # the split finetune would take for this config without mesh.shape (the lowest estimated
    # traffic that fits; tests/test_traffic.py checks that rule against the compiled step)
    assert (doc["devices"], doc["platform"], doc["mesh"]) == (8, "cpu", [2, 4])
    text = (cwd / "gemma.yaml").read_text()
    assert text.startswith("# gemma run config written by `gemma init`")
    cfg = yaml.safe_load(text)
    assert cfg["mesh"] == {"shape": [2, 4], "axes": ["batch", "model"]}
    assert cfg["model"] == {"preset": str(tiny_gemma3), "precision": "float32", "lora": {"rank": 4}}
    assert cfg["data"]["paths"] == ["train.jsonl"] and cfg["data"]["batch_size"] == 2
    assert cfg["data"]["template"] == "Instruction:\n{instruction}\n\nResponse:\n{response}"
    # why, one line per split: its estimated traffic and planned memory
    assert "# mesh [2, 4] chosen (batch × model, layout default): the lowest estimated collective traffic" in text
    for split in ("[2, 4]", "[4, 2]", "[8, 1]", "[1, 8]"):
        assert f"#   {split}: sends ~" in text, split
    # the same rule as finetune's: the written config without mesh.shape (and the batch the
    # mesh did not yet bound) gets the same split
    from gemma_cli.config import parse_config
    from gemma_cli.engine.plan import machine

    cfg["data"]["batch_size"] = 8
    del cfg["mesh"]["shape"]
    again = parse_config(yaml.safe_dump(cfg), "<again>")
    assert machine.choose(again).shape == (2, 4) and again.mesh.shape == [2, 4]
    # the README's quickstart, typed exactly so, after `gemma init`
    r = gemma("inspect", "--layer", "decoder_block_1", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["mesh"]["shape"] == [2, 4] and "using gemma.yaml" in r.stderr
    # never overwritten
    before = (cwd / "gemma.yaml").read_bytes()
    r = gemma("init", "--preset", "gemma_7b_en")
    assert r.exit_code == 2 and "gemma.yaml: already exists; nothing was written" in r.stderr
    assert (cwd / "gemma.yaml").read_bytes() == before


def test_init_bad_data_writes_nothing(cwd: Path) -> None:
    r = gemma("init", "--preset", "gemma3_1b", "--data", "nothing/*.jsonl")
    assert r.exit_code == 2 and "--data nothing/*.jsonl: no such file" in r.stderr
    (cwd / "x.parquet").write_text("")
    r = gemma("init", "--preset", "gemma3_1b", "--data", "x.parquet")
    assert r.exit_code == 2 and "not a readable Parquet file" in r.stderr
    r = gemma("init", "--preset", "gemma3_1bb")
    assert r.exit_code == 2 and "did you mean gemma3_1b" in r.stderr
    assert not (cwd / "gemma.yaml").exists()


def test_init_on_8_devices_known_architectures(cwd: Path) -> None:
    # the tutorial's 7B, planned without weights: a split of the 8 devices, and why in the file
    r = gemma("init", "--preset", "gemma_7b_en", "--json")
    assert r.exit_code == 0, r.stderr
    mesh = json.loads(r.stdout)["mesh"]
    assert mesh in ([8, 1], [4, 2], [2, 4], [1, 8])
    text = (cwd / "gemma.yaml").read_text()
    assert yaml.safe_load(text)["mesh"]["shape"] == mesh
    assert f"# mesh {mesh} chosen" in text


def test_init_on_1_device(cwd: Path, tiny_gemma3: Path) -> None:
    (cwd / "c.txt").write_text("one line\nanother line\n")
    env = {**os.environ, "GEMMA_CPU_DEVICES": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "gemma_cli", "init", "--preset", str(tiny_gemma3), "--data", "c.txt", "--json"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert (doc["devices"], doc["mesh"]) == (1, [1, 1])
    cfg = yaml.safe_load((cwd / "gemma.yaml").read_text())
    assert cfg["mesh"]["shape"] == [1, 1] and cfg["data"]["batch_size"] == 2 and cfg["data"]["field"] == "text"
    r = gemma("config", "validate", "--json")  # what init wrote validates here as well
    assert r.exit_code == 0 and json.loads(r.stdout)["valid"] is True


def test_live_rows_against_the_plan_flag_each_difference() -> None:
    from rich.console import Console

    from gemma_cli.commands.inspect_cmd import render
    from gemma_cli.engine.plan.inspect import _against_plan

    def row(path: str, spec: list[Any]) -> dict[str, Any]:
        return {"path": path, "shape": [4, 8], "dtype": "float32", "spec": spec, "shard_shape": [4, 8],
                "bytes_per_device": 128, "rule": None}

    planned = [row("a/kernel", ["model", None]), row("b/kernel", [None, None]), row("gone/kernel", [None, None])]
    live = [row("a/kernel", [None, None]), row("b/kernel", [None, None]), row("new/kernel", [None, "model"])]
    opt_plan = [{**row("x", ["model", None]), "variable": "a/kernel", "slot": "momentum"}]
    opt_live = [{**row("x", [None, None]), "variable": "a/kernel", "slot": "momentum"}]
    problems = _against_plan(planned, live, opt_plan, opt_live)
    assert [(p["level"], p["variable"]) for p in problems] == [
        ("mismatch", "a/kernel"), ("mismatch", "new/kernel"), ("mismatch", "gone/kernel"), ("mismatch", "a/kernel"),
    ]
    assert problems[0]["message"] == "a/kernel: live P(None, None) but the plan says P('model', None)"
    assert [r["plan_spec"] for r in live] == [["model", None], [None, None], None]
    assert "a/kernel · momentum: live P(None, None)" in problems[3]["message"]

    doc = {
        "mesh": {"shape": [1, 8], "axes": ["batch", "model"], "devices": 8},
        "model": {"preset": "p", "backbone": "B", "precision": "float32", "lora_rank": 0, "optimizer": "adamw",
                  "mode": "live", "checkpoint": "runs/x/checkpoints/step_00000002"},
        "variables": live, "optimizer_variables": [], "problems": problems, "unused_rules": [], "notes": [],
        "totals": {"params": 96, "trainable_params": 96, "variables": 3, "weights_bytes_per_device": 384,
                   "gradients_bytes_per_device": 384, "optimizer_bytes_per_device": 0, "optimizer_variables": 0,
                   "activations_bytes_per_device": 0, "batch_per_device": 1, "sequence_length": 8,
                   "total_bytes_per_device": 768, "device_memory_bytes": None, "fits": None,
                   "unmatched_variables": 3, "mismatches": len(problems)},
    }
    console = Console(record=True, width=200, force_terminal=True)
    render(doc, console)
    text = console.export_text()
    assert "plan" in text and "P('model', None)" in text and "= live" in text and "— (not planned)" in text
    assert "checkpoint runs/x/checkpoints/step_00000002 loaded; 4 variable(s) differ from the plan" in text
    assert "mismatch: a/kernel: live P(None, None) but the plan says P('model', None)" in text
