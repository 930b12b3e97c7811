"""`gemma finetune CONFIG --resume auto` (issue #29): the command line a scheduler re-runs
forever on a preemptible machine. Tested three ways on one tiny run: a fresh start, a run
killed after a checkpoint and re-run, and a finished run re-run; and the bad input: a
checkpoint of another config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_finetune import assert_one_error_line, config, gemma

from gemma_cli.commands.finetune_cmd import resume_mode


@pytest.mark.parametrize(("args", "want"), [
    ((False, "c.yaml", ["auto"]), ("c.yaml", ["auto"], False)),  # without --resume "auto" stays an argument
    ((True, "c.yaml", []), ("c.yaml", [], True)),
    ((True, "c.yaml", ["auto", "train.max_steps=3"]), ("c.yaml", ["train.max_steps=3"], "auto")),
    ((True, "auto", ["c.yaml", "train.max_steps=3"]), ("c.yaml", ["train.max_steps=3"], "auto")),
    ((True, "c.yaml", ["train.max_steps=3"]), ("c.yaml", ["train.max_steps=3"], True)),
])
def test_resume_auto_on_the_command_line(args, want):
    assert resume_mode(*args) == want


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory, tiny_gemma3) -> Path:
    tmp = tmp_path_factory.mktemp("resume_auto")
    return config(tmp, tiny_gemma3, train={"max_steps": 4, "checkpoint_every": 2, "output_dir": str(tmp / "out")})


def test_fresh_then_killed_then_finished(run_cfg):
    out = run_cfg.parent / "out"
    # 1. nothing there: starts fresh
    r = gemma("finetune", run_cfg, "--resume", "auto", "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    first = json.loads(r.stdout)
    assert first["steps"] == 4 and not first.get("resumed_from")
    assert "--resume auto: no checkpoint in" in r.stderr and "starting fresh" in r.stderr

    # 2. killed after the step-2 checkpoint: what is on disk then (the step-4 checkpoint and
    # the summary were never written); the same command line continues from step 2
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    (out / "summary.json").unlink()
    # (the run directory itself names the run: its saved config.yaml)
    r = gemma("finetune", "--resume", "auto", out, "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    again = json.loads(r.stdout)
    assert again["resumed_from"] == 2 and again["steps"] == 4
    assert "Resuming from" in r.stderr and "step_00000002" in r.stderr
    assert again["final_loss"] == pytest.approx(first["final_loss"], abs=1e-4)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"

    # 3. finished: nothing is retrained, exit 0
    r = gemma("finetune", run_cfg, "--resume", "auto")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "already finished at step 4" in r.stdout + r.stderr
    assert "Training" not in r.stderr and "Loading" not in r.stderr
    r = gemma("finetune", run_cfg, "--resume", "auto", "--json")
    doc = json.loads(r.stdout)
    assert doc["already_finished"] is True and doc["steps"] == 4 and doc["final_loss"] == again["final_loss"]

    # a run directory with plain --resume: its saved config, already at its last step
    line = assert_one_error_line(gemma("finetune", out, "--resume", "-q"), 2)
    assert "step_00000004 is already at step 4 of 4; nothing to do" in line
    # a run directory without --resume, and a directory that is not a run's: exit 2, said so
    line = assert_one_error_line(gemma("finetune", out, "-q"), 2)
    assert f"{out} is a run directory: add --resume (or --resume auto) to continue it" in line
    line = assert_one_error_line(gemma("finetune", out / "checkpoints", "--resume", "-q"), 2)
    assert "a directory without config.yaml is not a run directory" in line

    # another config on the same run dir: refused before anything loads
    r = gemma("finetune", run_cfg, "--resume", "auto", "optimizer.learning_rate=0.5", "-q")
    line = assert_one_error_line(r, 2)
    assert "--resume auto: the config differs from the one step_00000004 was trained with" in line
