"""`gemma convert gguf`, `gemma export`, `gemma upload`: bad input exits 2 with one line, the
tokenizer rebuild, and LoRA merging on a tiny Gemma 3 (fast tier; the real model is in
test_real_model.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gemma_cli.cli import app

runner = CliRunner()


def _one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


def _write_gguf(path: Path, arch: str) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---- bad input: exit 2, one line, nothing on stdout ---------------------------------------


def test_missing_file(tmp_path):
    r = runner.invoke(app, ["convert", "gguf", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "o")])
    _one_error_line(r, "nope.gguf", "no such file")


def test_not_a_gguf(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_text("this is not a gguf file\n")
    r = runner.invoke(app, ["convert", "gguf", str(f), "--out", str(tmp_path / "o")])
    _one_error_line(r, "not a GGUF file")
    assert not (tmp_path / "o").exists()


def test_other_architecture(tmp_path):
    f = _write_gguf(tmp_path / "llama.gguf", "llama")
    r = runner.invoke(app, ["convert", "gguf", str(f), "--out", str(tmp_path / "o")])
    _one_error_line(r, "architecture 'llama' is not supported", "gemma3")
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob("o.tmp-*"))


def test_out_dir_not_ours(tmp_path):
    f = _write_gguf(tmp_path / "g.gguf", "gemma3")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["convert", "gguf", str(f), "--out", str(out), "--force"])
    _one_error_line(r, "not a preset written by `gemma convert`")
    assert (out / "notes.txt").read_text() == "mine"


def test_builtin_out_dir_not_ours(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    r = runner.invoke(app, ["convert", "gguf", "--builtin", "gemma3-270m", "--out", str(out)])
    _one_error_line(r, "not a preset written by `gemma convert`")


def test_path_and_builtin_are_exclusive(tmp_path):
    r = runner.invoke(app, ["convert", "gguf"])
    _one_error_line(r, "either a GGUF PATH or --builtin")
    r = runner.invoke(app, ["convert", "gguf", "--builtin", "gemma9-1t"])
    _one_error_line(r, "gemma9-1t", "gemma3-270m")


def test_missing_gguf_package(tmp_path, monkeypatch):
    f = _write_gguf(tmp_path / "g.gguf", "gemma3")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf → ImportError
    r = runner.invoke(app, ["convert", "gguf", str(f), "--out", str(tmp_path / "o")])
    _one_error_line(r, "pip install 'gemma-cli[gguf]'")


def test_truncated_gemma3_gguf_is_refused(tmp_path):
    # the right architecture but not a whole model: named as bad input, nothing written
    f = _write_gguf(tmp_path / "g.gguf", "gemma3")
    r = runner.invoke(app, ["convert", "gguf", str(f), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_export_and_upload_bad_input(tmp_path, monkeypatch):
    r = runner.invoke(app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "e")])
    _one_error_line(r, "no such file or directory", "a fine-tune run directory or a preset")
    r = runner.invoke(app, ["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "e")])
    _one_error_line(r, "--format onnx")
    preset = tmp_path / "p"
    preset.mkdir()
    (preset / "config.json").write_text("{}")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    monkeypatch.setenv("HOME", str(tmp_path))
    r = runner.invoke(app, ["upload", str(preset), "hf://me/model"])
    _one_error_line(r, "run `gemma login hf`")
    r = runner.invoke(app, ["upload", str(preset), "kaggle://me/model/keras/v1"])
    _one_error_line(r, "run `gemma login kaggle`")
    r = runner.invoke(app, ["upload", str(preset), "s3://bucket/x"])
    _one_error_line(r, "unknown destination")


def test_command_modules_import_nothing_heavy():
    code = (
        "import sys, gemma_cli.cli, gemma_cli.commands.convert_cmd, gemma_cli.engine.formats.convert, "
        "gemma_cli.engine.formats.export; "
        "print([m for m in ('keras','keras_hub','jax','tensorflow','gguf','torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- the tokenizer rebuild ----------------------------------------------------------------


def test_sentencepiece_proto_round_trip():
    """Pieces/scores/types as llama.cpp stores them (unk marked CONTROL) → same ids."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    from tiny import CORPUS, tiny_proto

    from gemma_cli.engine.families.gemma_gguf import sentencepiece_proto

    ref = sp_pb2.ModelProto()
    ref.ParseFromString(tiny_proto())
    tokens = [p.piece for p in ref.pieces]
    scores = [p.score for p in ref.pieces]
    types = [3 if p.type == 2 else p.type for p in ref.pieces]  # llama.cpp: unk is CONTROL
    proto = sentencepiece_proto(tokens, scores, types, unk_id=3, bos_id=2, eos_id=1, pad_id=0)
    m = sp_pb2.ModelProto()
    m.ParseFromString(proto)
    assert m.pieces[3].type == 2 and not m.trainer_spec.byte_fallback  # tiny has no byte pieces
    assert m.normalizer_spec.name == "identity" and not m.normalizer_spec.add_dummy_prefix
    sp = spm.SentencePieceProcessor(model_proto=proto)
    sp_ref = spm.SentencePieceProcessor(model_proto=tiny_proto())
    for text in CORPUS[:4]:
        # the tiny vocabulary was trained with a dummy prefix; ours never adds one
        assert sp.encode("▁" + text.replace(" ", "▁")) == sp_ref.encode(text)
    assert sp.unk_id() == 3


