"""Gemma 4 in the architecture table and its default layout (issue #14.1-2), plan mode only.

The table's rows are checked against an independent source: the text configs of Hugging
Face's Gemma 4 conversion script (`convert_gemma4_weights.py`, `_VARIANTS`), written here as
config.json files by `transformers`, read back through keras-hub's converter (plan mode of a
local checkpoint), and counted by `transformers`' own `Gemma4ForCausalLM` on the meta device.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gemma_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
G31 = str(ROOT / "configs/gemma4_31b_tpu.yaml")
MOE = str(ROOT / "configs/gemma4_26b_moe.yaml")

_ROPE = {
    "full_attention": {"rope_theta": 1e6, "rope_type": "proportional", "partial_rotary_factor": 0.25},
    "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
}
_LOCAL5 = ["sliding_attention"] * 5 + ["full_attention"]
# transformers/models/gemma4/convert_gemma4_weights.py, _VARIANTS[...].text_config
HF_TEXT = {
    "gemma4_2b": dict(
        hidden_size=1536, hidden_size_per_layer_input=256, intermediate_size=4 * 1536, num_hidden_layers=35,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 7, num_attention_heads=8, num_key_value_heads=1,
        num_global_key_value_heads=None, attention_k_eq_v=False, num_kv_shared_layers=20, use_double_wide_mlp=True,
        final_logit_softcapping=30.0, rope_parameters=_ROPE,
    ),
    "gemma4_4b": dict(
        hidden_size=2560, hidden_size_per_layer_input=256, intermediate_size=4 * 2560, num_hidden_layers=42,
        layer_types=_LOCAL5 * 7, num_attention_heads=8, num_key_value_heads=2, num_global_key_value_heads=None,
        global_head_dim=512, attention_k_eq_v=False, num_kv_shared_layers=18, final_logit_softcapping=30.0,
        rope_parameters=_ROPE,
    ),
    "gemma4_31b": dict(
        hidden_size=5376, hidden_size_per_layer_input=0, intermediate_size=4 * 5376, num_hidden_layers=60,
        layer_types=_LOCAL5 * 10, num_attention_heads=32, num_key_value_heads=16, num_global_key_value_heads=4,
        attention_k_eq_v=True, use_bidirectional_attention="vision", sliding_window=1024,
        final_logit_softcapping=30.0, rope_parameters=_ROPE, max_position_embeddings=262_144,
    ),
    "gemma4_26b_a4b": dict(
        hidden_size=2816, hidden_size_per_layer_input=0, intermediate_size=2112, num_hidden_layers=30,
        layer_types=_LOCAL5 * 5, num_attention_heads=16, num_key_value_heads=8, num_global_key_value_heads=2,
        attention_k_eq_v=True, use_bidirectional_attention="vision", enable_moe_block=True, num_experts=128,
        moe_intermediate_size=704, top_k_experts=8, sliding_window=1024, final_logit_softcapping=30.0,
        rope_parameters=_ROPE, max_position_embeddings=262_144,
    ),
}  # fmt: skip
# keras-hub 0.32's published totals (gemma4_presets.py): text + vision (+ audio for E2B/E4B)
PUBLISHED_TOTAL = {"gemma4_2b": 5.1e9, "gemma4_4b": 7.9e9, "gemma4_26b_a4b": 26e9, "gemma4_31b": 31e9}
MESHES = [(1, 8), (2, 4), (8, 1), (2, 8)]


def gemma(*args: Any, code: int = 0) -> Any:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == code, (r.exit_code, r.stdout[-2000:], r.stderr[-2000:])
    return r


def doc(*args: Any, code: int = 0) -> dict[str, Any]:
    return json.loads(gemma("inspect", *args, "--json", code=code).stdout)


def by_path(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in rows}


@pytest.mark.parametrize("name", sorted(HF_TEXT))
def test_table_row_is_the_hf_config_through_keras_hub(tmp_path: Path, name: str) -> None:
    import torch
    import transformers

    from gemma_cli.engine import families
    from gemma_cli.engine.model import hf as hf_checkpoint
    from gemma_cli.engine.model import load as model

    config = transformers.Gemma4TextConfig(**HF_TEXT[name])
    config.save_pretrained(str(tmp_path))  # a weightless local checkpoint: plan mode reads config.json only
    ours = model.backbone_config(str(tmp_path))
    row = families.get_preset(name)
    assert ours["class_name"] == row["class_name"] == "Gemma4Backbone"
    built = {p: s for p, s, _ in model.abstract_variables(ours, "bfloat16")}
    table = {p: s for p, s, _ in model.abstract_variables(row, "bfloat16")}
    assert built == table  # the same variables, the same shapes
    skip = {"name", "dtype", "trainable", "layer_types", "sliding_window_pattern", "vocab_size_per_layer_input"}
    converted = {k: v for k, v in ours["config"].items() if k not in skip}  # what the converter sets
    assert converted == {k: row["config"][k] for k in converted}
    pattern = row["config"]["sliding_window_pattern"]
    assert ours["config"]["layer_types"] == [
        "full_attention" if i % pattern == pattern - 1 else "sliding_attention" for i in range(config.num_hidden_layers)
    ]
    params = sum(math.prod(s) for s in table.values())
    assert params == families.published_params(name)
    with torch.device("meta"):  # transformers' count of the same text model (+ one layer_scalar per layer)
        hf = transformers.Gemma4ForCausalLM(config)
    assert sum(p.numel() for p in hf.parameters()) + config.num_hidden_layers == params
    # keras-hub publishes the rounded total with the vision (and audio) towers
    assert 0.9 * PUBLISHED_TOTAL[name] < params < PUBLISHED_TOTAL[name]
    assert hf_checkpoint.read_config(tmp_path)["model_type"] == "gemma4_text"


def test_every_preset_plans_on_every_mesh_with_lora() -> None:
    from gemma_cli.engine import families
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.plan import layout

    fam = families.by_name("gemma4")
    for name in fam.presets:
        variables = model.abstract_variables(families.get_preset(name), "bfloat16", 8, ["query", "value"])
        for mesh in MESHES:
            rules = layout.default_rules("Gemma4Backbone", ("batch", "model"), "batch", "model")
            plan = layout.plan_variables(variables, rules, mesh, ("batch", "model"))
            assert plan.errors == [], (name, mesh, plan.errors[:2])
            sharded = [v for v in plan.variables if any(v.spec)]
            assert len(sharded) > len(plan.variables) / 3, (name, mesh)


def test_gemma4_31b_on_2x8_offline() -> None:
    d = doc(G31, "mesh.shape=[2,8]", "--layer", "decoder_block_(0|5)", "--optimizer", "--device-memory", "95GiB")
    assert d["mesh"] == {"shape": [2, 8], "axes": ["batch", "model"], "devices": 16}
    assert d["model"]["backbone"] == "Gemma4Backbone" and d["totals"]["params"] > 30_697_345_340  # + LoRA
    v = by_path(d["variables"])
    local, glob = "decoder_block_0/attention/", "decoder_block_5/attention/"
    assert v[f"{local}query/kernel"]["shape"] == [32, 5376, 256]
    assert v[f"{local}query/kernel"]["spec"] == ["model", "batch", None]
    assert v[f"{local}query/kernel"]["shard_shape"] == [4, 2688, 256]
    assert v[f"{local}key/kernel"]["shape"] == v[f"{local}value/kernel"]["shape"] == [16, 5376, 256]
    # global layers: 4 KV heads of 512, key = value (no value kernel); head_dim over the model axis
    assert v[f"{glob}key/kernel"]["shape"] == [4, 5376, 512]
    assert v[f"{glob}key/kernel"]["spec"] == [None, "batch", "model"]
    assert v[f"{glob}key/kernel"]["shard_shape"] == [4, 2688, 64]
    assert f"{glob}value/kernel" not in v
    assert v["decoder_block_5/ffw_gating/kernel"]["spec"] == ["batch", "model"]
    assert v["decoder_block_5/attention/attention_output/kernel"]["spec"] == ["model", None, "batch"]
    # LoRA on query (every layer) and value (local layers only: global ones have none)
    lora = sorted(p for p in v if "lora_kernel" in p)
    assert lora == sorted(
        [f"{local}{t}/lora_kernel_{ab}" for t in ("query", "value") for ab in "ab"]
        + [f"{glob}query/lora_kernel_{ab}" for ab in "ab"]
    )
    opt = {(r["variable"], r["slot"]) for r in d["optimizer_variables"]}
    assert opt == {(p, s) for p in lora for s in ("momentum", "velocity")}
    assert d["problems"] == [] and d["unused_rules"] == []
    assert any("vision" in n for n in d["notes"])
    assert d["totals"]["fits"] is True


def test_gemma4_26b_moe_experts_over_the_model_axis_full_fine_tune() -> None:
    d = doc(MOE, "model.lora=null", "--layer", "decoder_block_5", "--optimizer")
    v = by_path(d["variables"])
    bank = "decoder_block_5/moe_expert_bank/"
    for w in ("gate_proj", "up_proj"):
        assert v[bank + w]["shape"] == [128, 2816, 704]
        assert v[bank + w]["spec"] == ["model", "batch", None]
    assert v[bank + "down_proj"]["shape"] == [128, 704, 2816]
    assert v[bank + "down_proj"]["spec"] == ["model", None, "batch"]
    assert v[bank + "per_expert_scale"]["spec"] == [None]
    assert v["decoder_block_5/moe_router/proj/kernel"]["spec"] == [None, None]
    assert v["decoder_block_5/attention/key/kernel"]["shape"] == [2, 2816, 512]  # 2 global KV heads
    assert v["decoder_block_5/attention/key/kernel"]["spec"] == [None, "batch", "model"]
    n_model = d["mesh"]["shape"][1]
    assert v[bank + "gate_proj"]["shard_shape"][0] == 128 // n_model
    # AdamW state of every weight, laid out like it (the experts' too)
    opt = {(r["variable"], r["slot"]): r for r in d["optimizer_variables"]}
    assert len(opt) == 2 * len(v)
    for slot in ("momentum", "velocity"):
        assert opt[(bank + "gate_proj", slot)]["spec"] == ["model", "batch", None]
        assert opt[(bank + "down_proj", slot)]["shard_shape"] == v[bank + "down_proj"]["shard_shape"]


def test_gemma4_26b_moe_lora_targets_query_and_value() -> None:
    d = doc(MOE, "--match", "lora_kernel_a")
    paths = {r["path"] for r in d["variables"]}
    # 30 layers: query everywhere, value on the 25 local layers (K = V on the 5 global ones)
    assert {p.split("/")[2] for p in paths} == {"query", "value"}
    assert sum("/query/" in p for p in paths) == 30 and sum("/value/" in p for p in paths) == 25
    assert d["totals"]["trainable_params"] < 0.001 * d["totals"]["params"]


def test_gemma4_indivisible_mesh_is_one_line_exit_2() -> None:
    # 7 divides no dimension of the query kernel (16, 2816, 256)
    r = gemma("inspect", MOE, "mesh.shape=[1,7]", code=2)
    assert "not divisible by mesh axis 'model' (7)" in r.stdout + r.stderr


def test_tiny_hf_gemma4_moe_plan_specs(tmp_path: Path) -> None:
    """The tiny MoE checkpoint's plan (its live layout equals this: tests/test_hf_checkpoints.py)."""
    from hf_tiny import make_hf_checkpoint

    ckpt = make_hf_checkpoint(tmp_path / "hf", "gemma4_moe")
    cfg = tmp_path / "moe.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"preset": str(ckpt), "precision": "float32"},
                                   "mesh": {"shape": [2, 4], "axes": ["batch", "model"]}}))  # fmt: skip
    d = doc(cfg, "--layer", "decoder_block_1")
    v = by_path(d["variables"])
    assert v["decoder_block_1/moe_expert_bank/gate_proj"]["shape"] == [8, 32, 16]
    assert v["decoder_block_1/moe_expert_bank/gate_proj"]["shard_shape"] == [2, 16, 16]
    assert v["decoder_block_1/attention/query/kernel"]["spec"] == ["model", "batch", None]
    assert v["decoder_block_1/attention/key/kernel"]["shape"] == [1, 32, 16]
    assert v["decoder_block_1/attention/key/kernel"]["spec"] == [None, "batch", "model"]
    assert d["problems"] == []


def test_unsupported_hf_checkpoint_exits_2_naming_it(tmp_path: Path) -> None:
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen/config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    cfg = tmp_path / "q.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"preset": str(tmp_path / "qwen")}}))
    r = gemma("inspect", cfg, "-q", code=2)
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert line.startswith("Error: model.preset:") and "'qwen2'" in line and "Qwen2ForCausalLM" in line
    for t in ("gemma", "gemma2", "gemma3_text", "gemma4", "gemma4_text", "llama"):
        assert t in line
    assert "Traceback" not in r.stderr
    # a supported checkpoint without a tokenizer: exit 2 naming the missing file
    (tmp_path / "g4").mkdir()
    from gemma_cli.engine import families

    tiny = families.tiny_hf_config("gemma4")[1]["kwargs"]
    (tmp_path / "g4/config.json").write_text(json.dumps({"model_type": "gemma4_text", **tiny}))
    (tmp_path / "g4/model.safetensors").write_bytes(b"")
    r = gemma("generate", tmp_path / "g4", "-p", "hi", "-q", code=2)
    assert "no tokenizer (tokenizer.json or tokenizer.model)" in r.stderr
