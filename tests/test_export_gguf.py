"""`gemma export --format gguf|peft` on tiny Gemma models (issue #15).

Readers we did not write get the keras model back: transformers' GGUF loader (Gemma 2, Gemma 3)
and `peft` (on our HF export of the base preset); our own `gemma convert gguf` round-trips
every family (Gemma 1 has no transformers GGUF loader). Metadata and tensor names are checked
against llama.cpp's own tables (`gguf.TENSOR_NAMES`, the keys `convert_hf_to_gguf.py` writes);
the real 270M comparison with llama.cpp's file is in test_real_export.py.

Cost control: one tiny LoRA fine-tune (4 steps) feeds the GGUF, round-trip and PEFT tests;
the other families use an in-memory LoRA with random factors (no fit).

transformers' GGUF loader does not read Gemma's query scaling: it uses its config default
`query_pre_attn_scalar=256` (the real models' head_dim), while llama.cpp scales by
1/sqrt(`attention.key_length`). The tiny models have head_dim 8, so the loads below pass
`query_pre_attn_scalar=8`, the value llama.cpp derives from the file; the real 270M test loads
with no override.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny import CORPUS
from typer.testing import CliRunner

from gemma_cli.cli import app

runner = CliRunner()
IDS = [2, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]
HEAD_DIM = 8  # tests/tiny.py


def gemma(*args: Any, input: str | None = None) -> Any:
    return runner.invoke(app, [str(a) for a in args], input=input)


def one_error_line(r: Any, *needles: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert r.stdout == ""
    return lines[0]


def logits(lm: Any, ids: list[int] = IDS) -> np.ndarray:
    import keras

    x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), "int32")}
    return keras.ops.convert_to_numpy(lm(x))[0]


def hf_gguf(path: Path, **config: Any) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, **config)
    return model.eval()


def hf_logits(model: Any, ids: list[int] = IDS) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def random_lora(lm: Any, targets: list[str] | None = None, seed: int = 0) -> Any:
    """Enable LoRA (rank 4, alpha 8) with random A and B so that it changes the logits."""
    lm.backbone.enable_lora(4, target_layer_names=targets)
    rng = np.random.default_rng(seed)
    from gemma_cli.engine.model.lora import lora_layers

    for layer in lora_layers(lm.backbone):
        layer.lora_alpha = 8.0
        layer.lora_kernel_a.assign(rng.normal(0, 0.3, layer.lora_kernel_a.shape).astype("float32"))
        layer.lora_kernel_b.assign(rng.normal(0, 0.3, layer.lora_kernel_b.shape).astype("float32"))
    return lm


def load(preset: Path) -> Any:
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras_hub

    return keras_hub.models.CausalLM.from_preset(str(preset))


def load_run(run: Path) -> Any:
    """A fine-tune run as `gemma export` loads it (base preset + LoRA + latest checkpoint)."""
    from gemma_cli import targets
    from gemma_cli.engine.model import runs

    t = targets.resolve(str(run), [], verb="export")
    return runs.load(t.config, t.checkpoint)


def check_gguf_chat_template(template: str, family: str) -> None:
    """The file's chat template, rendered by jinja2 as llama.cpp's server renders it, a system
    turn included, is the text chat fine-tuning and `generate --chat` render (engine/data)."""
    import jinja2

    from gemma_cli.engine import families
    from gemma_cli.engine.data import Renderer

    turns = [("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello."), ("user", "And you?")]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(template).render(
        messages=[{"role": r, "content": c} for r, c in turns], add_generation_prompt=True, bos_token="<bos>")
    want = "".join(p.text for p in Renderer.for_chat(families.for_gguf_arch(family).chat).prompt(turns))
    assert text == want
    assert text.startswith("<bos>") and "Be brief." in text and text.endswith("<start_of_turn>model\n")


# ---- one tiny LoRA fine-tune, exported three ways ------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_gemma3: Path) -> Path:
    tmp = tmp_path_factory.mktemp("lora_run")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for _ in range(8) for t in CORPUS[:6]))
    out = tmp / "run"
    cfg = tmp / "tiny.yaml"
    cfg.write_text(f"""\
model:
  preset: {tiny_gemma3}
  precision: float32
  lora: {{rank: 4, alpha: 8}}
