"""Out of memory answered with the fix (issue #29): XLA's RESOURCE_EXHAUSTED becomes one
`Error:` line (exit 1) naming what ran out, the plan's bytes per device for this config and
what to change. The allocation failure is real: XLA on CPU asked for 8 TiB."""

from __future__ import annotations

import pytest
from test_finetune import assert_one_error_line, config, gemma

from gemma_cli.config import load_config
from gemma_cli.errors import RuntimeFailure, is_oom, translate


def allocate_too_much() -> None:
    import jax.numpy as jnp

    jnp.ones((2**41,), jnp.float32).block_until_ready()  # 8 TiB: XLA refuses at once


@pytest.fixture(scope="module")
def xla_oom() -> BaseException:
    try:
        allocate_too_much()
    except Exception as e:  # noqa: BLE001
        return e
    pytest.fail("XLA allocated 8 TiB")


def test_xla_resource_exhausted_is_recognised_and_translated(xla_oom):
    assert is_oom(xla_oom) and "RESOURCE_EXHAUSTED" in str(xla_oom)
    assert not is_oom(RuntimeError("RESOURCE_EXHAUSTED")) and not is_oom(ValueError("out of memory"))
    err = translate(xla_oom)
    assert isinstance(err, RuntimeFailure) and err.exit_code == 1
    assert err.line().startswith("out of memory on a device (RESOURCE_EXHAUSTED: Out of memory allocating")
    assert "train.remat=blocks" in err.line() and "gemma inspect CONFIG --device" in err.line()


def test_levers_leave_out_what_the_config_already_does(tmp_path, tiny_gemma3):
    from gemma_cli.engine.plan import oom

    cfg = load_config(str(config(tmp_path, tiny_gemma3, data={"sequence_length": 512, "batch_size": 8})), [])
    assert oom.levers(cfg) == [
        "train.remat=blocks", "train.loss_chunk=256", "layout.rules=fsdp",
        "data.batch_size=4 with optimizer.gradient_accumulation_steps=2", "data.sequence_length=256",
    ]
    cfg = load_config(str(config(tmp_path, tiny_gemma3, mesh=[1, 8], train={"remat": "blocks", "loss_chunk": 64}, layout={"rules": "fsdp"},
                             data={"batch_size": 1})), [])
    assert oom.levers(cfg) == []


def test_out_of_memory_in_the_train_step_is_one_line_with_the_plan(tmp_path, tiny_gemma3, monkeypatch):
    from gemma_cli.engine.plan import inspect
    from gemma_cli.engine.train.sft import SFTRecipe

    # the boundary where XLA runs the step: the first step asks XLA for more than there is
    monkeypatch.setattr(SFTRecipe, "loop", lambda self, callbacks: allocate_too_much())
    cfg = config(tmp_path, tiny_gemma3)
    r = gemma("finetune", cfg, "-q")
    line = assert_one_error_line(r, 1)
    planned = inspect.describe(load_config(str(cfg), []))["memory"]["estimate"]["total"]
    assert line.startswith("Error: out of memory on a device in compiling or running the first train step at step 1: "
                           f"this config plans {planned / 2**30:.2f} GiB per device (weights "), line
    assert ("(try train.remat=blocks, train.loss_chunk=256, layout.rules=fsdp, "
            "data.batch_size=2 with optimizer.gradient_accumulation_steps=2; "
            f"check a change first with: gemma inspect {cfg} --device ") in line
    assert "Traceback" not in r.stderr
