"""Local Hugging Face checkpoints of every family, end to end (issues #14.3 and #15.3).

One tiny random checkpoint per family, written by `transformers` with the family's
distinctive settings (tests/hf_tiny.py: Gemma 1, Gemma 2 soft-caps, Gemma 3 with global RoPE
scaling 8, Gemma 4 dense and MoE, Llama 3), goes through what a user runs:

1. keras (loaded through keras-hub's converter) and transformers give the same float32
   logits (max |diff| <= 1e-4), and the loaded model exported back is the same model;
2. `gemma inspect` plans it from config.json alone (for the Gemma 4 MoE the plan equals `--live`);
3. `gemma finetune` (LoRA, 3 steps; a full fine-tune for the Gemma 4 MoE) on a (2, 4) mesh;
4. `gemma export --format hf`: transformers' logits of the export equal the fine-tuned keras
   model's; config.json carries the source's rope settings and bos/eos ids, and
   tokenizer_config.json the family's chat template (what `gemma generate --chat` writes);
5. `gemma generate` from the run (Gemma 4 `--chat` with its own turn markers, Llama 3).

Cost (CPU seconds on 2 cores, measured): per family ~9 s for the LoRA train-step compile,
~5 s each for a live inspect and a generate compile, ~5 s to load and run keras eagerly, ~5 s
for the checkpoint; about 25-35 s per family.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hf_tiny import IDS, logits, make_hf_checkpoint
from tiny import CORPUS
from typer.testing import CliRunner

from gemma_cli.cli import app

NAMES = ["gemma", "gemma2", "gemma3", "gemma4", "gemma4_moe", "llama3"]
# Cost control: what is new for a family runs there; the rest is covered once elsewhere.
LIVE = {"gemma4_moe"}  # plan == live of every Gemma 4 rule (its tiny model has them all; Gemma 1-3: test_inspect.py)
GENERATE = {"gemma4", "llama3"}  # Gemma 1-3 generate as their presets do (test_generate.py)
FULL = {"gemma4_moe"}  # a full fine-tune too (every weight, the experts' included)
TOL = 1e-4
# what config.json must keep (compared with the source checkpoint through transformers' parsing)
KEYS = [
    "model_type", "bos_token_id", "eos_token_id", "pad_token_id", "vocab_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "sliding_window",
    "layer_types", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
    "tie_word_embeddings", "attention_k_eq_v", "num_kv_shared_layers", "hidden_size_per_layer_input",
    "enable_moe_block", "num_experts", "top_k_experts", "moe_intermediate_size", "use_double_wide_mlp",
]  # fmt: skip


def gemma(*args: Any, code: int = 0) -> Any:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == code, (r.exit_code, r.stdout[-2000:], r.stderr[-3000:], r.exception)
    return r


def keras_logits(lm: Any) -> Any:
    ids = np.array([IDS])
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    if "position_ids" in [i.name for i in lm.backbone.inputs]:
        x["position_ids"] = np.arange(ids.shape[1])[None]
    return np.asarray(lm(x))


def load_run(run: Path) -> Any:
    """The fine-tuned model of a run directory, as `gemma generate` / `gemma export` load it."""
    from gemma_cli import targets
    from gemma_cli.engine.model import runs

    t = targets.resolve(str(run), verb="export")
    return runs.load(t.config, t.checkpoint)


def write_config(tmp: Path, ckpt: Path, lora: int, name: str) -> Path:
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for _ in range(4) for t in CORPUS[:6]))
    model: dict[str, Any] = {"preset": str(ckpt), "precision": "float32"}
    if lora:
        model["lora"] = {"rank": lora, "alpha": 8.0}
    cfg = {
        "model": model,
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "layout": {"indivisible": "replicate"},  # Gemma 1-3 / Llama tiny: 2 KV heads on a model axis of 4
        "data": {"paths": [str(corpus)], "sequence_length": 16, "batch_size": 4},
        "optimizer": {"name": "adamw", "learning_rate": 5e-2},
        "train": {"max_steps": 3, "output_dir": str(tmp / name), "log_every": 1},
        "generate": {"max_length": 40},  # a chat prompt in the tiny byte-fallback vocabulary: ~30 tokens
    }
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def rope(cfg: Any) -> dict[str, Any]:
    """transformers' parsed RoPE settings, per attention type, with the no-op spellings unified
    (`linear` with factor 1 is `default`)."""
    params = cfg.rope_parameters or {}
    groups = params if all(isinstance(v, dict) for v in params.values()) and params else {"all": params}
    out = {}
    for kind, p in groups.items():
        p = {k: v for k, v in p.items() if v is not None}
        if p.get("rope_type") == "linear" and float(p.get("factor", 1.0)) == 1.0:
            p = {k: v for k, v in p.items() if k != "factor"} | {"rope_type": "default"}
        out[kind] = p
    return out


def check_config(src: Path, exported: Path) -> None:
    import transformers

    a, b = transformers.AutoConfig.from_pretrained(str(src)), transformers.AutoConfig.from_pretrained(str(exported))
    for c in (a, b):  # Gemma 4: global layers have their own head_dim / KV heads (per_layer_config)
        c.allow_global_per_layer_attribute_access = True
    assert b.to_dict().get("per_layer_config") == a.to_dict().get("per_layer_config")
    for key in KEYS:
        if hasattr(a, key):
            assert getattr(b, key, None) == getattr(a, key), key
    assert rope(b) == rope(a)
    assert b.architectures and b.architectures[0].endswith("ForCausalLM"), b.architectures


def check_chat_template(exported: Path, fam: Any) -> None:
    """The exported chat template renders what `gemma generate --chat` and chat fine-tuning
    render (engine/data/render.py), a system message included."""
    import transformers

    from gemma_cli.engine.data import Renderer

    tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    turns = [("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello."), ("user", "And you?")]
    messages = [{"role": r, "content": c} for r, c in turns]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if fam.chat is not None:
        assert text == "".join(p.text for p in Renderer.for_chat(fam.chat).prompt(turns))
    else:  # Llama 3's format
        assert text == (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAnd you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )


@pytest.mark.parametrize("name", NAMES)
def test_hf_checkpoint_end_to_end(tmp_path: Path, name: str) -> None:
    from gemma_cli.engine import families
    from gemma_cli.engine.formats.export import export_model
    from gemma_cli.engine.model import load as model

    fam, _ = families.tiny_hf_config(name)
    ckpt = make_hf_checkpoint(tmp_path / "hf", name)
    reference = logits(ckpt)

    # 1. keras == transformers; the loaded model exported back is the same model
    lm = model.load_causal_lm(str(ckpt), "float32")
    assert type(lm).__name__ == fam.causal_lm_class
    base = keras_logits(lm)
    assert np.abs(base - reference).max() <= TOL
    export_model(lm, tmp_path / "base_hf", "hf")
    assert np.abs(logits(tmp_path / "base_hf") - reference).max() <= TOL

    # 2. the plan from config.json alone (== live for Gemma 4)
    cfg = write_config(tmp_path, ckpt, lora=4, name="lora")
    plan = json.loads(gemma("inspect", cfg, "--json", "--optimizer").stdout)
    assert plan["model"]["backbone"] == fam.backbone_class
    n_lora = sum(math.prod(v["shape"]) for v in plan["variables"] if "lora_kernel" in v["path"])
    assert plan["totals"]["params"] == lm.backbone.count_params() + n_lora and n_lora > 0
    if name in LIVE:
        text_rules = {p for p, _ in fam.layout_rules("model", "batch") if not p.startswith(("image_", "vision_"))}
        assert text_rules <= {v["rule"] for v in plan["variables"]}  # (the tower's rules: tests/test_vision_families.py)
        live = json.loads(gemma("inspect", cfg, "--json", "--optimizer", "--live").stdout)
        keys = ("shape", "spec", "shard_shape", "bytes_per_device")
        assert {v["path"]: [v[k] for k in keys] for v in plan["variables"]} == {
            v["path"]: [v[k] for k in keys] for v in live["variables"]
        }
        assert plan["totals"]["optimizer_bytes_per_device"] == live["totals"]["optimizer_bytes_per_device"] > 0

    # 3. LoRA fine-tune
    r = json.loads(gemma("finetune", cfg, "--json").stdout)
    assert r["steps"] == 3 and np.isfinite(r["final_loss"])
    run = tmp_path / "lora"

    # 4. export == the fine-tuned keras model
    tuned = keras_logits(load_run(run))
    assert np.abs(tuned - base).max() > 100 * TOL  # the fine-tune changed the model
    summary = json.loads(gemma("export", run, "--format", "hf", "--out", tmp_path / "lora_hf", "--json").stdout)
    assert summary["lora_merged"] > 0
    assert np.abs(logits(tmp_path / "lora_hf") - tuned).max() <= TOL
    check_config(ckpt, tmp_path / "lora_hf")
    check_chat_template(tmp_path / "lora_hf", fam)

    # 5. generate from the run (the family's turn markers with --chat)
    if name in GENERATE:
        chat = ["--chat"] if fam.chat is not None else []
        out = json.loads(gemma("generate", run, "-p", "the quick brown", *chat, "--json").stdout)
        (res,) = out["results"]
        assert res["prompt"] == "the quick brown" and res["prompt_tokens"] > 1 and out["compilations"] == 1

    if name in FULL:  # full fine-tune: every weight trained, exported, reloaded
        cfg = write_config(tmp_path, ckpt, lora=0, name="full")
        r = json.loads(gemma("finetune", cfg, "--json").stdout)
        assert r["params"]["trainable"] == sum(int(np.prod(v.shape)) for v in lm.trainable_weights) > 0.99 * r["params"]["total"]
        full = keras_logits(load_run(tmp_path / "full"))
        gemma("export", tmp_path / "full", "--format", "hf", "--out", tmp_path / "full_hf", "--json")
        assert np.abs(logits(tmp_path / "full_hf") - full).max() <= TOL
        assert np.abs(full - base).max() > 100 * TOL


def test_hf_uri_goes_through_the_same_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hf://org/model` of a transformers repository: plan from its config.json, load with the
    family's class and fix-ups (keras-hub's own `CausalLM.from_preset` picks the speculative-
    decoding `Gemma4AssistantCausalLM` for a Gemma 4 repository). The Hub is mocked at
    `huggingface_hub.hf_hub_download`, keras-hub's one download call."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from gemma_cli.engine.model import load as model

    ckpt = make_hf_checkpoint(tmp_path / "hf", "gemma4")
    asked: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str, **_: Any) -> str:
        asked.append((repo_id, filename))
        if not (ckpt / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(ckpt / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_used")
    # the bounded reachability probe before any download (engine/core/remote.py) asks the Hub
    # endpoint: a local server that answers it
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    uri = "hf://someone/tiny-gemma4"
    assert model.backbone_config(uri)["class_name"] == "Gemma4Backbone"
    assert {f for _, f in asked} == {"config.json"}  # plan mode: nothing else downloaded
    lm = model.load_causal_lm(uri, "float32")
    assert type(lm).__name__ == "Gemma4CausalLM"
    assert np.abs(keras_logits(lm) - logits(ckpt)).max() <= TOL
    assert {r for r, _ in asked} == {"someone/tiny-gemma4"} and ("someone/tiny-gemma4", "model.safetensors") in asked