mesh: {{shape: [2, 4]}}
layout: {{indivisible: replicate}}
data:
  paths: [{corpus}]
  sequence_length: 16
  batch_size: 4
optimizer: {{learning_rate: 0.05}}
train: {{max_steps: 4, output_dir: {out}}}
""")
    r = gemma("finetune", cfg, "--quiet")
    assert r.exit_code == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def run_lm(lora_run: Path) -> Any:
    """The fine-tuned run as `gemma export` loads it (base preset + LoRA + latest checkpoint)."""
    return load_run(lora_run)


@pytest.fixture(scope="module")
def exported(lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """`gemma export RUN --format gguf --dtype D --json` for f32, f16 and q8_0."""
    tmp = tmp_path_factory.mktemp("gguf")
    files = {}
    for dtype in ("f32", "f16", "q8_0"):
        out = tmp / f"tiny-{dtype}.gguf"
        r = gemma("export", lora_run, "--format", "gguf", "--dtype", dtype, "--out", out, "--json")
        assert r.exit_code == 0, r.stderr[-2000:]
        files[dtype] = (out, json.loads(r.stdout))  # stdout is exactly one JSON document
    return files


def test_export_reports_types_and_sizes(exported: dict) -> None:
    for dtype, (path, doc) in exported.items():
        assert doc["format"] == "gguf" and doc["dtype"] == dtype and doc["architecture"] == "gemma3"
        assert doc["lora_merged"] == 4  # query and value of 2 layers
        assert doc["bytes"] == path.stat().st_size and doc["tensors"] == 2 + 2 * 13
    assert exported["f32"][1]["tensor_types"] == {"F32": 28}
    # 2-D tensors take the dtype, 1-D norms stay F32 (as llama.cpp's converter does)
    assert exported["f16"][1]["tensor_types"] == {"F16": 15, "F32": 13}
    assert exported["q8_0"][1]["tensor_types"] == {"Q8_0": 15, "F32": 13}
    sizes = [exported[d][1]["bytes"] for d in ("f32", "f16", "q8_0")]
    assert sizes[0] > sizes[1] > sizes[2]
    assert not list(exported["f32"][0].parent.glob(".*tmp*"))


def test_transformers_gguf_loader_gets_the_fine_tuned_logits(exported: dict, run_lm: Any, tiny_gemma3: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    want = logits(run_lm)
    # the LoRA matters: without it the logits are far off
    assert np.abs(logits(load(tiny_gemma3)) - want).max() > 0.05
    diffs = {}
    for dtype, (path, _) in exported.items():
        got = hf_logits(hf_gguf(path, query_pre_attn_scalar=HEAD_DIM))
        diffs[dtype] = float(np.abs(got - want).max())
    with capsys.disabled():
        print(f"\ntiny Gemma 3 GGUF vs keras, max |logit diff| (logits span ±{np.abs(want).max():.1f}): "
              + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert diffs["f32"] <= 1e-3
    # reported, loosely bounded: f16 ~1e-3, q8_0 ~1e-2 (a wrong layout gives ~1)
    assert diffs["f16"] < 0.05 and diffs["q8_0"] < 0.5


def test_gemma_convert_round_trips_the_file(exported: dict, run_lm: Any, tmp_path: Path) -> None:
    path, _ = exported["f32"]
    out = tmp_path / "back"
    r = gemma("convert", "gguf", path, "--out", out, "--json")
    assert r.exit_code == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["architecture"] == "gemma3" and doc["tensors"] == 28
    back = load(out)
    assert not any("lora" in v.path for v in back.backbone.weights)
    np.testing.assert_allclose(logits(back), logits(run_lm), atol=1e-5, rtol=1e-5)
    for text in CORPUS:
        assert (np.asarray(back.preprocessor.tokenizer(text)).tolist()
                == np.asarray(run_lm.preprocessor.tokenizer(text)).tolist())


def test_metadata_and_tensors_as_llama_cpp_writes_them(exported: dict, run_lm: Any) -> None:
    """Keys, value types and tensor names of llama.cpp's converter (Gemma3Model) for gemma3."""
    import gguf
    import keras
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    path, _ = exported["f16"]
    r = gguf.GGUFReader(str(path))
    V = gguf.GGUFValueType
    types = {k: [V(t) for t in f.types] for k, f in r.fields.items()}
    value = {k: f.contents() for k, f in r.fields.items()}
    u32, f32_, s, b = [V.UINT32], [V.FLOAT32], [V.STRING], [V.BOOL]
    expected = {
        "general.architecture": s, "general.type": s, "general.name": s, "general.size_label": s,
        "general.file_type": u32,
        "general.quantization_version": u32,
        "gemma3.context_length": u32, "gemma3.embedding_length": u32, "gemma3.block_count": u32,
        "gemma3.feed_forward_length": u32, "gemma3.attention.head_count": u32,
        "gemma3.attention.head_count_kv": u32, "gemma3.attention.key_length": u32,
        "gemma3.attention.value_length": u32, "gemma3.attention.layer_norm_rms_epsilon": f32_,
        "gemma3.rope.freq_base": f32_, "gemma3.attention.sliding_window": u32,
        "tokenizer.ggml.model": s, "tokenizer.ggml.pre": s,
        "tokenizer.ggml.tokens": [V.ARRAY, V.STRING], "tokenizer.ggml.scores": [V.ARRAY, V.FLOAT32],
        "tokenizer.ggml.token_type": [V.ARRAY, V.INT32],
        "tokenizer.ggml.bos_token_id": u32, "tokenizer.ggml.eos_token_id": u32,
        "tokenizer.ggml.unknown_token_id": u32, "tokenizer.ggml.padding_token_id": u32,
        "tokenizer.ggml.add_bos_token": b, "tokenizer.ggml.add_sep_token": b,
        "tokenizer.ggml.add_eos_token": b, "tokenizer.ggml.add_space_prefix": b,
        "tokenizer.chat_template": s,
    }
    got = {k: t for k, t in types.items() if not k.startswith("GGUF.")}
    assert got == expected
    bb = run_lm.backbone
    assert value["general.architecture"] == "gemma3" and value["general.name"] == "run"
    assert value["general.size_label"] == "23K"  # gguf.size_label of the parameter count, as llama.cpp
    assert value["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert (value["gemma3.block_count"], value["gemma3.embedding_length"], value["gemma3.feed_forward_length"]) == (
        bb.num_layers, bb.hidden_dim, bb.intermediate_dim)
    assert (value["gemma3.attention.head_count"], value["gemma3.attention.head_count_kv"],
            value["gemma3.attention.key_length"], value["gemma3.attention.sliding_window"]) == (
        bb.num_query_heads, bb.num_key_value_heads, bb.head_dim, bb.sliding_window_size)
    assert value["gemma3.rope.freq_base"] == 1e6 and value["gemma3.context_length"] == 32768
    check_gguf_chat_template(value["tokenizer.chat_template"], "gemma3")

    proto = sp_pb2.ModelProto()
    proto.ParseFromString(run_lm.preprocessor.tokenizer.proto)
    assert value["tokenizer.ggml.tokens"] == [p.piece for p in proto.pieces]
    np.testing.assert_array_equal(value["tokenizer.ggml.scores"], [p.score for p in proto.pieces])
    tok_types = value["tokenizer.ggml.token_type"]
    assert [tok_types[i] for i in range(4)] == [3, 3, 3, 3]  # pad eos bos unk: CONTROL
    assert all(tok_types[i] == p.type for i, p in enumerate(proto.pieces) if i > 3)
    assert (value["tokenizer.ggml.bos_token_id"], value["tokenizer.ggml.eos_token_id"],
            value["tokenizer.ggml.padding_token_id"], value["tokenizer.ggml.unknown_token_id"]) == (2, 1, 0, 3)

    # names from llama.cpp's table, dims reversed, norms stored as 1 + w
    names = {gguf.TENSOR_NAMES[t].format(bid=i) + ".weight"
             for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GEMMA3] for i in range(bb.num_layers)}
    tensors = {t.name: t for t in r.tensors}
    assert set(tensors) <= names
    q = tensors["blk.0.attn_q.weight"]
    assert [int(d) for d in q.shape] == [bb.hidden_dim, bb.num_query_heads * bb.head_dim]
    assert q.tensor_type == gguf.GGMLQuantizationType.F16
    norm = tensors["blk.1.post_ffw_norm.weight"]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    want = keras.ops.convert_to_numpy(bb.get_layer("decoder_block_1").post_ffw_norm.scale) + 1.0
    np.testing.assert_allclose(np.asarray(norm.data), want, rtol=1e-6)