# ---- LoRA merge on a tiny Gemma 3 ---------------------------------------------------------


def _tiny_lora_model(preset_dir: Path):
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras
    import keras_hub

    lm = keras_hub.models.CausalLM.from_preset(str(preset_dir))
    lm.backbone.enable_lora(4)
    rng = np.random.default_rng(0)
    layers = [lyr for lyr in lm.backbone._flatten_layers(include_self=False) if getattr(lyr, "lora_enabled", False)]
    assert layers
    for i, lyr in enumerate(layers):
        lyr.lora_alpha = 8.0 if i % 2 else 4.0  # scale 2 and 1
        lyr.lora_kernel_a.assign(rng.normal(0, 0.5, lyr.lora_kernel_a.shape).astype("float32"))
        lyr.lora_kernel_b.assign(rng.normal(0, 0.5, lyr.lora_kernel_b.shape).astype("float32"))
    expected = {
        lyr._kernel.path: keras.ops.convert_to_numpy(lyr._kernel)
        + (lyr.lora_alpha / lyr.lora_rank)
        * np.matmul(keras.ops.convert_to_numpy(lyr.lora_kernel_a), keras.ops.convert_to_numpy(lyr.lora_kernel_b))
        for lyr in layers
    }
    return lm, expected


def _logits(lm, ids):
    import keras

    x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), "int32")}
    return keras.ops.convert_to_numpy(lm(x))


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    from tiny import make_tiny_preset

    return make_tiny_preset(tmp_path_factory.mktemp("tiny") / "g3", "gemma3")


def test_merge_lora_export_preset_via_cli(tiny3, tmp_path):
    """`gemma export RUN --format preset`: exported kernels = base + delta, same logits."""
    import keras
    import keras_hub

    lm, _ = _tiny_lora_model(tiny3)
    layers = [lyr for lyr in lm.backbone._flatten_layers(include_self=False) if getattr(lyr, "lora_enabled", False)]
    for lyr in layers:  # a run's alpha is one number (model.lora.alpha): scale 2 everywhere
        lyr.lora_alpha = 8.0
    expected = {
        lyr._kernel.path: keras.ops.convert_to_numpy(lyr._kernel)
        + 2.0 * np.matmul(keras.ops.convert_to_numpy(lyr.lora_kernel_a), keras.ops.convert_to_numpy(lyr.lora_kernel_b))
        for lyr in layers
    }
    ids = [2, 10, 20, 30, 40, 50]
    want = _logits(lm, ids)
    # a fine-tune run directory as `gemma finetune` leaves it: config.yaml + a LoRA checkpoint
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    lm.backbone.save_lora_weights(str(ckpt / "adapter.lora.h5"))
    (ckpt / "state.json").write_text('{"step": 1}')
    (run / "checkpoints" / "latest").write_text("step_00000001\n")
    (run / "config.yaml").write_text(
        f"model: {{preset: {json.dumps(str(tiny3))}, precision: float32, lora: {{rank: 4, alpha: 8}}}}\n"
    )
    out = tmp_path / "merged"
    r = runner.invoke(app, ["export", str(run), "--format", "preset", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["lora_merged"] == len(expected) > 0 and doc["format"] == "preset"

    merged = keras_hub.models.CausalLM.from_preset(str(out))
    got = {v.path: keras.ops.convert_to_numpy(v) for v in merged.backbone.weights}
    assert not any("lora" in p for p in got)
    for path, kernel in expected.items():
        np.testing.assert_allclose(got[path], kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_logits(merged, ids), want, rtol=1e-4, atol=1e-4)
    # the LoRA delta is not negligible: the base model's logits differ
    base = keras_hub.models.CausalLM.from_preset(str(tiny3))
    assert np.abs(_logits(base, ids) - want).max() > 1e-2


def test_merge_lora_export_hf_loads_in_transformers(tiny3, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from gemma_cli.engine.formats.export import export_model

    lm, _ = _tiny_lora_model(tiny3)
    ids = [2, 10, 20, 30, 40, 50]
    want = _logits(lm, ids)
    out = tmp_path / "hf"
    s = export_model(lm, out, "hf")
    assert s["lora_merged"] > 0 and "config.json" in s["files"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        got = hf(torch.tensor([ids])).logits.numpy()
    # float32 on both sides, 2 tiny layers: agreement to float rounding
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_export_refuses_non_empty_out(tiny3, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    r = runner.invoke(app, ["export", str(tiny3), "--format", "preset", "--out", str(out)])
    _one_error_line(r, "not empty", "--force")
    assert (out / "keep").exists()
