"""Layouts: `default` never fails on head counts, `fsdp` divides by every device (issue #13).

Plan mode (no weights) for every row of every family's architecture table on (1, 8), (2, 4),
(8, 1) and every model axis that is a power of two up to 16; live on the tiny models: the
arrays keras makes follow the plan exactly.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gemma_cli.cli import app


def _rows() -> list[str]:
    from gemma_cli.engine import families

    return [name for f in families.all_families() for name in f.presets]


ROWS = _rows()
MESHES = [(1, 8), (2, 4), (8, 1), (1, 2), (1, 4), (1, 16), (2, 8)]


@functools.cache
def _variables(name: str) -> tuple[str, list[tuple[str, tuple[int, ...], str]]]:
    from gemma_cli.engine import families
    from gemma_cli.engine.model import load as model

    bb = families.get_preset(name)
    return model.backbone_class(bb), model.abstract_variables(bb, "bfloat16")


def _plan(name: str, mesh: tuple[int, int], rules: str, indivisible: str = "error") -> Any:
    from gemma_cli.config import parse_config
    from gemma_cli.engine.plan import layout

    cls, variables = _variables(name)
    cfg = parse_config(
        f"model: {{preset: {name}}}\nmesh: {{shape: {list(mesh)}}}\nlayout: {{rules: {rules}, indivisible: {indivisible}}}\n"
    )
    return layout.plan_for(cfg, cls, variables, mesh)


def _check_divisible(plan: Any) -> None:
    sizes = dict(zip(plan.mesh_axes, plan.mesh_shape, strict=True))
    for v in plan.variables:
        used = [a for a in v.spec if a is not None]
        assert len(used) == len(set(used)), (v.path, v.spec)
        for dim, ax in zip(v.shape, v.spec, strict=True):
            assert ax is None or dim % sizes[ax] == 0, (v.path, v.shape, v.spec)


@pytest.mark.parametrize("name", ROWS)
def test_default_layout_never_fails_and_always_uses_the_model_axis(name: str) -> None:
    for mesh in MESHES:
        plan = _plan(name, mesh, "default")
        assert plan.errors == [] and plan.warnings == [], (mesh, plan.errors[:1], plan.warnings[:1])
        _check_divisible(plan)
        sizes = dict(zip(plan.mesh_axes, mesh, strict=True))
        for v in plan.variables:
            rule = next((r for r in plan.rules if r.pattern == v.rule), None)
            if rule is None:
                continue
            # every axis the family's rule asks for is used, on the rule's dimension or another
            for ax in {a for a in rule.axes if a is not None}:
                assert ax in v.spec, (mesh, v.path, v.shape, rule.axes, v.spec)
            moved = tuple(v.spec) != tuple(rule.axes)
            assert moved == v.adjusted == bool(v.note), (mesh, v.path, v.spec, v.note)
            if moved:
                assert "moved from dimension" in v.note and "is not divisible by" in v.note
        # the weights are spread: a matrix holds at most 1/(model axis) of itself per device
        big = [v for v in plan.variables if v.rule is not None]
        assert all(math.prod(v.shard_shape) * sizes["model"] <= math.prod(v.shape) for v in big), mesh


@pytest.mark.parametrize("name", ROWS)
def test_fsdp_divides_every_matrix_by_every_device(name: str) -> None:
    for mesh in MESHES:
        plan = _plan(name, mesh, "fsdp")
        assert plan.errors == [] and plan.warnings == [], (mesh, plan.errors[:1])
        _check_divisible(plan)
        n = math.prod(mesh)
        for v in plan.variables:
            if len(v.shape) >= 2:
                assert math.prod(v.shard_shape) * n == math.prod(v.shape), (mesh, v.path, v.shape, v.spec)
            else:  # vectors (norm scales) and scalars (Gemma 4's layer scalars) stay whole
                assert v.spec == (None,) * len(v.shape), v.path
        default = _plan(name, mesh, "default")
        assert sum(v.bytes_per_device for v in plan.variables) <= sum(v.bytes_per_device for v in default.variables)


def test_fsdp_shards_what_no_family_rule_names() -> None:
    # Llama 3's untied output head matches none of keras-hub's Llama rules: replicated by
    # `default`, split over all 8 devices by `fsdp`
    head = "token_embedding/reverse_embeddings"
    d = {v.path: v for v in _plan("llama3.2_1b", (2, 4), "default").variables}
    f = {v.path: v for v in _plan("llama3.2_1b", (2, 4), "fsdp").variables}
    assert d[head].spec == (None, None) and d[head].rule is None
    assert f[head].spec == ("batch", "model") and f[head].rule is None
    assert f[head].note == "fsdp: 'model' (4) on dimension 1 (vocab, 128256), 'batch' (2) on dimension 0 (hidden, 2048)"


def test_config_rules_stay_strict() -> None:
    from gemma_cli.config import parse_config
    from gemma_cli.engine.plan import layout

    cls, variables = _variables("gemma3_1b")
    body = "layout:\n  rules:\n    - {pattern: 'decoder_block.*attention.*(query|key|value).kernel', axes: [model, batch, null]}\n"
    cfg = parse_config("model: {preset: gemma3_1b}\nmesh: {shape: [1, 8]}\n" + body)
    plan = layout.plan_for(cfg, cls, variables, (1, 8))
    assert plan.errors and "dimension 0 (4) is not divisible by mesh axis 'model' (8)" in plan.errors[0]
    cfg = parse_config("model: {preset: gemma3_1b}\nmesh: {shape: [1, 8]}\n" + body + "  indivisible: replicate\n")
    plan = layout.plan_for(cfg, cls, variables, (1, 8))
    q = next(v for v in plan.variables if v.path == "decoder_block_0/attention/query/kernel")
    assert not plan.errors and q.spec == (None, "batch", None) and plan.warnings


def test_inspect_gemma3_1b_on_1x8_says_which_dimension_and_why() -> None:
    """Was exit 2: 4 query heads and 1 KV head do not split 8 ways."""
    cfg = Path(__file__).resolve().parents[1] / "configs" / "gemma3_270m_demo.yaml"
    args = ["inspect", str(cfg), "model.preset=gemma3_1b", "model.lora.rank=0", "mesh.shape=[1,8]", "layout.rules=default"]
    r = CliRunner().invoke(app, [*args, "--layer", "decoder_block_0", "--json"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    v = {row["path"]: row for row in d["variables"]}
    q, k = v["decoder_block_0/attention/query/kernel"], v["decoder_block_0/attention/key/kernel"]
    assert q["spec"] == [None, "batch", "model"] and q["shard_shape"] == [4, 1152, 32]
    assert k["spec"] == [None, "batch", "model"]
    assert q["note"] == "'model' (8) moved from dimension 0 (heads, 4) to dimension 2 (head_dim, 256): 4 is not divisible by 8"
    assert v["decoder_block_0/attention/attention_output/kernel"]["spec"] == [None, "model", "batch"]
    assert any("key/kernel and 51 more like it" in n for n in d["layout_notes"])
    assert d["problems"] == [] and d["model"]["layout"] == "default"
    human = CliRunner().invoke(app, [*args, "--layer", "decoder_block_0"])
    assert human.exit_code == 0 and "moved from dimension 0 (heads, 4)" in human.stdout


# ---------------------------------------------------------------- live == plan (tiny) ---
def _spec(v: Any) -> tuple[str | None, ...]:
    spec = tuple(v.value.sharding.spec)
    return spec + (None,) * (len(v.shape) - len(spec))


@pytest.mark.parametrize("rules", ["default", "fsdp"])
@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_live_arrays_follow_the_plan(tmp_path: Path, tiny_presets: dict[str, Path], family: str, rules: str) -> None:
    from gemma_cli.config import parse_config
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.model.optimizer import compile_model
    from gemma_cli.engine.plan import layout

    for mesh in [(1, 8), (2, 4), (8, 1)]:
        lora = "lora: {rank: 2}" if rules == "fsdp" and mesh == (2, 4) else ""
        cfg = parse_config(
            f"model: {{preset: {tiny_presets[family]}, precision: float32, {lora}}}\n"
            f"mesh: {{shape: {list(mesh)}}}\nlayout: {rules}\n"
            "data: {paths: [x.jsonl], batch_size: 8, sequence_length: 16}\n"
        )
        lay = layout.layout_for(cfg)
        with lay.distribution.scope():
            lm = model.load_causal_lm(cfg.model.preset, "float32")
            model.apply_lora_and_quantize(lm, cfg.model)
            opt = compile_model(lm, cfg, 10, lay.batch_axis_size)
        planned = {v.path: v for v in lay.plan.variables}
        live = {v.path: v for v in lm.backbone.weights}
        assert sorted(planned) == sorted(live)
        for path, v in live.items():
            assert _spec(v) == planned[path].spec, (mesh, path, _spec(v), planned[path].spec)
        slots = zip(opt._trainable_variables, opt._momentums, opt._velocities, strict=True)  # noqa: SLF001
        for w, m, s in slots:
            assert _spec(m) == _spec(s) == _spec(w), (mesh, w.path)
        if rules == "fsdp":  # every matrix split over all 8 devices
            for path, v in live.items():
                if len(v.shape) >= 2:
                    assert math.prod(v.value.addressable_shards[0].data.shape) * 8 == math.prod(v.shape), path
        if lora:
            assert any("lora_kernel" in p and planned[p].spec != (None,) * len(planned[p].shape) for p in planned)
        # data still splits over the batch axis only
        assert lay.distribution.batch_dim_name == "batch"


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("layout: {rules: fsdb}\n", 2, ["layout", "rules must be 'default', 'fsdp' or a list", "did you mean 'fsdp'?"]),
        ("train:\n  remat: full\n", 3, ["train.remat", "'none' or 'blocks'", "got 'full'"]),
        ("train:\n  loss_chunk: 0\n", 3, ["train.loss_chunk", "'auto', 'none' or a positive number"]),
    ],
    ids=["rules", "remat", "loss_chunk"],
)
def test_new_keys_are_checked_with_file_and_line(
    tmp_path: Path, tiny_presets: dict[str, Path], body: str, line: int, words: list[str]
) -> None:
    model = f"model: {{preset: {tiny_presets['gemma3']}}}\n"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(model + body)
    r = CliRunner().invoke(app, ["config", "validate", str(cfg)])
    assert r.exit_code == 2 and r.stdout == ""
    err = r.stderr.strip().splitlines()[0]
    assert err.startswith(f"Error: {cfg}:{line}: "), err
    for w in words:
        assert w in err, (w, err)
    ok = tmp_path / "ok.yaml"
    ok.write_text(model + "layout: fsdp\ntrain: {remat: blocks, loss_chunk: 256}\n")
    assert CliRunner().invoke(app, ["config", "validate", str(ok)]).exit_code == 0