def test_transformers_reads_the_chat_template(exported: dict) -> None:
    """(Its token ids are compared on the real vocabulary in test_real_export.py: transformers
    rebuilds Gemma's BPE merges from the real vocabulary's order, which the tiny one lacks.)"""
    transformers = pytest.importorskip("transformers")
    path, _ = exported["f32"]
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"


# ---- PEFT ----------------------------------------------------------------------------------


def test_peft_adapter_on_the_hf_base_gives_the_run_logits(lora_run: Path, run_lm: Any, tiny_gemma3: Path,
                                                          tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    r = gemma("export", lora_run, "--format", "peft", "--out", adapter, "--json")
    assert r.exit_code == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["format"] == "peft" and doc["modules"] == 4 and doc["target_modules"] == ["q_proj", "v_proj"]
    assert sorted(doc["files"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_gemma3)
    r = gemma("export", tiny_gemma3, "--format", "hf", "--out", base, "--quiet")
    assert r.exit_code == 0, r.stderr[-2000:]

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    base_logits = hf_logits(hf)
    model = peft.PeftModel.from_pretrained(hf, str(adapter)).eval()
    want = logits(run_lm)
    assert np.abs(base_logits - want).max() > 0.05
    np.testing.assert_allclose(hf_logits(model), want, atol=1e-4, rtol=1e-4)


def test_peft_every_target_layout(tiny_gemma3: Path, tmp_path: Path) -> None:
    """q/k/v (per-head A, shared B → block-diagonal PEFT B), o and the MLP, random factors."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from gemma_cli.engine.formats.export import export_model
    from gemma_cli.engine.formats.peft import export_peft

    export_model(load(tiny_gemma3), tmp_path / "base", "hf")
    targets = ["query", "key", "value", "attention_output", "ffw_gating", "ffw_gating_2", "ffw_linear"]
    lm = random_lora(load(tiny_gemma3), targets)
    s = export_peft(lm, tmp_path / "adapter")
    assert s["modules"] == 14 and len(s["target_modules"]) == 7
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # 4 query heads, 2 kv heads: PEFT ranks 16 and 8, alpha scaled alike (alpha/r = 8/4 everywhere)
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    assert cfg["rank_pattern"] == {"q_proj": 16, "k_proj": 8, "v_proj": 8}
    assert cfg["alpha_pattern"] == {"q_proj": 32.0, "k_proj": 16.0, "v_proj": 16.0}
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    np.testing.assert_allclose(hf_logits(model), logits(lm), atol=1e-4, rtol=1e-4)


# ---- the other Gemma families --------------------------------------------------------------


@pytest.mark.parametrize("family, arch, tensors", [("gemma", "gemma", 2 + 2 * 9), ("gemma2", "gemma2", 2 + 2 * 11)])
def test_gemma_1_and_2_export_and_round_trip(tiny_presets: dict, tmp_path: Path, family: str, arch: str,
                                             tensors: int) -> None:
    from gemma_cli.engine.formats.convert import convert_gguf
    from gemma_cli.engine.formats.gguf_export import export_gguf

    lm = random_lora(load(tiny_presets[family]))
    want = logits(lm)
    path = tmp_path / f"{family}.gguf"
    s = export_gguf(lm, path, "f32", name=family)
    assert s["architecture"] == arch and s["tensors"] == tensors and s["lora_merged"] == 4
    convert_gguf(path, tmp_path / "back")
    np.testing.assert_allclose(logits(load(tmp_path / "back")), want, atol=1e-5, rtol=1e-5)
    import gguf

    check_gguf_chat_template(gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"].contents(), family)
    if arch == "gemma2":  # transformers has no GGUF loader for Gemma 1
        got = hf_logits(hf_gguf(path, query_pre_attn_scalar=HEAD_DIM))
        assert np.abs(got - want).max() <= 1e-3


# ---- refusals, bad input, atomic writes ----------------------------------------------------


def _tiny_llama_preset(out: Path) -> Path:
    import io

    import sentencepiece as spm

    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras_hub

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=64, model_type="bpe",
        bos_piece="<s>", eos_piece="</s>", pad_id=-1, minloglevel=2)
    tok = keras_hub.models.LlamaTokenizer(proto=buf.getvalue())
    bb = keras_hub.models.LlamaBackbone(vocabulary_size=64, num_layers=1, num_query_heads=2,
                                        num_key_value_heads=1, hidden_dim=16, intermediate_dim=32)
    pre = keras_hub.models.LlamaCausalLMPreprocessor(tokenizer=tok, sequence_length=16)
    keras_hub.models.LlamaCausalLM(backbone=bb, preprocessor=pre).save_to_preset(str(out))
    return out


def test_other_families_are_refused_in_one_line(tmp_path: Path) -> None:
    llama = _tiny_llama_preset(tmp_path / "llama")
    out = tmp_path / "llama.gguf"
    r = gemma("export", llama, "--format", "gguf", "--out", out)
    one_error_line(r, "--format gguf: LlamaBackbone is not supported", "gemma, gemma2, gemma3")
    assert not out.exists()
    from gemma_cli.engine.families.gemma_gguf import gguf_arch_of
    from gemma_cli.engine.formats.gguf_export import mapping_for
    from gemma_cli.errors import UsageError

    with pytest.raises(UsageError) as e:
        mapping_for("Gemma4Backbone")
    assert "Gemma4Backbone is not supported (Gemma 4 is not supported yet" in e.value.line()
    with pytest.raises(UsageError, match="mixes Gemma 1 and Gemma 2"):
        gguf_arch_of("GemmaBackbone", {"use_post_ffw_norm": True, "use_post_attention_norm": True})


def test_bad_export_input_exits_2_before_loading(tmp_path: Path, tiny_gemma3: Path) -> None:
    out = tmp_path / "m.gguf"
    one_error_line(gemma("export", tiny_gemma3, "--format", "gguf", "--dtype", "q4_k", "--out", out),
                   "--dtype q4_k", "f32, f16, bf16, q8_0")
    one_error_line(gemma("export", tiny_gemma3, "--format", "hf", "--dtype", "f16", "--out", tmp_path / "hf"),
                   "--dtype f16: applies to --format gguf only")
    one_error_line(gemma("export", tiny_gemma3, "--format", "gguf", "--out", tmp_path), "is a directory")
    one_error_line(gemma("export", tiny_gemma3, "--format", "gguf", "--out", tmp_path / "m.bin"), "end in .gguf")
    out.write_bytes(b"mine")
    one_error_line(gemma("export", tiny_gemma3, "--format", "gguf", "--out", out), "exists", "--force")
    assert out.read_bytes() == b"mine"
    one_error_line(gemma("export", tiny_gemma3, "--format", "peft", "--out", tmp_path / "a"),
                   "is not a fine-tune run, it has no LoRA adapter")


def test_interrupted_write_leaves_nothing_half_written(tiny_gemma3: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (KeyboardInterrupt) in the middle of the tensor data: no file, no temporary,
    and a file being replaced (--force) keeps its old content."""
    import gguf

    from gemma_cli.engine.formats.gguf_export import export_gguf

    lm = load(tiny_gemma3)
    real = gguf.GGUFWriter.write_tensor_data
    written: list[int] = []

    def interrupted(self: Any, tensor: Any, *a: Any, **k: Any) -> None:
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(tensor.nbytes)
        real(self, tensor, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", interrupted)
    out = tmp_path / "m.gguf"
    with pytest.raises(KeyboardInterrupt):
        export_gguf(lm, out, "f32")
    assert len(written) == 5 and list(tmp_path.iterdir()) == []
    out.write_bytes(b"old model")
    written.clear()
    with pytest.raises(KeyboardInterrupt):
        export_gguf(lm, out, "f32", force=True)
    assert out.read_bytes() == b"old model" and list(tmp_path.iterdir()) == [out]
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", real)
    s = export_gguf(lm, out, "f32", force=True)
    assert out.stat().st_size == s["bytes"] > 1000
