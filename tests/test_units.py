"""Unit tests of the pure pieces: planner, schedule, checkpoint pruning, run state, config
derivation. No model, no compile: each runs in milliseconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gemma_cli.engine.model import checkpoint
from gemma_cli.engine.model.optimizer import lr_at
from gemma_cli.engine.plan.layout import Rule, match, plan_variables
from gemma_cli.engine.train.state import RunState
from gemma_cli.errors import UsageError


# ------------------------------------------------------------------------------ planner ---
def test_match_is_exact_path_first_then_one_fullmatch() -> None:
    rules = [Rule("a/.*/kernel", ("model", None)), Rule("a/b/kernel", (None, "model"))]
    assert match("a/b/kernel", rules)[0].axes == (None, "model")  # exact wins
    assert match("a/c/kernel", rules)[0].pattern == "a/.*/kernel"
    assert match("a/c/kernel/x", rules) == (None, None)  # fullmatch, not search
    two = [Rule("a/.*", (None,)), Rule(".*/kernel", (None,))]
    rule, err = match("a/kernel", two)
    assert rule is None and "matches 2 layout rules" in err


def test_plan_shards_checks_divisibility_and_replicates_when_asked() -> None:
    variables = [("q/kernel", (4, 32, 8), "float32"), ("norm/scale", (32,), "bfloat16")]
    rules = [Rule("q/kernel", ("model", "batch", None))]
    plan = plan_variables(variables, rules, (2, 4), ("batch", "model"))
    q, norm = plan.variables
    assert q.spec == ("model", "batch", None) and q.shard_shape == (1, 16, 8)
    assert q.bytes_per_device == 1 * 16 * 8 * 4
    assert norm.spec == (None,) and norm.rule is None and norm.bytes_per_device == 32 * 2
    assert not plan.errors

    bad = plan_variables(variables, rules, (1, 8), ("batch", "model"))
    assert len(bad.errors) == 1 and "dimension 0 (4) is not divisible by mesh axis 'model' (8)" in bad.errors[0]
    rep = plan_variables(variables, rules, (1, 8), ("batch", "model"), indivisible="replicate")
    assert not rep.errors and rep.variables[0].spec == (None, "batch", None) and rep.variables[0].adjusted
    assert rep.overrides == {"q/kernel": (None, "batch", None)} and "replicated" in rep.warnings[0]


def test_plan_reports_rank_and_axis_mistakes() -> None:
    plan = plan_variables(
        [("w", (4, 4), "float32"), ("v", (4,), "float32")],
        [Rule("w", ("model",)), Rule("v", ("nope",))],
        (1, 2),
        ("batch", "model"),
    )
    assert any("gives 1 axes" in e for e in plan.errors)
    assert any("names axis 'nope'" in e for e in plan.errors)


# ----------------------------------------------------------------------------- schedule ---
@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_schedule_warmup_then_decay(kind: str) -> None:
    lr, warm, total = 1e-3, 4, 20
    values = [lr_at(s, kind, lr, warm, total) for s in range(total + 1)]
    assert values[0] == pytest.approx(lr / warm) and values[3] == pytest.approx(lr)
    assert all(a <= b + 1e-12 for a, b in zip(values[:4], values[1:5], strict=True))  # warming up
    if kind == "constant":
        assert values[-1] == pytest.approx(lr)
    else:
        assert values[-1] == pytest.approx(0.0, abs=1e-12)
        mid = values[warm + (total - warm) // 2]
        assert mid == pytest.approx(lr / 2, rel=1e-6)


def test_keras_schedule_computes_the_same_rates() -> None:
    from gemma_cli.engine.model.optimizer import schedule

    for kind in ("constant", "cosine", "linear"):
        sched = schedule(kind, 3e-4, 5, 40)
        for step in (0, 2, 5, 17, 39, 45):
            assert float(sched(step)) == pytest.approx(lr_at(step, kind, 3e-4, 5, 40), rel=1e-5), (kind, step)


# --------------------------------------------------------------------------- checkpoints ---
def _fake_ckpt(out: Path, step: int, complete: bool = True) -> Path:
    p = checkpoint.ckpt_root(out) / f"step_{step:08d}"
    p.mkdir(parents=True)
    if complete:
        (p / "state.json").write_text(json.dumps({"step": step}))
    return p


def test_latest_and_prune_ignore_partial_and_temporary_dirs(tmp_path: Path) -> None:
    for s in (2, 4, 6, 8):
        _fake_ckpt(tmp_path, s)
    _fake_ckpt(tmp_path, 10, complete=False)  # killed before state.json
    tmp = checkpoint.ckpt_root(tmp_path) / "step_00000012.tmp-abc"  # atomic_dir's temp dir
    tmp.mkdir()
    (tmp / "state.json").write_text("{}")
    assert [p.name for p in checkpoint.complete(tmp_path)] == [f"step_{s:08d}" for s in (2, 4, 6, 8)]
    assert checkpoint.latest(tmp_path).name == "step_00000008"
    (checkpoint.ckpt_root(tmp_path) / "latest").write_text("step_00000006\n")
    assert checkpoint.latest(tmp_path).name == "step_00000006"  # the pointer wins
    gone = checkpoint.prune(tmp_path, keep=2)
    assert [p.name for p in gone] == ["step_00000002", "step_00000004"]
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["step_00000006", "step_00000008"]
    # the pointed-to checkpoint is never pruned, even when older than `keep`
    assert checkpoint.prune(tmp_path, keep=1) == []
    assert checkpoint.latest(tmp_path).name == "step_00000006"


def test_latest_with_a_dangling_pointer_falls_back(tmp_path: Path) -> None:
    _fake_ckpt(tmp_path, 3)
    (checkpoint.ckpt_root(tmp_path) / "latest").write_text("step_00000009\n")
    assert checkpoint.latest(tmp_path).name == "step_00000003"
    assert checkpoint.latest(tmp_path / "nothing") is None


# ----------------------------------------------------------------------------- run state ---
def test_run_state_turns_running_means_into_window_losses() -> None:
    st = RunState(start=0, total=10, tokens_per_step=100, useful_tokens_per_step=80.0)
    losses = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    margins = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # an objective's auxiliary metric, averaged alike
    # keras' running mean after each step; the state reads it only at steps 1, 4 and 6
    means = [sum(losses[: i + 1]) / (i + 1) for i in range(len(losses))]
    mmeans = [sum(margins[: i + 1]) / (i + 1) for i in range(len(margins))]
    st.step = 1
    assert st.record_sync(means[0], now=st.t0 + 10) == pytest.approx(5.0)
    st.step = 4
    assert st.record_sync({"loss": means[3], "margin": mmeans[3]}, now=st.t0 + 13) == pytest.approx((4 + 3 + 2) / 3)
    assert st.last["margin"] == pytest.approx(mmeans[3])  # first reading of the metric: its running mean
    window = st.take_window()
    assert list(window) == ["loss", "margin"]
    assert window["loss"] == pytest.approx((5 + 4 + 3 + 2) / 4)
    st.metrics_reset()  # an evaluation reset keras' metrics: the mean restarts at step 5
    st.step = 6
    assert st.record_sync({"loss": (1.0 + 0.5) / 2, "margin": 4.5}, now=st.t0 + 15) == pytest.approx(0.75)
    assert st.take_window() == pytest.approx({"loss": 0.75, "margin": 4.5})
    st.step = 8  # two more steps with margins 7 and 9: the running mean over 4 steps is 6.25
    st.record_sync({"loss": 0.5, "margin": (4 + 5 + 7 + 9) / 4}, now=st.t0 + 17)
    assert st.last["margin"] == pytest.approx(8.0)
    assert st.time_to_first_step == pytest.approx(10)
    assert st.step_seconds == pytest.approx(7 / 7)  # steps 2..8 in 7 s
    assert st.tokens_per_second == pytest.approx(100)


def test_run_state_nan_propagates() -> None:
    st = RunState(start=3, total=10, tokens_per_step=1, useful_tokens_per_step=1)
    st.step = 5
    assert math.isnan(st.record_sync(float("nan"), now=st.t0 + 1))


# -------------------------------------------------------------------------------- config ---
def test_mesh_resolve_fills_and_refuses() -> None:
    from gemma_cli.config import MeshConfig

    assert MeshConfig(shape=[2, -1]).resolve(8) == (2, 4)
    assert MeshConfig(shape=[1, 8]).resolve(8) == (1, 8)
    with pytest.raises(UsageError, match="does not divide"):
        MeshConfig(shape=[3, -1]).resolve(8)
    with pytest.raises(UsageError) as err:
        MeshConfig(shape=[2, 4]).resolve(1)
    assert "needs 8 devices but 1" in err.value.line() and "GEMMA_CPU_DEVICES=8" in err.value.line()


def test_output_dir_defaults_to_runs_name() -> None:
    from gemma_cli.config import parse_config

    cfg = parse_config("model: {preset: gemma3_1b}\n", "x.yaml")
    assert cfg.output_dir == Path("runs/x")
    cfg = parse_config("model: {preset: gemma3_1b}\ntrain: {output_dir: /tmp/o}\n", "x.yaml")
    assert cfg.output_dir == Path("/tmp/o")


# ---------------------------------------------------------------------------- the shape ---
def _imports(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_engine_never_imports_rich_and_commands_never_import_cli() -> None:
    pkg = Path(__file__).resolve().parents[1] / "gemma_cli"
    engine = list((pkg / "engine").rglob("*.py"))
    commands = list((pkg / "commands").glob("*.py"))
    assert engine and commands
    for f in engine:
        bad = {m for m in _imports(f) if m == "rich" or m.startswith(("rich.", "typer", "gemma_cli.output", "gemma_cli.commands"))}
        assert not bad, (f, bad)
    for f in commands:
        assert "gemma_cli.cli" not in _imports(f), f
