"""The default mesh chosen by memory (issue #29): a config without `mesh.shape` gets a split
whose per-device plan fits, its batch axis dividing data.batch_size; without a traffic
estimate the fewest devices on the model axis. Plans only: no weights, no compile (the ranking
by estimated traffic: tests/test_traffic.py)."""

from __future__ import annotations

import pytest

from gemma_cli.config import parse_config
from gemma_cli.engine.plan import inspect, machine


def cfg_of(preset: str, *, batch: int, extra: str = "", precision: str = "float32", lora: bool = False) -> object:
    lo = ", lora: {rank: 4}" if lora else ""
    return parse_config(f"model: {{preset: {preset}, precision: {precision}{lo}}}\n"
                        f"data: {{paths: [x.jsonl], batch_size: {batch}, sequence_length: 16}}\n{extra}", "<t>")


@pytest.mark.parametrize(("batch", "shape"), [(8, (8, 1)), (4, (4, 2)), (2, (2, 4))])
def test_without_an_estimate_the_narrowest_model_axis_whose_batch_axis_divides_the_batch(tiny_gemma3, batch, shape):
    choice = machine.auto_mesh(cfg_of(tiny_gemma3, batch=batch), 8, 2**40, traffic=False)
    assert choice.shape == shape and choice.rules is None
    assert choice.why.startswith(f"mesh {list(shape)} chosen")


def test_fits_or_the_least_memory_said_so():
    cfg = cfg_of("gemma_7b_en", batch=8, precision="bfloat16")

    def planned(shape: list[int], rules: str | None = None) -> int:
        c = cfg.model_copy(deep=True)
        c.mesh.shape = shape
        if rules:
            c.layout.rules = rules
        return inspect.describe(c)["totals"]["total_bytes_per_device"]

    assert machine.auto_mesh(cfg, 8, planned([8, 1])).shape == (8, 1)
    # the family layout shards weights over both axes, so a wider model axis only adds
    # activations per device: one byte less than (8, 1) plans, nothing fits; the least is taken
    least = machine.auto_mesh(cfg, 8, planned([8, 1]) - 1)
    assert least.shape == (8, 1) and "no mesh fits" in least.why
    tight = machine.auto_mesh(cfg, 8, 2**30)
    assert "no mesh fits 1.00 GiB per device" in tight.why
