"""Multi-host for real: 2 local processes x 4 CPU devices over Gloo on 127.0.0.1 (issue #3).

Each process runs `python -m gemma_cli finetune CONFIG --json` with the same config, told its
place by GEMMA_COORDINATOR / GEMMA_NUM_PROCESSES / GEMMA_PROCESS_ID (engine/core/runtime.py). The
output_dir is relative and each process has its own working directory, so "only process 0
writes" is visible on disk. The reference is the same config on one process with 8 devices.

Run: pytest -m multihost tests/test_multihost.py
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
import yaml
from test_finetune import corpus_file, gemma

pytestmark = pytest.mark.multihost

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 420  # seconds for one multi-process launch (both processes)
STEPS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], cwds: list[Path]) -> list[dict[str, Any]]:
    """Run argv in 2 processes (process i in cwds[i]); bounded, killed on failure or timeout."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GEMMA_CPU_DEVICES")}
    env.update(GEMMA_COORDINATOR=f"127.0.0.1:{port}", GEMMA_NUM_PROCESSES="2", GEMMA_CPU_DEVICES="4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    procs = []
    try:
        for i, cwd in enumerate(cwds):
            cwd.mkdir(parents=True, exist_ok=True)
            procs.append(subprocess.Popen(
                argv, cwd=cwd, env={**env, "GEMMA_PROCESS_ID": str(i)},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        deadline = time.time() + TIMEOUT
        results = []
        for p in procs:
            out, err = p.communicate(timeout=max(deadline - time.time(), 1))
            results.append({"rc": p.returncode, "stdout": out, "stderr": err})
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def mh_config(tmp_path_factory, tiny_presets) -> Path:
    tmp = tmp_path_factory.mktemp("multihost")
    d = {
        "model": {"preset": str(tiny_presets["gemma3"]), "precision": "float32", "lora": {"rank": 4}},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},  # batch axis = across the 2 processes
        "layout": {"indivisible": "replicate"},
        "data": {"paths": [str(corpus_file(tmp / "corpus.jsonl"))], "sequence_length": 16, "batch_size": 4,
                 "eval_holdout": 8},
        "optimizer": {"learning_rate": 2e-2, "schedule": "cosine", "warmup_steps": 2},
        "train": {"max_steps": STEPS, "output_dir": "out", "checkpoint_every": 6, "eval_every": 6, "log_every": 4},
    }
    path = tmp / "mh.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_each_process_feeds_its_shard_of_the_global_batch(mh_config, packing):
    """Through keras' own fit input path: global batch = data.batch_size, rows split by process,
    the same batches as one process feeding every stream; each process tokenizes only its own
    stream of the records."""
    tag = "packed" if packing else "padded"
    seq = 48 if packing else 16  # room for two of the corpus' sentences in a packed row
    res = launch([sys.executable, str(ROOT / "tests" / "multihost_probe.py"), str(mh_config), f"data.packing={packing}",
                  f"data.sequence_length={seq}"],
                 [mh_config.parent / f"probe0-{tag}", mh_config.parent / f"probe1-{tag}"])
    for r in res:
        assert r["rc"] == 0, r["stderr"][-3000:]
    docs = [json.loads(r["stdout"]) for r in res]  # stdout is exactly our JSON (Gloo's lines go to stderr)
    assert [d["process"] for d in docs] == [0, 1]
    assert docs[0]["expected"] == docs[1]["expected"]  # both read the same data in the same order
    for p, d in enumerate(docs):
        # the batch axis (2) spans the processes: process p feeds stream p, rows 2p, 2p+1
        assert d["streams"] == [p, p + 1, 2]
        assert d["streams_loaded"] == [p], d["streams_loaded"]
        for b, want in zip(d["batches"], d["expected"], strict=True):
            assert b["global_shape"] == [4, seq]
            assert sorted(map(int, b["rows"])) == [2 * p, 2 * p + 1]
            for row, tokens in b["rows"].items():
                assert tokens == want[int(row)], (p, row)
    if packing:  # packed rows hold several documents
        assert any(row.count(2) > 1 for b in docs[0]["expected"] for row in b), "no row holds two <bos>"


def test_two_processes_train_like_one(mh_config, tmp_path, monkeypatch):
    cwds = [mh_config.parent / "p0", mh_config.parent / "p1"]
    t = time.time()
    res = launch([sys.executable, "-m", "gemma_cli", "finetune", str(mh_config), "--json"], cwds)
    mh_seconds = time.time() - t
    for r in res:
        assert r["rc"] == 0, r["stderr"][-3000:]
    s0, s1 = (json.loads(r["stdout"]) for r in res)  # each stdout is exactly one JSON document
    assert s0["steps"] == s1["steps"] == STEPS
    assert s0["mesh"] == {"shape": [2, 4], "axes": ["batch", "model"], "devices": 8}
    assert s0["final_loss"] == pytest.approx(s1["final_loss"], abs=1e-6)  # one global computation
    # only process 0 wrote: metrics, checkpoints, config, summary
    out0, out1 = cwds[0] / "out", cwds[1] / "out"
    assert (out0 / "metrics.jsonl").is_file() and (out0 / "summary.json").is_file()
    assert (out0 / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"
    assert (out0 / "checkpoints" / "step_00000006" / "adapter.lora.h5").is_file()
    assert not out1.exists() or not any(out1.rglob("*")), sorted(map(str, out1.rglob("*")))

    # the reference: the same config in one process on 8 devices (in process, conftest's 8)
    monkeypatch.chdir(tmp_path)
    r = gemma("finetune", mh_config, "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    single = json.loads(r.stdout)
    diff = abs(s0["final_loss"] - single["final_loss"])
    ediff = abs(s0["eval_loss"] - single["eval_loss"])
    print(f"\nmultihost: 2x4 devices {mh_seconds:.0f}s wall; final loss {s0['final_loss']:.6f} vs single "
          f"{single['final_loss']:.6f} (|diff| {diff:.2e}); eval {s0['eval_loss']:.6f} vs {single['eval_loss']:.6f}")
    assert diff <= 1e-4 and ediff <= 1e-4
    # and the adapters agree
    import numpy as np
    from test_finetune import lora_arrays

    a = lora_arrays(out0 / "checkpoints" / f"step_{STEPS:08d}")
    b = lora_arrays(tmp_path / "out" / "checkpoints" / f"step_{STEPS:08d}")
    wdiff = max(float(np.max(np.abs(a[n] - b[n]))) for n in a)
    print(f"multihost: max |LoRA weight diff| vs single process {wdiff:.2e}")
    assert wdiff <= 1e-4


def test_processes_started_with_different_configs_both_exit_2_naming_the_key(mh_config, tmp_path):
    """Issue #29: a job whose processes loaded configs that differ in one key fails on every
    process with the key, before any model loads, instead of hanging in a collective."""
    cwds = [tmp_path / "p0", tmp_path / "p1"]
    for i, cwd in enumerate(cwds):
        cwd.mkdir()
        d = yaml.safe_load(mh_config.read_text())
        d["optimizer"]["learning_rate"] = [2e-2, 1e-2][i]
        (cwd / "c.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    res = launch([sys.executable, "-m", "gemma_cli", "finetune", "c.yaml", "-q"], cwds)
    for i, r in enumerate(res):
        assert r["rc"] == 2, (i, r["stderr"][-3000:])
        errors = [ln for ln in r["stderr"].splitlines() if ln.startswith("Error:")]
        assert errors == ["Error: the processes of this job were started differently: config.optimizer.learning_rate "
                          "is 0.02 on process 0 but 0.01 on process 1 (start every process with the same config, "
                          "overrides and data files)"], r["stderr"][-3000:]
        assert "Traceback" not in r["stderr"] and "Loading" not in r["stderr"]
        assert not (cwds[i] / "out").exists()
