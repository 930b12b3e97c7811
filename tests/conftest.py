"""Test environment: 8 simulated XLA CPU devices, jax backend, tiny presets made once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Must happen before anything imports jax/keras/tensorflow.
os.environ.setdefault("GEMMA_CPU_DEVICES", "8")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the whole suite, child processes (multihost, kill -9,
# CLI subprocesses) included through the environment: the same tiny train/eval/generate steps
# compile once per suite, not once per test. GEMMA_TEST_JAX_CACHE=off turns it off.
if os.environ.get("GEMMA_TEST_JAX_CACHE", "on") != "off":
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax")
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

sys.path.insert(0, str(Path(__file__).parent))

# Plan-mode `gemma inspect` blocks TensorFlow when it is the first to set up the engine; in one
# pytest process later tests need TensorFlow, so load it first.
import pytest  # noqa: E402
import tensorflow  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'gemma': dir, 'gemma2': dir, 'gemma3': dir}: tiny random-weight keras-hub presets."""
    from tiny import make_tiny_preset

    base = tmp_path_factory.mktemp("presets")
    return {fam: make_tiny_preset(base / f"tiny_{fam}", fam) for fam in ("gemma", "gemma2", "gemma3")}


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_presets: dict[str, Path]) -> Path:
    return tiny_presets["gemma3"]


@pytest.fixture(scope="session")
def real_demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The suite's one fine-tune of the real Gemma 3 270M (tests/real_fixtures.demo_finetune),
    shared by the demo and export tests of the real tier."""
    from real_fixtures import demo_finetune

    return demo_finetune(tmp_path_factory.mktemp("real_demo"))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """With `-n 2` (make test): whole files to a worker, as `--dist loadfile` does, except that
    the real-270M tier (tests/test_real_*.py) goes to one worker together, so its one shared
    fine-tune (`real_demo_run`) runs once and two 270M models never sit in two workers at once."""
    from xdist.scheduler import LoadScopeScheduling

    class FilesRealTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/test_real_*" if Path(path).name.startswith("test_real_") else path

    return FilesRealTogether(config, log)
