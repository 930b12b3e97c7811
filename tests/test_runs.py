"""`gemma runs`: the status reader over run directories written by hand (fast), and the table,
`--json` and `runs show` a user sees. Real runs (finished, SIGTERM, NaN) are in test_defaults.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gemma_cli import rundir
from gemma_cli.cli import app

runner = CliRunner()

CONFIG = """\
name: {name}
model: {{preset: gemma3_1b, precision: float32, lora: {{rank: 4}}}}
mesh: {{shape: [1, -1]}}
train: {{max_steps: {steps}, output_dir: {out}}}
"""


def make_run(
    root: Path,
    name: str,
    *,
    steps: int = 10,
    config: str | None = None,
    status: dict[str, Any] | str | None = None,
    summary: dict[str, Any] | str | None = None,
    metrics: list[dict[str, Any] | str] | None = None,
    ckpts: tuple[int, ...] = (),
    latest: str | None = None,
    age: float = 0.0,
) -> Path:
    """A run directory as the trainer leaves it; strings are written verbatim (to corrupt)."""
    run = root / name
    run.mkdir(parents=True)
    if config is not False:
        (run / "config.yaml").write_text(config or CONFIG.format(name=name, steps=steps, out=run))
        t = time.time() - age
        os.utime(run / "config.yaml", (t, t))
    for fname, doc in (("status.json", status), ("summary.json", summary)):
        if doc is not None:
            (run / fname).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    if metrics is not None:
        (run / "metrics.jsonl").write_text(
            "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in metrics)
        )
    for s in ckpts:
        c = run / "checkpoints" / f"step_{s:08d}"
        c.mkdir(parents=True)
        (c / "adapter.lora.h5").write_bytes(b"h5")
        (c / "state.json").write_text(json.dumps({"step": s, "total_steps": steps, "loss": 1.0}))
    if ckpts or latest:
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "checkpoints" / "latest").write_text((latest or f"step_{max(ckpts):08d}") + "\n")
    return run


def status(state: str, **kw: Any) -> dict[str, Any]:
    return {"status": state, "pid": 1, "host": socket.gethostname(), "started": 1.7e9,
            "total_steps": 10, "reason": None, **kw}


METRICS = [
    {"step": 0, "eval_loss": 3.5},
    {"step": 5, "loss": 3.0},
    {"step": 10, "loss": 2.25},
    {"step": 10, "eval_loss": 2.5},
]


def test_finished_run_reads_whole(tmp_path: Path) -> None:
    run = make_run(tmp_path, "done", status=status("finished", step=10),
                   summary={"steps": 10, "total_steps": 10, "final_loss": 2.25, "eval_loss": 2.5},
                   metrics=METRICS, ckpts=(5, 10))
    r = rundir.read_run(run)
    assert (r.status, r.reason, r.preset, r.config_name) == ("finished", None, "gemma3_1b", "done")
    assert (r.steps, r.total_steps, r.train_loss, r.eval_loss) == (10, 10, 2.25, 2.5)
    assert r.checkpoint == str(run / "checkpoints" / "step_00000010") and r.checkpoint_step == 10
    assert r.started == 1.7e9  # when status.json says it first started, not config.yaml's mtime


def test_running_is_checked_against_the_process(tmp_path: Path) -> None:
    import psutil

    me = psutil.Process()
    run = make_run(tmp_path, "live", status=status("running", pid=os.getpid(), pid_started=me.create_time(), step=0),
                   metrics=METRICS[:2], ckpts=(5,))
    r = rundir.read_run(run)
    assert (r.status, r.reason, r.steps, r.total_steps) == ("running", None, 5, 10)
    # the same pid reused by another process: not the run's
    (run / "status.json").write_text(json.dumps(status("running", pid=os.getpid(), pid_started=me.create_time() - 1000)))
    r = rundir.read_run(run)
    assert r.status == "interrupted" and "ended without recording how" in r.reason
    # a process that is gone (a SIGKILL leaves `running` behind)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (run / "status.json").write_text(json.dumps(status("running", pid=p.pid)))
    r = rundir.read_run(run)
    assert r.status == "interrupted" and f"process {p.pid}" in r.reason
    # another host: not checked from here, still reported as running
    (run / "status.json").write_text(json.dumps(status("running", host="other-host")))
    r = rundir.read_run(run)
    assert r.status == "running" and "other-host" in r.reason


def test_interrupted_and_diverged_keep_their_reason(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", status=status("interrupted", step=6, reason="SIGTERM at step 6"),
                 metrics=METRICS[:2], ckpts=(6,))
    b = make_run(tmp_path, "b", status=status("diverged", step=7, reason="loss became nan"),
                 metrics=[*METRICS[:2], {"step": 7, "loss": float("nan")}], ckpts=(5,))
    ra, rb = rundir.read_run(a), rundir.read_run(b)
    assert (ra.status, ra.reason, ra.steps, ra.checkpoint_step) == ("interrupted", "SIGTERM at step 6", 6, 6)
    assert (rb.status, rb.reason, rb.steps, rb.checkpoint_step) == ("diverged", "loss became nan", 7, 5)
    assert rb.to_dict()["train_loss"] == "nan"  # JSON has no NaN


def test_runs_from_before_status_json(tmp_path: Path) -> None:
    done = make_run(tmp_path, "old_done", summary={"steps": 10, "total_steps": 10}, metrics=METRICS, ckpts=(10,))
    cut = make_run(tmp_path, "old_cut", metrics=METRICS[:2], ckpts=(5,))
    nan = make_run(tmp_path, "old_nan", metrics=[{"step": 2, "loss": float("nan")}])
    assert rundir.read_run(done).status == "finished"
    r = rundir.read_run(cut)
    assert r.status == "interrupted" and "no summary.json" in r.reason and r.steps == 5
    assert rundir.read_run(nan).status == "diverged"


BROKEN = [
    ("no_config", {"config": False, "ckpts": (1,)}, "no config.yaml"),
    ("yaml_syntax", {"config": "model: {preset: [\n"}, "config.yaml:"),
    ("bad_key", {"config": "model: {preset: x, precison: float32}\n"}, "did you mean 'precision'"),
    ("torn_summary", {"status": status("finished"), "summary": '{"steps": 1'}, "summary.json: not valid JSON"),
    ("torn_status", {"status": '{"status": "runn'}, "status.json: not valid JSON"),
    ("unknown_status", {"status": {"status": "sleeping"}}, "status.json: no known status"),
    ("finished_no_summary", {"status": status("finished")}, "says finished but there is no summary.json"),
    ("dangling_latest", {"ckpts": (1,), "latest": "step_00000009"}, "latest names step_00000009, which does not exist"),
    ("metrics_garbage", {"metrics": [METRICS[1], "{oops", METRICS[2]]}, "metrics.jsonl:2: not a JSON object"),
]


@pytest.mark.parametrize(("name", "kw", "words"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_runs_name_the_reason(tmp_path: Path, name: str, kw: dict[str, Any], words: str) -> None:
    r = rundir.read_run(make_run(tmp_path, name, **kw))
    assert r.status == "broken" and words in r.reason, r.reason


def test_half_written_checkpoint_and_torn_metrics_line(tmp_path: Path) -> None:
    run = make_run(tmp_path, "half", ckpts=(3,), metrics=[METRICS[1], '{"step": 6, "lo'])
    r = rundir.read_run(run)
    assert r.status == "interrupted" and r.steps == 5  # a torn last line (a kill) is not an error
    (run / "checkpoints" / "step_00000003" / "adapter.lora.h5").unlink()
    r = rundir.read_run(run)
    assert r.status == "broken" and "neither adapter.lora.h5 nor model/" in r.reason
    (run / "checkpoints" / "step_00000003" / "state.json").write_text("{")
    assert "state.json: not valid JSON" in rundir.read_run(run).reason


# ---------------------------------------------------------------------------- the verb ---
@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "finished_run", age=300, status=status("finished", step=10),
             summary={"steps": 10, "total_steps": 10, "final_loss": 2.25, "eval_loss": 2.5},
             metrics=METRICS, ckpts=(10,))
    make_run(root, "stopped_run", age=200, status=status("interrupted", step=6, reason="SIGTERM at step 6"),
             metrics=METRICS[:2], ckpts=(6,))
    make_run(root, "nan_run", age=100, status=status("diverged", step=7, reason="loss became nan"), ckpts=(5,))
    make_run(root, "torn_run", age=50, config="model: [\n")
    (root / "stray_dir").mkdir()
    (root / ".tmp-x").mkdir()  # hidden: never a run
    return root


def test_runs_json_one_row_per_run_newest_first(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(runs_dir.parent)
    r = runner.invoke(app, ["runs", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = {x["name"]: x for x in doc["runs"]}
    assert [x["name"] for x in doc["runs"]][:4] == ["torn_run", "nan_run", "stopped_run", "finished_run"]
    assert set(rows) == {"finished_run", "stopped_run", "nan_run", "torn_run", "stray_dir"}
    assert {n: x["status"] for n, x in rows.items()} == {
        "finished_run": "finished", "stopped_run": "interrupted", "nan_run": "diverged",
        "torn_run": "broken", "stray_dir": "broken",
    }
    f = rows["finished_run"]
    assert (f["steps"], f["total_steps"], f["train_loss"], f["eval_loss"]) == (10, 10, 2.25, 2.5)
    assert f["checkpoint"].endswith("runs/finished_run/checkpoints/step_00000010")
    assert rows["torn_run"]["reason"].startswith("config.yaml:")
    # DIR as an argument, options after it
    r2 = runner.invoke(app, ["runs", str(runs_dir), "--json"])
    assert r2.exit_code == 0, r2.stderr
    again = json.loads(r2.stdout)["runs"]
    assert [(x["name"], x["status"]) for x in again] == [(x["name"], x["status"]) for x in doc["runs"]]


def test_runs_table_and_show(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(runs_dir.parent)
    r = runner.invoke(app, ["runs"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    row = next(ln for ln in lines if "stopped_run" in ln)
    for cell in ("gemma3_1b", "6 / 10", "3.0000", "step_00000006", "interrupted", "SIGTERM at step 6"):
        assert cell in row, (cell, row)
    assert "Traceback" not in r.stdout + r.stderr

    r = runner.invoke(app, ["runs", "show", "finished_run"])
    assert r.exit_code == 0, r.stderr
    assert "finished_run: finished, 10 / 10 steps, train loss 2.2500, eval loss 2.5000" in r.stdout
    assert "max_steps: 10" in r.stdout and '"final_loss": 2.25' in r.stdout
    r = runner.invoke(app, ["runs", "show", "torn_run", "--json"])
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["run"]["status"] == "broken" and doc["config"] is None and doc["summary"] is None
    r = runner.invoke(app, ["runs", "show", "nope"])
    assert r.exit_code == 2 and "nope: no such run" in r.stderr
    r = runner.invoke(app, ["runs", str(runs_dir / "nothing")])
    assert r.exit_code == 2 and "no such directory" in r.stderr


def test_runs_without_a_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["runs", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"dir": "runs", "runs": []}
    r = runner.invoke(app, ["runs"])
    assert r.exit_code == 0 and "no runs under runs/" in r.stdout
