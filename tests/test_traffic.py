"""The default mesh is the lowest-traffic mesh that fits (issue #29): the estimate of
engine/plan/traffic.py (a skeleton of the train step compiled on abstract arrays) ranks the
(batch, model) splits of 8 devices as the collective bytes of the compiled keras-hub train step
do (engine/plan/comms.py on its optimized HLO), and auto_mesh takes the measured-lowest split
among those whose memory plan fits. Tiny Gemma 3, LoRA 4, float32, batch 8 × 64 (as
benchmarks/mesh_table.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gemma_cli.config import parse_config
from gemma_cli.engine.plan import machine, traffic

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
CANDIDATES = [*((m, None) for m in MESHES), ((8, 1), "fsdp")]


def cfg_of(preset: Any, shape: tuple[int, int] | None = None, rules: str | None = None) -> Any:
    mesh = f"mesh: {{shape: {list(shape)}, axes: [batch, model]}}\n" if shape else ""
    layout = f"layout: {{indivisible: replicate{', rules: ' + rules if rules else ''}}}\n"
    return parse_config(
        f"model: {{preset: {preset}, precision: float32, lora: {{rank: 4}}}}\n{mesh}{layout}"
        "data: {paths: [x.jsonl], batch_size: 8, sequence_length: 64}\ntrain: {max_steps: 10}\n", "<t>")


@pytest.fixture(scope="module")
def measured(tiny_gemma3) -> dict[tuple[tuple[int, int], str | None], int]:
    """Bytes sent per device per step by the compiled keras-hub train step, per candidate."""
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.model.optimizer import compile_model
    from gemma_cli.engine.plan import layout as lay
    from gemma_cli.engine.plan import memory

    out = {}
    for shape, rules in CANDIDATES:
        cfg = cfg_of(tiny_gemma3, shape, rules)
        layout = lay.layout_for(cfg)
        with layout.distribution.scope():
            lm = model.load_causal_lm(str(tiny_gemma3), "float32")
            model.apply_lora_and_quantize(lm, cfg.model)
            compile_model(lm, cfg, 10, shape[0])
            lm.preprocessor = None
            m = memory.measure_train_step(lm, 8, 64, layout.distribution)
        out[(shape, rules)] = m["collectives"]["total"]["bytes_per_device"]
    return out


def test_the_estimate_ranks_meshes_as_the_compiled_step(tiny_gemma3, measured):
    est = {c: traffic.estimate(cfg_of(tiny_gemma3), c[0], c[1])["bytes_per_device"] for c in CANDIDATES}
    by_measure = sorted(CANDIDATES, key=lambda c: measured[c])
    # every pair the compiled step tells apart by more than 5% is ordered alike by the estimate
    for i, a in enumerate(by_measure):
        for b in by_measure[i + 1:]:
            if measured[b] > 1.05 * measured[a]:
                assert est[a] < est[b], (a, b, est, measured)
    for c in CANDIDATES:  # and within a factor of two of it
        assert 0.5 < est[c] / measured[c] < 2, (c, est[c], measured[c])
    # all devices on the model axis (the old default) costs the most; a middle split the least
    assert by_measure[-1] == ((1, 8), None) and by_measure[0][0] in ((2, 4), (4, 2))


def test_the_default_is_the_measured_lowest_mesh_that_fits(tiny_gemma3, measured):
    from gemma_cli.engine.plan import inspect

    def planned(shape: tuple[int, int]) -> int:
        return inspect.describe(cfg_of(tiny_gemma3, shape))["totals"]["total_bytes_per_device"]

    plans = {m: planned(m) for m in MESHES}
    for limit in (2**40, plans[(4, 2)]):  # everything fits; then the wider model axes do not
        fitting = [(m, None) for m in MESHES if plans[m] <= limit]
        choice = machine.auto_mesh(cfg_of(tiny_gemma3), 8, limit)
        assert (choice.shape, choice.rules) == min(fitting, key=lambda c: measured[c])
        assert "the lowest estimated collective traffic of the splits that fit" in choice.why
        assert f"{list(choice.shape)}: sends ~" in choice.why and "plans" in choice.why


def test_a_mesh_the_user_gave_is_never_changed(tiny_gemma3, measured):
    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.train.sft import SFTRecipe

    given = cfg_of(tiny_gemma3, (4, 2))
    SFTRecipe(given, NullReporter()).choose_mesh()
    assert given.mesh.shape == [4, 2]
    auto = cfg_of(tiny_gemma3)
    SFTRecipe(auto, NullReporter()).choose_mesh()
    assert tuple(auto.mesh.shape) == min(MESHES, key=lambda m: measured[(m, None)])
