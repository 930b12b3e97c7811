"""The process environment for the engine, set before the first heavy import. Idempotent.

- KERAS_BACKEND=jax, quiet TensorFlow logs, TensorFlow kept off accelerators (tf.data only).
- `GEMMA_CPU_DEVICES=N` (or `setup(cpu_devices=N)`) simulates N XLA CPU devices, for tests
  and for running the real ModelParallel path on a laptop.
- Multi-host: JAX's distributed runtime is initialised once, before any computation, from
  what the launcher set (`detect_launch`): `GEMMA_COORDINATOR=host:port GEMMA_NUM_PROCESSES=N
  GEMMA_PROCESS_ID=i` (wins), a Slurm step of several tasks, an Open MPI job of several ranks,
  a Cloud TPU pod slice or multislice. A single process on one host never tries.
- `KERAS_BACKEND` other than jax in the environment: a warning, and keras runs on JAX.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_state: dict[str, Any] = {"setup": False, "distributed": False}


def setup(cpu_devices: int | None = None, without_tensorflow: bool = False) -> None:
    """Prepare the environment; must run before keras/jax/tensorflow are imported.

    `without_tensorflow=True` (weight-free plans) makes `import tensorflow` fail in this
    process, so keras-hub loads without it: 4× faster start, a third of the memory.
    """
    if _state["setup"]:
        return
    if without_tensorflow and "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # import → ImportError
    backend = os.environ.get("KERAS_BACKEND", "jax")
    if backend != "jax":
        sys.stderr.write(f"Warning: KERAS_BACKEND={backend} in the environment is ignored: gemma runs keras on jax\n")
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    # jax should not grab all accelerator memory up front when TF shares the process
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    n = cpu_devices or int(os.environ.get("GEMMA_CPU_DEVICES", "0") or 0)
    if n:
        if "jax" in sys.modules:
            import jax

            if jax.device_count() != n:
                from gemma_cli.errors import UsageError

                raise UsageError(
                    f"cannot simulate {n} CPU devices: jax was already initialised with "
                    f"{jax.device_count()}"
                )
        flags = os.environ.get("XLA_FLAGS", "")
        flags = " ".join(f for f in flags.split() if "xla_force_host_platform_device_count" not in f)
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    _state["setup"] = True
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    if not os.environ.get("GEMMA_DEBUG"):
        # a failed download is reported once, in one line; not each retry
        for name in ("huggingface_hub", "urllib3"):
            logging.getLogger(name).setLevel(logging.ERROR)
    _init_distributed()
    _tf_off_accelerators()


def _quiet_imports() -> None:
    """Import TF/keras-hub with C++ stderr muted: absl prints lines no setting silences."""
    if os.environ.get("GEMMA_DEBUG"):
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, fd)
        try:
            import keras_hub  # noqa: F401
            import tensorflow  # noqa: F401
        except ImportError:
            pass
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _tf_off_accelerators() -> None:
    _quiet_imports()
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        try:
            tf.config.set_visible_devices([], "TPU")
        except (ValueError, RuntimeError):
            pass
    except (ImportError, RuntimeError):
        pass
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def _init_distributed() -> None:
    if _state["distributed"]:
        return
    launch = detect_launch(os.environ)
    if launch is None:
        return
    import jax

    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or os.environ.get("GEMMA_CPU_COLLECTIVES"):
        jax.config.update(
            "jax_cpu_collectives_implementation", os.environ.get("GEMMA_CPU_COLLECTIVES", "gloo")
        )
    import keras

    _native_stdout_to_stderr()  # before initialize: it already runs a collective
    # keras' initialize calls jax.distributed.initialize (None: JAX's own TPU detection) and
    # agrees on one random seed over the processes
    keras.distribution.initialize(
        job_addresses=launch.coordinator_address,
        num_processes=launch.num_processes,
        process_id=launch.process_id,
    )
    _state["distributed"] = True
    _state["launch"] = launch
    sys.stderr.write(
        f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} global devices "
        f"({jax.local_device_count()} local); launched by {launch.launcher}\n"
    )


# ------------------------------------------------------------------------ launchers ---
@dataclass(frozen=True)
class Launch:
    """How this process takes part in a multi-process job, read from its environment.

    Args:
        launcher: str. Who set the stage: `GEMMA_COORDINATOR`, `tpu`, `slurm` or `mpi`.
        coordinator_address: str | None. `host:port` of process 0 (None: JAX's own TPU detection).
        num_processes: int | None. Processes in the job (None: JAX's own TPU detection).
        process_id: int | None. This process's index (None: JAX's own TPU detection).

    Example:
        >>> detect_launch({"SLURM_JOB_ID": "42", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
        ...                "SLURM_STEP_NODELIST": "node[001-002]"})
        Launch(launcher='slurm', coordinator_address='node001:61482', num_processes=2, process_id=1)
    """

    launcher: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _port_from(job: str, env: Mapping[str, str]) -> int:
    """`GEMMA_COORDINATOR_PORT`, else a port in [61440, 65535] from the job id (as JAX's own
    Slurm and Open MPI detection picks it: every process of one job derives the same)."""
    if env.get("GEMMA_COORDINATOR_PORT"):
        return _int(env, "GEMMA_COORDINATOR_PORT")
    n = int(job) if job.isdigit() else zlib.crc32(job.encode())
    return n % 2**12 + (65535 - 2**12 + 1)


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        from gemma_cli.errors import UsageError

        raise UsageError(f"{key}={env.get(key, '')!r}: not an integer",
                         hint="the launcher sets it; check the job script") from None


def _first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: `node001`, `node[001-016],gpu2`, `n[3,7-9]` → node001, n3."""
    head = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    m = re.fullmatch(r"([^\[]*)\[([^\],-]+)[^\]]*\](.*)", head)
    return f"{m.group(1)}{m.group(2)}{m.group(3)}" if m else head


def detect_launch(env: Mapping[str, str]) -> Launch | None:
    """The launcher of this process from environment variables alone; None when it runs alone.

    In order (the first that applies wins):
    - `GEMMA_COORDINATOR=host:port` with `GEMMA_NUM_PROCESSES` and `GEMMA_PROCESS_ID`.
    - Slurm with more than one task (`SLURM_NTASKS`, `SLURM_PROCID`, the first host of
      `SLURM_STEP_NODELIST` or `SLURM_JOB_NODELIST`; the port from the job id or
      `GEMMA_COORDINATOR_PORT`).
    - Open MPI with more than one rank (`OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_RANK`; the
      launcher's address from `OMPI_MCA_orte_hnp_uri` or `PMIX_SERVER_URI`, or
      `GEMMA_COORDINATOR_HOST`).
    - A Cloud TPU pod slice (more than one worker in `TPU_WORKER_HOSTNAMES` or
      `TPU_PROCESS_ADDRESSES`) or multislice (`MEGASCALE_COORDINATOR_ADDRESS`): JAX's own
      TPU detection fills in the rest.
    """
    if env.get("GEMMA_COORDINATOR"):
        return Launch("GEMMA_COORDINATOR", env["GEMMA_COORDINATOR"], _int(env, "GEMMA_NUM_PROCESSES"),
                      _int(env, "GEMMA_PROCESS_ID"))
    if env.get("SLURM_JOB_ID") and env.get("SLURM_NTASKS"):
        n = _int(env, "SLURM_NTASKS")
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if n > 1 and nodes:
            port = _port_from(env["SLURM_JOB_ID"], env)
            return Launch("slurm", f"{_first_host(nodes)}:{port}", n, _int(env, "SLURM_PROCID"))
    if env.get("OMPI_COMM_WORLD_SIZE"):
        n = _int(env, "OMPI_COMM_WORLD_SIZE")
        uri = env.get("OMPI_MCA_orte_hnp_uri") or env.get("PMIX_SERVER_URI") or ""
        m = re.search(r"tcp4?://\[?([^\],:;]+)", uri)
        host = env.get("GEMMA_COORDINATOR_HOST") or (m.group(1) if m else None)
        if n > 1 and host:
            job = uri.split(";", 1)[0].split(".", 1)[0] or "ompi"
            if job.isdigit():
                job = str(int(job) // 2**12)  # Open MPI job ids are multiples of 2^12
            return Launch("mpi", f"{host}:{_port_from(job, env)}", n, _int(env, "OMPI_COMM_WORLD_RANK"))
    workers = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if env.get("MEGASCALE_COORDINATOR_ADDRESS") or len([w for w in workers.split(",") if w.strip()]) > 1:
        return Launch("tpu")
    return None


def _native_stdout_to_stderr() -> None:
    """Gloo (CPU collectives) prints `[Gloo] Rank 0 is connected to ...` from C++ to fd 1
    whenever it opens a communicator: keep stdout for documents for the rest of the process."""
    from gemma_cli.engine.core import stdio

    stdio.native_stdout_to_stderr()


_NATIVE_INFO = re.compile(rb"^[\w./-]+\.(cc|cpp|h)\(\d+\) LOG\(INFO\) ")


@contextmanager
def quiet_native_info() -> Iterator[None]:
    """Drop the INFO lines native code writes to stderr while entered; all else passes.

    SentencePiece, as built into tensorflow-text, prints `normalizer.cc(51) LOG(INFO)
    precompiled_charsmap is empty. use identity normalization.` whenever a tokenizer with
    Gemma's identity normalizer loads, and offers no setting to stop it. Entered around
    model and tokenizer loading; `GEMMA_DEBUG=1` keeps everything.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if os.environ.get("GEMMA_DEBUG") or fd < 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    r, w = os.pipe()
    os.dup2(w, fd)
    os.close(w)

    def forward() -> None:
        with os.fdopen(r, "rb") as src:
            for line in src:
                if not _NATIVE_INFO.match(line):
                    os.write(saved, line)

    t = threading.Thread(target=forward, daemon=True, name="gemma-stderr-filter")
    t.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, fd)  # closes the pipe's last write end: the reader sees EOF
        t.join(timeout=5)
        os.close(saved)


def tensorflow_available() -> bool:
    """Whether TensorFlow imports here (it is optional: only tfds data needs it)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def is_main_process() -> bool:
    return process_index() == 0


def silence_keras_stdout() -> None:
    """Keras prints progress to stdout; under --json nothing but the document may go there."""
    import keras

    keras.utils.disable_interactive_logging()
