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
    plans = {m: inspect_plan(tiny_gemma3, m) for m in MESHES}
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


def test_inspect_and_generate_take_the_same_default(tiny_gemma3, measured, tmp_path):
    import json

    from typer.testing import CliRunner

    from gemma_cli.cli import app
    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.sample.generate import Generator

    best = list(min(MESHES, key=lambda m: measured[(m, None)]))
    path = tmp_path / "c.yaml"
    path.write_text(
        f"model: {{preset: {tiny_gemma3}, precision: float32, lora: {{rank: 4}}}}\nlayout: {{indivisible: replicate}}\n"
        "data: {paths: [x.jsonl], batch_size: 8, sequence_length: 64}\ntrain: {max_steps: 10}\n")
    r = CliRunner().invoke(app, ["inspect", str(path), "--json", "--layer", "decoder_block_0"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mesh"]["shape"] == best and doc["mesh_chosen"].startswith(f"mesh {best} chosen")
    assert f"mesh {best} chosen" in r.stderr
    # --device: the figure to fit; a tight one leaves only the narrower model axes
    plans = {m: inspect_plan(tiny_gemma3, m) for m in MESHES}
    limit = plans[(4, 2)]
    r = CliRunner().invoke(app, ["inspect", str(path), "--json", "--device", f"{limit}", "--layer", "decoder_block_0"])
    fit = min((m for m in MESHES if plans[m] <= limit), key=lambda m: measured[(m, None)])
    assert r.exit_code == 0 and json.loads(r.stdout)["mesh"]["shape"] == list(fit), r.stderr
    # a mesh given on the command line is kept
    r = CliRunner().invoke(app, ["inspect", str(path), "mesh.shape=[8,1]", "--json", "--layer", "decoder_block_0"])
    assert r.exit_code == 0 and json.loads(r.stdout)["mesh"]["shape"] == [8, 1] and "chosen" not in r.stderr
    # generate: the model loads on the same mesh
    lines: list[str] = []

    class Lines(NullReporter):
        def info(self, message: str) -> None:
            lines.append(message)

    cfg = cfg_of(tiny_gemma3)
    gen = Generator(cfg, Lines())
    assert cfg.mesh.shape == best and gen.batch_axis == best[0]
    assert any(ln.startswith(f"mesh {best} chosen") for ln in lines)


def inspect_plan(preset: Any, shape: tuple[int, int]) -> int:
    from gemma_cli.engine.plan import inspect

    return inspect.describe(cfg_of(preset, shape))["totals"]["total_bytes_per_device"]
