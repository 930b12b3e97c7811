"""Real tier: Gemma 3 270M converted from the GGUF on PyPI (tests/real_fixtures.py).

Numbers behind the thresholds were measured on the 2-core CPU machine (float32, jax CPU):
perplexity 8.05 on PARAGRAPH (87 tokens with <bos>), keras vs transformers logits max abs
difference 5.1e-5 (logits span about ±30), greedy argmax identical at every position.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from real_fixtures import PRESET, real_preset_dir
from typer.testing import CliRunner

from gemma_cli.cli import app

pytestmark = pytest.mark.real
runner = CliRunner()

PARAGRAPH = (
    "The history of the city goes back more than two thousand years. It began as a small "
    "fishing village on the banks of the river, and over the centuries it grew into an important "
    "centre of trade. Merchants came from far away to sell cloth, spices and wine in its busy "
    "markets. Today the old town is a popular destination for tourists, who come to walk through "
    "its narrow streets, visit the cathedral and enjoy the local food."
)


@pytest.fixture(scope="module")
def lm():
    preset = real_preset_dir()
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras_hub

    model = keras_hub.models.CausalLM.from_preset(str(preset))
    model.compile(sampler="greedy")
    return model


def _ids(lm, text: str) -> list[int]:
    return [2] + [int(i) for i in np.asarray(lm.preprocessor.tokenizer(text))]


def _logits(lm, ids: list[int]) -> np.ndarray:
    import keras

    x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), "int32")}
    return keras.ops.convert_to_numpy(lm(x))[0]


def test_convert_again_reuses_the_preset():
    real_preset_dir()
    r = runner.invoke(app, ["convert", "gguf", "--builtin", "gemma3-270m", "--out", str(PRESET), "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert doc["reused"] is True and doc["params"] == 268_098_176 and doc["tensors"] == 236
    assert doc["vocab_size"] == 262_144 and doc["architecture"] == "gemma3"
    assert "Reusing" in r.stderr


def test_tokenizer_matches_gemma(lm):
    ids = np.asarray(lm.preprocessor.tokenizer("The capital of France is")).tolist()
    assert ids == [818, 5279, 529, 7001, 563]
    # byte fallback and whitespace escaping round-trip
    text = "naïve café — 東京\n  two spaces"
    assert lm.preprocessor.tokenizer.detokenize(lm.preprocessor.tokenizer(text)) == text


# Greedy continuations the 270M base model gets right (measured; "The capital of France is"
# continues "the capital of the country of France", so it is not used).
@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("Water is made of hydrogen and", "oxygen"),
        ("Monday, Tuesday, Wednesday,", "Thursday"),
        ("1, 2, 3, 4, 5,", "6, 7"),
        ("The opposite of hot is", "cold"),
        ("def fibonacci(n):\n", "return"),
    ],
)
def test_greedy_continuations(lm, prompt, expected):
    out = lm.generate(prompt, max_length=24)
    assert out.startswith(prompt)
    assert expected in out[len(prompt):], out


def test_perplexity_of_plain_english(lm):
    ids = _ids(lm, PARAGRAPH)
    logits = _logits(lm, ids).astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ppl = float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))
    # measured 8.05. A 270M model on easy prose sits in the single digits/low tens; a broken
    # conversion (norms off by one, q/k/v transposed) gives hundreds to ~262144 (uniform).
    assert ppl < 20, ppl


def test_export_hf_loads_in_transformers_with_same_logits(lm, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    r = runner.invoke(app, ["export", str(PRESET), "--format", "hf", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "hf" and doc["lora_merged"] == 0 and "model.safetensors" in doc["files"]

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    hf.eval()
    ids = _ids(lm, PARAGRAPH)
    with torch.no_grad():
        got = hf(torch.tensor([ids])).logits[0].numpy()
    want = _logits(lm, ids)
    # measured max |diff| 5.1e-5 on logits spanning ±30 (float32 summation order only)
    assert float(np.abs(got - want).max()) < 1e-3
    assert (got.argmax(-1) == want.argmax(-1)).all()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok("The capital of France is")["input_ids"] == [2, 818, 5279, 529, 7001, 563]


def test_conversion_agrees_with_transformers_own_gguf_loader(lm):
    """An independent mapping of the same GGUF (transformers' loader) gives the same logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from gemma_cli.engine.formats.convert import builtin_gguf

    path = builtin_gguf("gemma3-270m")
    cfg = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(
        {k: torch.as_tensor(np.asarray(v)) for k, v in tensors.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    model.tie_weights()
    model.eval()
    ids = _ids(lm, PARAGRAPH)
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0].numpy()
    # measured 5.1e-5, same as the HF export: both dequantize the same blocks
    assert float(np.abs(got - _logits(lm, ids)).max()) < 1e-3
