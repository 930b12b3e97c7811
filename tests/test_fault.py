"""`kill -9` of `gemma finetune` at random moments, 20 times in a row (issue #10).

One run directory; each round starts `python -m gemma_cli finetune CONFIG [--resume]` as a
child process and SIGKILLs it at a moment drawn from a seeded RNG, in one of three ways:

- `startup`: after a random delay from the start (imports, model load, compilation), or as
  soon as it has saved its first step, whichever comes first;
- `step`: once the child has written a new checkpoint, after a random fraction of a step (a
  step, or the checkpoint write that follows it);
- `write`: as soon as a checkpoint being written (`step_N.tmp-*`) appears on disk.

After every kill: every `step_N` directory is a complete, readable checkpoint, and the next
child resumes from the newest one. The last child runs to the end, and its LoRA weights and
optimizer state equal those of the same config trained without interruption.

Cost: 21 short child processes (JAX's persistent compilation cache, shared by the children,
saves all but the first compilation), a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_finetune import corpus_file, gemma, lora_arrays

from gemma_cli import preflight
from gemma_cli.engine.model import checkpoint

ROOT = Path(__file__).resolve().parents[1]
KILLS = 20
STEPS = 100  # each round trains a few steps at most before its kill: the last round has steps left
SEED = 10
CHILD_TIMEOUT = 300  # seconds a child may take to reach the moment it is killed at


def _config(tmp: Path, preset: Path, out: Path, name: str) -> Path:
    d = {
        "model": {"preset": str(preset), "precision": "float32", "lora": {"rank": 4}},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "layout": {"indivisible": "replicate"},
        "data": {"paths": [str(corpus_file(tmp / "corpus.jsonl"))], "sequence_length": 16, "batch_size": 4},
        "optimizer": {"name": "adamw", "learning_rate": 1e-2},
        "train": {"max_steps": STEPS, "output_dir": str(out), "checkpoint_every": 1, "keep_checkpoints": 2,
                  "log_every": 1},
    }
    p = tmp / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(tmp / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


def _steps_on_disk(out: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in checkpoint.complete(out)]


def _writing(out: Path) -> bool:
    root = checkpoint.ckpt_root(out)
    try:
        return any(".tmp-" in p.name and p.name.startswith("step_") for p in root.iterdir())
    except OSError:
        return False


def _wait(cond: Any, child: subprocess.Popen, log: Path, poll: float = 0.002) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not cond():
        if child.poll() is not None:
            pytest.fail(f"the child ended (exit {child.returncode}) before it was killed:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"no progress within {CHILD_TIMEOUT} s:\n{log.read_text()[-3000:]}")
        time.sleep(poll)


def _all_checkpoints_readable(out: Path) -> None:
    """Every directory named like a checkpoint is one: complete and readable."""
    for p in sorted(checkpoint.ckpt_root(out).glob("step_*")):
        if ".tmp-" in p.name or ".old-" in p.name or ".del-" in p.name:
            continue  # a killed writer's leftovers: never a checkpoint by name
        assert (p / "state.json").is_file(), f"{p} looks like a checkpoint but is incomplete"
        assert preflight.checkpoint(p, optimizer=True) == [], p


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_gemma3: Path) -> Path:
    """The same config trained without interruption (in process)."""
    tmp = tmp_path_factory.mktemp("fault_ref")
    out = tmp / "out"
    r = gemma("finetune", _config(tmp, tiny_gemma3, out, "ref.yaml"), "-q")
    assert r.exit_code == 0, (r.stderr, r.exception)
    return checkpoint.latest(out)


def test_kill_9_twenty_times_then_resume_equals_uninterrupted(tmp_path: Path, tiny_gemma3: Path, reference: Path) -> None:
    out = tmp_path / "out"
    cfg = _config(tmp_path, tiny_gemma3, out, "run.yaml")
    env = _env(tmp_path)
    t0, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    rng = random.Random(SEED)
    rounds: list[dict[str, Any]] = []
    for i in range(KILLS):
        before = _steps_on_disk(out)
        newest = checkpoint.latest(out)
        resume_from = int(newest.name.split("_")[1]) if newest else None
        assert resume_from == (before[-1] if before else None)  # the newest complete one
        mode = rng.choice(["startup", "step", "write"])
        delay = rng.uniform(0.3, 6.0) if mode == "startup" else rng.uniform(0.0, 0.06)
        log = tmp_path / f"child-{i:02d}.log"
        argv = [sys.executable, "-m", "gemma_cli", "finetune", str(cfg)] + (["--resume"] if before else [])
        with open(log, "w") as err:
            child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp_path)
            try:
                if mode == "startup":  # at the delay, or once the child saved a step, whichever is first
                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline and child.poll() is None and _steps_on_disk(out) == before:
                        time.sleep(0.005)
                else:
                    _wait(lambda b=before: _steps_on_disk(out)[-1:] > b[-1:], child, log)
                    if mode == "write":
                        _wait(lambda: _writing(out), child, log, poll=0.0005)
                    else:
                        time.sleep(delay)
                writing = _writing(out)
                child.send_signal(signal.SIGKILL)
            finally:
                child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL, (child.returncode, log.read_text()[-3000:])
        after = _steps_on_disk(out)
        _all_checkpoints_readable(out)
        text = log.read_text()
        if resume_from is not None and "Resuming from" in text:
            # the child continued from the newest complete checkpoint there was
            assert f"Resuming from {out / 'checkpoints' / f'step_{resume_from:08d}'}" in text, text[-2000:]
        if after[-1:] > before[-1:]:
            assert resume_from is None or "Resuming from" in text, text[-2000:]
        assert after[-1:] < [STEPS], "the run finished before all kills were made: raise STEPS"
        rounds.append({"mode": mode, "before": resume_from, "after": after[-1] if after else None,
                       "writing": writing or _writing(out)})

    final = subprocess.run(
        [sys.executable, "-m", "gemma_cli", "finetune", str(cfg), "--resume", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    summary = json.loads(final.stdout)
    last = _steps_on_disk(out)
    assert summary["steps"] == STEPS and last[-1] == STEPS
    assert summary["resumed_from"] == rounds[-1]["after"]

    a, b = lora_arrays(reference), lora_arrays(checkpoint.latest(out))
    assert a.keys() == b.keys() and len(a) == 9  # 8 kernels + the rank
    diff = max(float(np.max(np.abs(a[n] - b[n]))) for n in a)
    oa, ob = np.load(reference / "optimizer.npz"), np.load(checkpoint.latest(out) / "optimizer.npz")
    odiff = max(float(np.max(np.abs(oa[n] - ob[n]))) for n in oa.files if n != "__paths__")
    # metrics.jsonl: one whole line per step, each step once (cut lines and replayed steps trimmed)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    modes = {m: sum(r["mode"] == m for r in rounds) for m in ("startup", "step", "write")}
    progressed = sum(1 for r in rounds if r["after"] != r["before"])
    mid_write = sum(1 for r in rounds if r["writing"])
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(f"\nfault: {KILLS} kills {modes}, {progressed} after progress, {mid_write} with a checkpoint half "
          f"written; final resume from step {summary['resumed_from']}; max |ref - resumed| LoRA {diff:.3g}, "
          f"optimizer {odiff:.3g}; {KILLS + 1} children: {time.monotonic() - t0:.0f} s wall, {cpu:.0f} s CPU")
    assert diff <= 1e-6 and odiff <= 1e-6, (diff, odiff)
    assert steps == list(range(1, STEPS + 1)), steps
    assert mid_write >= 1, rounds  # some kill landed inside a checkpoint write
    assert progressed >= KILLS // 3, rounds  # and many after the run had moved on
    assert not any(".tmp-" in p.name for p in checkpoint.ckpt_root(out).iterdir())  # leftovers cleaned


def test_a_pointer_left_behind_by_a_kill_is_overtaken(tmp_path: Path) -> None:
    """Killed after a checkpoint was renamed into place but before `latest` moved: the newer
    checkpoint is the one to continue from; a pointer set back by hand later is followed."""
    root = checkpoint.ckpt_root(tmp_path)
    for step in (2, 4):
        d = root / f"step_{step:08d}"
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"step": step}))
    (root / "latest").write_text("step_00000002\n")
    time.sleep(0.01)
    d = root / "step_00000006"
    d.mkdir()
    (d / "state.json").write_text(json.dumps({"step": 6}))
    assert checkpoint.latest(tmp_path).name == "step_00000006"
    (root / "latest").write_text("step_00000004\n")  # by hand, after: followed
    assert checkpoint.latest(tmp_path).name == "step_00000004"
    assert [p.name for p in checkpoint.prune(tmp_path, keep=1)] == ["step_00000002"]
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["step_00000004", "step_00000006"]
    assert not [p for p in root.iterdir() if ".del-" in p.name]  # pruned by rename, then deleted
