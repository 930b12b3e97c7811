"""Launchers as users start jobs (issue #29): which environment makes a process join a
multi-process JAX job, with what coordinator, count and index (`runtime.detect_launch`), and
two real processes started with a Slurm-like and an Open MPI-like environment (no GEMMA_*
variables) that form one 8-device mesh over gloo and run a collective."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_cli.engine.core.runtime import Launch, detect_launch
from gemma_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]

SLURM = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
         "SLURM_STEP_NODELIST": "gpu[007-008],cpu1"}
MPI = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
       "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"}


@pytest.mark.parametrize(("env", "want"), [
    ({}, None),
    ({"HOME": "/root", "CUDA_VISIBLE_DEVICES": "0"}, None),
    # GEMMA_COORDINATOR wins over every launcher
    ({**SLURM, "GEMMA_COORDINATOR": "10.0.0.1:1234", "GEMMA_NUM_PROCESSES": "2", "GEMMA_PROCESS_ID": "1"},
     Launch("GEMMA_COORDINATOR", "10.0.0.1:1234", 2, 1)),
    # Slurm: the first host of the step's node list; the port from the job id, as JAX derives it
    (SLURM, Launch("slurm", f"gpu007:{123456 % 4096 + 61440}", 4, 3)),
    ({**SLURM, "SLURM_STEP_NODELIST": "node001,node002"}, Launch("slurm", f"node001:{123456 % 4096 + 61440}", 4, 3)),
    ({**SLURM, "SLURM_STEP_NODELIST": "n[3,7-9]", "GEMMA_COORDINATOR_PORT": "7777"}, Launch("slurm", "n3:7777", 4, 3)),
    ({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),  # an allocation of one task runs alone
    # Open MPI: the launcher's address from its URI; the job id (a multiple of 2^12) gives the port
    (MPI, Launch("mpi", f"10.96.0.1:{1531576320 // 4096 % 4096 + 61440}", 2, 1)),
    ({**MPI, "OMPI_MCA_orte_hnp_uri": "", "PMIX_SERVER_URI": "prterun-host-77@0.0;tcp4://127.0.0.1:5000",
      "GEMMA_COORDINATOR_PORT": "6000"}, Launch("mpi", "127.0.0.1:6000", 2, 1)),
    ({**MPI, "OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, None),
    # Cloud TPU: a pod slice (several workers) or multislice; JAX's own detection fills in
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3", "TPU_WORKER_ID": "2"}, Launch("tpu")),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.5:8080"}, Launch("tpu")),
    ({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, None),  # one TPU VM
], ids=["nothing", "one-gpu-host", "gemma-wins", "slurm-range", "slurm-list", "slurm-port", "slurm-one-task",
        "ompi", "ompi5-pmix", "ompi-one-rank", "tpu-pod", "tpu-multislice", "tpu-one-host"])
def test_detection_table(env, want):
    assert detect_launch(env) == want


def test_a_launcher_variable_that_is_not_a_number_says_which():
    with pytest.raises(UsageError, match=r"SLURM_PROCID='x': not an integer"):
        detect_launch({**SLURM, "SLURM_PROCID": "x"})
    with pytest.raises(UsageError, match="GEMMA_NUM_PROCESSES"):
        detect_launch({"GEMMA_COORDINATOR": "h:1"})


def _launch(envs: list[dict[str, str]]) -> list[dict]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GEMMA_", "SLURM_", "OMPI_", "PMIX_", "TPU_", "MEGASCALE_")) and k != "XLA_FLAGS"}
    base.update(GEMMA_CPU_DEVICES="4", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "launch_probe.py")], env={**base, **e},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in envs]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=180)
            assert p.returncode == 0, stderr[-3000:]
            out.append((json.loads(stdout.strip().splitlines()[-1]), stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _free_job_id() -> int:
    """A job id whose derived port (id % 4096 + 61440) is free here now."""
    import socket

    for job in range(os.getpid() % 4096, os.getpid() % 4096 + 4096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", job % 4096 + 61440))
            except OSError:
                continue
        return job + 4096 * 7
    raise RuntimeError("no free port in 61440-65535")


@pytest.mark.multihost
@pytest.mark.parametrize("launcher", ["slurm", "mpi"])
def test_two_processes_form_one_mesh(launcher):
    job = _free_job_id()
    if launcher == "slurm":
        envs = [{"SLURM_JOB_ID": str(job), "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                 "SLURM_STEP_NODELIST": "localhost"} for i in range(2)]
    else:
        envs = [{"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": str(i), "OMPI_COMM_WORLD_LOCAL_RANK": str(i),
                 "OMPI_MCA_orte_hnp_uri": f"{job * 4096}.0;tcp://127.0.0.1:40000"} for i in range(2)]
    res = _launch(envs)
    for i, (doc, stderr) in enumerate(res):
        assert doc == {"process": i, "processes": 2, "devices": 8, "local_devices": 4,
                       "sum": 4 * 1 + 4 * 2, "launcher": launcher}
        assert f"process {i} of 2, 8 global devices (4 local); launched by {launcher}" in stderr


def test_one_process_never_initialises_and_keras_backend_is_forced():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GEMMA_", "SLURM_", "OMPI_", "PMIX_", "TPU_", "MEGASCALE_")) and k != "XLA_FLAGS"}
    code = ("from gemma_cli.engine.core import runtime; runtime.setup(); import jax, keras; "
            "print(jax.process_count(), jax.device_count(), keras.backend.backend(), runtime._state['distributed'])")
    r = subprocess.run([sys.executable, "-c", code], env={**env, "GEMMA_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
                       "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1", "2", "jax", "False"]
    assert "Warning: KERAS_BACKEND=torch in the environment is ignored: gemma runs keras on jax" in r.stderr


def test_the_first_difference_between_processes_is_named(tmp_path):
    from gemma_cli.config import parse_config
    from gemma_cli.engine.core.agreement import first_difference, flatten
    from gemma_cli.engine.train.recipe import data_files

    a = flatten({"data": {"batch_size": 8, "paths": ["a.jsonl"]}, "train": {"seed": 1}}, "config")
    assert a == {"config.data.batch_size": "8", "config.data.paths": '["a.jsonl"]', "config.train.seed": "1"}
    assert first_difference([a, dict(a)]) is None
    assert first_difference([a, {**a, "config.train.seed": "2"}]) == "config.train.seed is 1 on process 0 but 2 on process 1"
    b = {k: v for k, v in a.items() if k != "config.data.paths"}
    assert first_difference([a, a, b]) == 'config.data.paths is ["a.jsonl"] on process 0 but absent on process 2'
    # the data files: each file's name and size (a file cut short on one host differs)
    (tmp_path / "t1.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "t2.jsonl").write_text('{"text": "yy"}\n')
    cfg = parse_config(f"model: {{preset: gemma3_1b}}\ndata: {{paths: ['{tmp_path}/t*.jsonl']}}\n", "<t>")
    assert data_files(cfg) == {f"data file {tmp_path}/t1.jsonl": "14 bytes", f"data file {tmp_path}/t2.jsonl": "15 bytes"}
