"""`gemma inspect`: sharding plans of real presets (no weights), plan == live on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gemma_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

IMDB = str(ROOT / "configs/imdb_7b_tpu.yaml")
G2_9B = str(ROOT / "configs/gemma2_9b_tpu.yaml")


def inspect(*args: str, code: int = 0) -> Any:
    r = runner.invoke(app, ["inspect", *args])
    assert r.exit_code == code, (
        f"exit {r.exit_code}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
    )
    return r


def doc_of(*args: str, code: int = 0) -> dict[str, Any]:
    r = inspect(*args, "--json", code=code)
    return json.loads(r.stdout)  # exactly one JSON document on stdout


def by_path(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in rows}


def write_config(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(textwrap.dedent(body))
    return str(p)


# ----------------------------------------------------------------------- 7B on (1, 8) ---
def test_imdb_7b_layer_shapes_and_config_rule_specs() -> None:
    d = doc_of(IMDB, "--layer", "decoder_block_1")
    assert d["mesh"] == {"shape": [1, 8], "axes": ["batch", "model"], "devices": 8}
    v = by_path(d["variables"])
    assert all(p.startswith("decoder_block_1/") for p in v)
    att = "decoder_block_1/attention/"
    for name in ("query", "key", "value"):
        row = v[f"{att}{name}/kernel"]
        assert row["shape"] == [16, 3072, 256]
        assert row["spec"] == ["model", None, None]
        assert row["shard_shape"] == [2, 3072, 256]
        assert row["bytes_per_device"] == 2 * 3072 * 256 * 2  # bfloat16
        assert row["rule"] == "decoder_block.*attention.*(query|key|value).*kernel"
    assert v[f"{att}attention_output/kernel"]["shape"] == [16, 256, 3072]
    assert v[f"{att}attention_output/kernel"]["spec"] == ["model", None, None]
    for g in ("ffw_gating", "ffw_gating_2"):
        assert v[f"decoder_block_1/{g}/kernel"]["shape"] == [3072, 24576]
        assert v[f"decoder_block_1/{g}/kernel"]["spec"] == [None, "model"]
        assert v[f"decoder_block_1/{g}/kernel"]["shard_shape"] == [3072, 3072]
    assert v["decoder_block_1/ffw_linear/kernel"]["shape"] == [24576, 3072]
    assert v["decoder_block_1/ffw_linear/kernel"]["spec"] == ["model", None]
    for n in ("pre_attention_norm", "pre_ffw_norm"):
        row = v[f"decoder_block_1/{n}/scale"]
        assert row["shape"] == [3072] and row["spec"] == [None] and row["rule"] is None
    # LoRA (rank 4 on query and value): replicated adapters
    assert v[f"{att}query/lora_kernel_a"]["shape"] == [16, 3072, 4]
    assert v[f"{att}value/lora_kernel_b"]["spec"] == [None, None]
    assert d["problems"] == [] and d["unused_rules"] == []
    assert d["optimizer_variables"] == []  # only with --optimizer
    t = d["totals"]
    assert t["trainable_params"] == 28 * 2 * (16 * 3072 * 4 + 4 * 256)
    assert (
        t["activations_bytes_per_device"] > 0
        and t["total_bytes_per_device"] > t["weights_bytes_per_device"]
    )


def test_imdb_7b_full_model_param_count_without_lora() -> None:
    d = doc_of(IMDB, "model.lora.rank=0", "--match", "token_embedding")
    assert d["totals"]["params"] == 8_537_680_896
    assert d["totals"]["trainable_params"] == 8_537_680_896
    assert by_path(d["variables"])["token_embedding/embeddings"]["spec"] == ["model", None]


def test_imdb_7b_optimizer_state_follows_weights() -> None:
    d = doc_of(IMDB, "--layer", "decoder_block_1", "--optimizer")
    weights = by_path(d["variables"])
    opt = d["optimizer_variables"]
    # LoRA: only the adapters train → momentum + velocity for each lora kernel only
    lora = sorted(p for p in weights if "lora_kernel" in p)
    assert len(lora) == 4
    assert sorted((r["variable"], r["slot"]) for r in opt) == sorted(
        (p, s) for p in lora for s in ("momentum", "velocity")
    )
    for r in opt:
        w = weights[r["variable"]]
        assert (r["shape"], r["spec"], r["dtype"], r["shard_shape"]) == (
            w["shape"],
            w["spec"],
            w["dtype"],
            w["shard_shape"],
        )
        assert r["path"] == f"adam_w/{r['variable'].replace('/', '_')}_{r['slot']}"
    # full fine-tune: every weight has state with the weight's spec
    d = doc_of(IMDB, "model.lora.rank=0", "--layer", "decoder_block_1", "--optimizer")
    weights = by_path(d["variables"])
    opt = {(r["variable"], r["slot"]): r for r in d["optimizer_variables"]}
    assert len(opt) == 2 * len(weights)
    q = "decoder_block_1/attention/query/kernel"
    assert opt[(q, "momentum")]["spec"] == opt[(q, "velocity")]["spec"] == ["model", None, None]
    assert opt[("decoder_block_1/ffw_linear/kernel", "velocity")]["spec"] == ["model", None]
    assert d["totals"]["optimizer_bytes_per_device"] == 2 * d["totals"]["weights_bytes_per_device"]


# ------------------------------------------------------------------ 9B on (2, 8) default ---
def test_gemma2_9b_keras_hub_default_layout_on_2x8() -> None:
    d = doc_of(G2_9B, "--layer", "decoder_block_1", "--optimizer")
    assert d["mesh"] == {"shape": [2, 8], "axes": ["batch", "model"], "devices": 16}
    v = by_path(d["variables"])
    att = "decoder_block_1/attention/"
    assert v[f"{att}query/kernel"]["shape"] == [16, 3584, 256]
    assert v[f"{att}key/kernel"]["shape"] == [8, 3584, 256]
    for name in ("query", "key", "value"):
        assert v[f"{att}{name}/kernel"]["spec"] == ["model", "batch", None]
    assert v[f"{att}query/kernel"]["shard_shape"] == [2, 1792, 256]
    assert v[f"{att}key/kernel"]["shard_shape"] == [1, 1792, 256]
    assert v[f"{att}attention_output/kernel"]["spec"] == ["model", None, "batch"]
    for g in ("ffw_gating", "ffw_gating_2"):
        assert v[f"decoder_block_1/{g}/kernel"]["shape"] == [3584, 14336]
        assert v[f"decoder_block_1/{g}/kernel"]["spec"] == ["batch", "model"]
    assert v["decoder_block_1/ffw_linear/kernel"]["spec"] == ["model", "batch"]
    for n in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"):
        assert v[f"decoder_block_1/{n}/scale"]["spec"] == [None]
    assert d["unused_rules"] == [] and d["problems"] == []
    assert v[f"{att}query/kernel"]["rule"] == "decoder_block.*attention.*(query|key|value).kernel"
    opt = d["optimizer_variables"]
    assert {r["slot"] for r in opt} == {"momentum", "velocity"}
    assert all(
        "lora_kernel" in r["variable"] and r["spec"] == v[r["variable"]]["spec"] for r in opt
    )
    assert d["totals"]["batch_per_device"] == 4  # batch 8 over a batch axis of 2


# --------------------------------------------------------------------- indivisible dims ---
def test_one_kv_head_indivisible_is_an_error_with_the_fix(tmp_path: Path) -> None:
    # keras-hub's attention rule, written in the config: config rules are strict
    cfg = write_config(tmp_path, "g2b", """
        model: {preset: gemma_2b_en, precision: bfloat16}
        mesh: {shape: [1, 8], axes: [batch, model]}
        layout:
          rules:
            - {pattern: 'decoder_block.*attention.*(query|key|value).kernel', axes: [model, batch, null]}
    """)  # fmt: skip
    d = doc_of(cfg, "--layer", "decoder_block_0", code=2)
    errs = [p for p in d["problems"] if p["level"] == "error"]
    key = next(p for p in errs if p["variable"] == "decoder_block_0/attention/key/kernel")
    msg = key["message"]
    assert "decoder_block_0/attention/key/kernel (1, 2048, 256)" in msg
    assert "dimension 0 (1)" in msg and "mesh axis 'model' (8)" in msg
    assert "rule 'decoder_block.*attention.*(query|key|value).kernel'" in msg  # keras-hub's pattern
    assert "layout.indivisible: replicate" in msg  # the fix
    assert {p["variable"] for p in errs} >= {
        f"decoder_block_{i}/attention/{kv}/kernel" for i in range(18) for kv in ("key", "value")
    }
    # human: the row is red and the footer has the error; exit 2
    r = inspect(cfg, "--layer", "decoder_block_0", code=2)
    assert "key/kernel" in r.stdout and "error:" in r.stdout and "dimension 0 (1)" in r.stdout
    # replicate mode: warns, replicates that dimension only, exit 0
    r = inspect(cfg, "layout.indivisible=replicate", "--layer", "decoder_block_0", "--json")
    d = json.loads(r.stdout)
    v = by_path(d["variables"])
    assert v["decoder_block_0/attention/key/kernel"]["spec"] == [None, "batch", None]
    assert v["decoder_block_0/attention/query/kernel"]["spec"] == ["model", "batch", None]
    assert all(p["level"] == "warning" for p in d["problems"]) and d["problems"]
    r = inspect(cfg, "layout.indivisible=replicate", "--layer", "decoder_block_0")
    assert "Warning:" in r.stderr and "replicated that dimension" in r.stderr


# ------------------------------------------------------------------- selection, output ---
def test_layer_regex_match_and_human_table() -> None:
    d = doc_of(IMDB, "--layer", "decoder_block_(0|1)", "--match", "ffw_linear")
    assert sorted(r["path"] for r in d["variables"]) == [
        f"decoder_block_{i}/ffw_linear/kernel" for i in (0, 1)
    ]
    d = doc_of(IMDB, "--match", "attention_output")
    assert len(d["variables"]) == 28
    r = inspect(IMDB, "--layer", "decoder_block_1", "--optimizer")
    out = r.stdout
    assert (
        "decoder_block_1" in out and "attention/query/kernel" in out and "ffw_linear/kernel" in out
    )
    assert "P('model', None, None)" in out and "lora_kernel_a · momentum" in out
    assert "params: 8,548,748,288" in out


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    r = inspect(IMDB, "--layer", "decoder_block_99", code=2)
    assert (
        "Error: --layer 'decoder_block_99' matches no layer" in r.stderr
        and "Traceback" not in r.stderr
    )
    assert r.stdout == ""
    r = inspect(IMDB, "--match", "(", code=2)
    assert "regex does not compile" in r.stderr
    r = inspect(IMDB, "model.preset=gemma_8b_en", code=2)
    assert "unknown preset 'gemma_8b_en'" in r.stderr and "did you mean" in r.stderr


def test_config_error_exits_2_before_heavy_imports(tmp_path: Path) -> None:
    bad = write_config(tmp_path, "bad", "model: {preset: gemma_7b_en, precison: bfloat16}\n")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from gemma_cli.cli import app\n"
        f"r = CliRunner().invoke(app, ['inspect', {bad!r}, '--json'])\n"
        "heavy = [m for m in ('keras', 'keras_hub', 'jax', 'tensorflow') if m in sys.modules]\n"
        "print(r.exit_code, heavy, r.stderr.strip().splitlines()[0])\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert p.stdout.startswith("2 [] Error: "), p.stdout + p.stderr
    assert "precison" in p.stdout and "did you mean 'precision'" in p.stdout


def test_unused_rules_and_unmatched_variables(
    tmp_path: Path, tiny_presets: dict[str, Path]
) -> None:
    cfg = write_config(tmp_path, "rules", f"""
        model: {{preset: {tiny_presets['gemma']}, precision: float32}}
        mesh: {{shape: [2, 4], axes: [batch, model]}}
        layout:
          - {{pattern: 'decoder_block.*ffw_linear.*kernel', axes: [model, null]}}
          - {{pattern: 'nothing_matches_this.*', axes: [model]}}
    """)  # fmt: skip
    d = doc_of(cfg)
    assert d["unused_rules"] == [
        {"pattern": "nothing_matches_this.*", "axes": ["model"], "source": "config"}
    ]
    v = by_path(d["variables"])
    assert v["decoder_block_0/ffw_linear/kernel"]["spec"] == ["model", None]
    q = v["decoder_block_0/attention/query/kernel"]
    assert q["rule"] is None and q["spec"] == [None, None, None]
    assert d["totals"]["unmatched_variables"] == len(v) - 2


# --------------------------------------------------------------------- plan == live ---
@pytest.mark.parametrize(
    ("family", "shape", "lora"),
    [("gemma", [2, 4], 2), ("gemma", [1, 8], 0), ("gemma3", [2, 4], 0), ("gemma3", [1, 8], 2)],
)
def test_plan_agrees_with_live(
    tmp_path: Path, tiny_presets: dict[str, Path], family: str, shape: list[int], lora: int
) -> None:
    lora_yaml = f"lora: {{rank: {lora}}}" if lora else ""
    cfg = write_config(tmp_path, f"{family}_{lora}", f"""
        model:
          preset: {tiny_presets[family]}
          precision: float32
          {lora_yaml}
        mesh: {{shape: {shape}, axes: [batch, model]}}
        layout: {{rules: default, indivisible: replicate}}
        data: {{name: imdb_reviews, batch_size: 4, sequence_length: 16}}
        optimizer: {{name: adamw}}
    """)  # fmt: skip
    plan = doc_of(cfg, "--optimizer")
    live = doc_of(cfg, "--optimizer", "--live", "--no-measure")
    assert plan["mesh"] == live["mesh"]
    keys = ("shape", "dtype", "spec", "shard_shape", "bytes_per_device", "rule")
    pv, lv = by_path(plan["variables"]), by_path(live["variables"])
    assert sorted(pv) == sorted(lv)
    for p in pv:
        assert {k: pv[p][k] for k in keys} == {k: lv[p][k] for k in keys}, p
    po = {(r["variable"], r["slot"]): r for r in plan["optimizer_variables"]}
    lo = {(r["variable"], r["slot"]): r for r in live["optimizer_variables"]}
    assert sorted(po) == sorted(lo) and po
    for k in po:
        assert {x: po[k][x] for x in keys} == {x: lo[k][x] for x in keys}, k
        # keras numbers a second optimizer in one process (adam_w_1/...): compare after the prefix
        assert po[k]["path"].split("/", 1)[1] == lo[k]["path"].split("/", 1)[1]
    for k in (
        "params",
        "trainable_params",
        "weights_bytes_per_device",
        "optimizer_bytes_per_device",
        "gradients_bytes_per_device",
    ):
        assert plan["totals"][k] == live["totals"][k], k
    # something is actually sharded over the model axis, and replicate mode kicked in somewhere
    assert any("model" in r["spec"] for r in pv.values())
    if family == "gemma":  # keras-hub's layout; 2 kv heads do not divide a model axis of 4 or 8
        assert pv["decoder_block_0/attention/key/kernel"]["spec"][0] is None
        assert pv["decoder_block_0/ffw_linear/kernel"]["spec"] == ["model", "batch"]


def test_vision_preset_planned_with_its_tower_and_device_memory(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "g3", """
        model: {preset: "kaggle://keras/gemma3/keras/gemma3_instruct_4b/3", precision: bfloat16}
        mesh: {shape: [2, 4], axes: [batch, model]}
    """)  # fmt: skip
    d = doc_of(cfg, "--layer", "decoder_block_0", "--device-memory", "16GiB")
    assert d["model"]["backbone"] == "Gemma3Backbone"
    assert d["totals"]["params"] == 4_299_915_632  # keras-hub's published count: the tower is planned
    assert any(n.startswith("vision tower: 2 image slots") for n in d["notes"])
    assert d["totals"]["images_bytes_per_device"] > 0
    v = by_path(d["variables"])
    assert v["decoder_block_0/attention/key/kernel"]["shape"] == [4, 2560, 256]
    assert v["decoder_block_0/attention/key/kernel"]["spec"] == ["model", "batch", None]
    assert v["decoder_block_0/ffw_gating/kernel"]["shape"] == [2560, 10240]
    assert v["decoder_block_0/attention/query_norm/scale"]["spec"] == [None]
    t = d["totals"]
    assert t["device_memory_bytes"] == 16 * 2**30 and t["fits"] is (
        t["total_bytes_per_device"] <= 16 * 2**30
    )
    r = inspect(cfg, "--layer", "decoder_block_0", "--device-memory", "lots", code=2)
    assert "--device-memory 'lots'" in r.stderr
