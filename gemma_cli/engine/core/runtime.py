"""The process environment for the engine, set before the first heavy import. Idempotent.

- KERAS_BACKEND=jax, quiet TensorFlow logs, TensorFlow kept off accelerators (tf.data only).
- `GEMMA_CPU_DEVICES=N` (or `setup(cpu_devices=N)`) simulates N XLA CPU devices, for tests
  and for running the real ModelParallel path on a laptop.
- Multi-host: `GEMMA_COORDINATOR=host:port GEMMA_NUM_PROCESSES=N GEMMA_PROCESS_ID=i` (or a TPU
  pod's own environment) initialises JAX's distributed runtime once.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
    os.environ.setdefault("KERAS_BACKEND", "jax")
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
    coord = os.environ.get("GEMMA_COORDINATOR")
    if _state["distributed"] or not coord:
        return
    import jax

    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or os.environ.get("GEMMA_CPU_COLLECTIVES"):
        jax.config.update(
            "jax_cpu_collectives_implementation", os.environ.get("GEMMA_CPU_COLLECTIVES", "gloo")
        )
    import keras

    _native_stdout_to_stderr()  # before initialize: it already runs a collective
    keras.distribution.initialize(
        job_addresses=coord,
        num_processes=int(os.environ["GEMMA_NUM_PROCESSES"]),
        process_id=int(os.environ["GEMMA_PROCESS_ID"]),
    )
    _state["distributed"] = True


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
