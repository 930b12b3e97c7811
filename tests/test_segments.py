"""Packing that keeps documents apart (gemma_cli/engine/patches/segments.py).

The proof: a document packed between two others gets the logits it gets alone. Each batch
holds two rows, `A | B | C | pad` with segment ids 1, 2, 3, 0, and `B | pad` with a 0/1 mask;
the logits of B in the first row are compared with the second row's. The model is loaded the
engine's way (`layout.layout_for` + `runs.load`: LoRA, ModelParallel on the (2, 4) mesh,
float32) and the forward pass is keras' compiled `predict_on_batch`. The same batch through
keras-hub's own mask (segment attention off) is the negative control: B then attends to A and
its logits move.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

TOL = 1e-4
LENGTHS = (13, 11, 9)  # A, B, C
WIDTH = 40  # row length: 33 tokens of A|B|C, 7 padding


def packed_pair(docs: list[np.ndarray], width: int = WIDTH) -> dict[str, np.ndarray]:
    """Row 0: the docs packed, segment ids 1..k, then padding. Row 1: docs[1] alone, 0/1 mask."""
    ids = np.zeros((2, width), "int32")
    seg = np.zeros((2, width), "int32")
    o = 0
    for k, d in enumerate(docs, 1):
        ids[0, o : o + len(d)], seg[0, o : o + len(d)] = d, k
        o += len(d)
    b = docs[1]
    ids[1, : len(b)], seg[1, : len(b)] = b, 1
    return {"token_ids": ids, "padding_mask": seg}


def random_docs(vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, vocab, n).astype("int32") for n in LENGTHS]


def b_diff(logits: np.ndarray, docs: list[np.ndarray]) -> float:
    """max |logits of B packed - logits of B alone|."""
    start, n = len(docs[0]), len(docs[1])
    return float(np.abs(logits[0, start : start + n] - logits[1, :n]).max())


def prepared(tmp: Path, preset: Path, lora: int | None = 4) -> tuple[Any, Any]:
    """(causal_lm, distribution) as the engine loads them for a run config: float32, LoRA,
    mesh (2, 4), KV heads replicated; the CausalLM takes batches of token ids."""
    from gemma_cli.config import load_config
    from gemma_cli.engine.model import runs
    from gemma_cli.engine.plan import layout as layoutlib

    model: dict[str, Any] = {"preset": str(preset), "precision": "float32"}
    if lora:
        model["lora"] = {"rank": lora}
    cfg = {"model": model, "mesh": {"shape": [2, 4], "axes": ["batch", "model"]}, "layout": {"indivisible": "replicate"},
           "optimizer": {"learning_rate": 0.01}, "train": {"output_dir": str(tmp / "out")}}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(str(path))
    distribution = layoutlib.layout_for(config).distribution
    lm = runs.load(config, distribution=distribution, adapters=True)
    lm.preprocessor = None
    return lm, distribution


def randomize_lora(causal_lm: Any, seed: int = 1) -> None:
    """LoRA's B kernels start at zero; give every LoRA kernel weights so the adapters act."""
    rng = np.random.default_rng(seed)
    n = 0
    for v in causal_lm.backbone.weights:
        if "lora_kernel" in v.path:
            v.assign(rng.normal(0, 0.2, v.shape).astype("float32"))
            n += 1
    assert n, "no LoRA kernels"


# ---------------------------------------------------------------------------- positions ---
def test_positions_restart_at_each_document_and_keep_keras_hub_for_plain_masks():
    from gemma_cli.engine.patches.segments import same_segment, segment_positions

    seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]], "int32")
    np.testing.assert_array_equal(
        np.asarray(segment_positions(seg)),
        [[0, 1, 2, 0, 1, 0, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0, 0, 0]],
    )
    same = np.asarray(same_segment(seg[:1]))[0]
    assert same[4, 3] and not same[3, 2] and not same[5, 4]  # B sees B, not A; C not B
    assert same[6].all()  # padding queries keep keras-hub's mask


# ------------------------------------------------------------- the proof, tiny families ---
@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_packed_document_logits_equal_alone_on_the_mesh_with_lora(tmp_path, tiny_presets, family):
    from gemma_cli.engine.patches.segments import (
        disable_segment_attention,
        enable_segment_attention,
    )

    lm, distribution = prepared(tmp_path, tiny_presets[family])
    randomize_lora(lm)
    docs = random_docs(lm.backbone.vocabulary_size)
    batch = packed_pair(docs)
    with distribution.scope():
        enable_segment_attention(lm.backbone)
        ours = np.asarray(lm.predict_on_batch(batch))
        disable_segment_attention(lm.backbone)
        lm.predict_function = None  # retrace with keras-hub's mask
        theirs = np.asarray(lm.predict_on_batch(batch))
    assert b_diff(ours, docs) <= TOL
    # negative control: keras-hub's mask lets B attend to A
    assert b_diff(theirs, docs) > 1e-2
    # the 0/1 row is keras-hub's computation either way
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-6, rtol=0)


def test_rotary_positions_restart_in_every_block(tiny_gemma3, monkeypatch):
    """The RoPE of every block rotates A, B, C from position 0 (spied on keras-hub's layer)."""
    import keras_hub

    from gemma_cli.engine.patches.segments import enable_segment_attention, segment_positions

    seen: list[Any] = []
    original = keras_hub.layers.RotaryEmbedding._compute_cos_sin_embedding

    def spy(self, inputs, start_index=0, positions=None):
        seen.append(None if positions is None else np.asarray(positions))
        return original(self, inputs, start_index, positions)

    backbone = keras_hub.models.Backbone.from_preset(str(tiny_gemma3))
    batch = packed_pair(random_docs(backbone.vocabulary_size))
    enable_segment_attention(backbone)
    monkeypatch.setattr(keras_hub.layers.RotaryEmbedding, "_compute_cos_sin_embedding", spy)
    backbone(batch)
    want = np.asarray(segment_positions(batch["padding_mask"]))
    assert len(seen) == 2 * backbone.num_layers  # query and key of each block
    for got in seen:
        np.testing.assert_array_equal(got, want)
    assert want[0, LENGTHS[0]] == 0 and want[0, sum(LENGTHS[:2])] == 0


def test_packed_batch_trains_on_the_mesh_with_lora(tmp_path, tiny_gemma3):
    """Two train steps on a packed batch: finite loss that falls, finite LoRA updates."""
    from gemma_cli.config import load_config
    from gemma_cli.engine.model.optimizer import compile_model
    from gemma_cli.engine.patches.segments import (
        enable_segment_attention,
        segment_attention_enabled,
    )

    lm, distribution = prepared(tmp_path, tiny_gemma3)
    cfg = load_config(str(tmp_path / "run.yaml"))
    docs = random_docs(lm.backbone.vocabulary_size)
    full = packed_pair(docs, WIDTH + 1)
    full = {k: np.concatenate([v, v]) for k, v in full.items()}  # batch 4
    ids, seg = full["token_ids"], full["padding_mask"]
    x = {"token_ids": ids[:, :-1], "padding_mask": seg[:, :-1]}
    # no loss on padding, nor on a target that starts the next document
    weight = ((seg[:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1])).astype("float32")
    with distribution.scope():
        enable_segment_attention(lm.backbone)
        assert segment_attention_enabled(lm.backbone)
        compile_model(lm, cfg, 10)
        before = {v.path: np.asarray(v.value) for v in lm.trainable_weights}
        losses = [float(np.asarray(lm.train_on_batch(x, ids[:, 1:], sample_weight=weight)[0])) for _ in range(2)]
    after = {v.path: np.asarray(v.value) for v in lm.trainable_weights}
    assert all(np.isfinite(losses)) and losses[1] < losses[0], losses
    assert before and all(np.isfinite(a).all() for a in after.values())
    assert all("lora" in p for p in before) and any(not np.array_equal(before[p], after[p]) for p in before)


def test_generation_is_keras_hubs(tiny_gemma3):
    """The cached path (generate) runs keras-hub's mask: same tokens with segments on or off."""
    import keras_hub

    from gemma_cli.engine.patches.segments import (
        disable_segment_attention,
        enable_segment_attention,
    )

    lm = keras_hub.models.CausalLM.from_preset(str(tiny_gemma3))
    lm.compile(sampler="greedy")
    prompts = lm.preprocessor.generate_preprocess(["the quick brown fox", "a mesh"], sequence_length=8)
    prompts = {k: np.asarray(v) for k, v in prompts.items()}
    plain = np.asarray(lm.generate_step(prompts, stop_token_ids=None)["token_ids"])
    enable_segment_attention(lm.backbone)
    ours = np.asarray(lm.generate_step(prompts, stop_token_ids=None)["token_ids"])
    disable_segment_attention(lm.backbone)
    np.testing.assert_array_equal(ours, plain)
    assert (plain[:, -1] != 0).all()  # it generated to the end


def test_weights_saved_with_segments_on_load_into_a_plain_model(tmp_path, tiny_gemma3):
    """keras names the layers of a list by class name in weight files: checkpoints must not change."""
    import keras_hub

    from gemma_cli.engine.patches.segments import enable_segment_attention

    ours = keras_hub.models.Backbone.from_preset(str(tiny_gemma3))
    for v in ours.weights:
        v.assign(v.value + 0.5)
    enable_segment_attention(ours)
    ours.save_weights(tmp_path / "w.weights.h5")
    plain = keras_hub.models.Backbone.from_preset(str(tiny_gemma3))
    plain.load_weights(tmp_path / "w.weights.h5")
    for a, b in zip(ours.weights, plain.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=a.path)


# ------------------------------------------ other keras-hub decoders, and their upgrade ---
def tiny_backbone(family: str) -> Any:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    if family == "llama3":
        return keras_hub.models.Llama3Backbone(
            vocabulary_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32, intermediate_dim=64
        )
    # Gemma 4: a sliding-window layer (window 8) and a global layer (head dim 16), per-layer inputs
    return keras_hub.models.Gemma4Backbone(
        vocabulary_size=64, image_size=896, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
        intermediate_dim=64, head_dim=8, sliding_window_size=8, sliding_window_pattern=2, global_head_dim=16,
        hidden_size_per_layer_input=8,
    )


@pytest.mark.parametrize("family", ["llama3", "gemma4"])
def test_llama3_and_gemma4(family):
    """One device: the same proof for the other keras-hub decoders the hooks know.

    Gemma 4 has a `position_ids` input of its own: the per-document positions go there.
    """
    from gemma_cli.engine.patches.segments import (
        disable_segment_attention,
        enable_segment_attention,
        segment_positions,
    )

    backbone = tiny_backbone(family)
    docs = random_docs(backbone.vocabulary_size)
    batch = packed_pair(docs)
    if family == "gemma4":
        batch["position_ids"] = np.asarray(segment_positions(batch["padding_mask"]))

    def logits() -> np.ndarray:
        backbone.predict_function = None  # trace again after a switch
        return np.asarray(backbone.token_embedding(backbone.predict_on_batch(batch), reverse=True))

    enable_segment_attention(backbone)
    ours = logits()
    disable_segment_attention(backbone)
    theirs = logits()
    assert b_diff(ours, docs) <= TOL < b_diff(theirs, docs)


def test_refuses_a_keras_hub_whose_decoder_api_changed(tiny_gemma3):
    """What an upgrade that renames the hooked mask method's arguments looks like: one line."""
    import keras_hub

    from gemma_cli.engine.patches.segments import enable_segment_attention
    from gemma_cli.errors import RuntimeFailure

    backbone = keras_hub.models.Backbone.from_preset(str(tiny_gemma3))
    block = backbone.transformer_layers[1]
    original = type(block)

    class Renamed(original):
        def _compute_attention_mask(self, x, attention_padding_mask, vision_mask, kv_cache, cache_update_index):
            return original._compute_attention_mask(self, x, attention_padding_mask, vision_mask, kv_cache, cache_update_index)

    block.__class__ = Renamed
    with pytest.raises(RuntimeFailure, match=r"changed the decoder API.*_compute_attention_mask\(padding_mask, cache"):
        enable_segment_attention(backbone)
    assert type(backbone.transformer_layers[0]) is original  # nothing half-changed


def test_refuses_an_unsupported_backbone():
    import keras_hub

    from gemma_cli.engine.patches.segments import enable_segment_attention
    from gemma_cli.errors import UsageError

    gpt2 = keras_hub.models.GPT2Backbone(
        vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16
    )
    with pytest.raises(UsageError, match="segment attention: GPT2Backbone"):
        enable_segment_attention(gpt2)


# --------------------------------------------------------------------------- real 270M ---
@pytest.mark.real
def test_real_gemma3_270m_packed_document_equals_alone(tmp_path):
    from real_fixtures import real_preset_dir

    preset = real_preset_dir()
    from gemma_cli.engine.patches.segments import enable_segment_attention

    lm, distribution = prepared(tmp_path, preset, lora=None)
    import keras_hub

    tok = keras_hub.tokenizers.Tokenizer.from_preset(str(preset))
    texts = ["The capital of France is Paris, a city on the Seine.",
             "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
             "def add(a, b):\n    return a + b"]
    docs = [np.array([tok.start_token_id, *np.asarray(tok(t)).tolist(), tok.end_token_id], "int32") for t in texts]
    batch = packed_pair(docs, width=sum(map(len, docs)) + 8)
    with distribution.scope():
        enable_segment_attention(lm.backbone)
        logits = np.asarray(lm.predict_on_batch(batch))
    diff = b_diff(logits, docs)
    print(f"real 270M: max |B packed - B alone| = {diff:.3g} over logits spanning ±{np.abs(logits).max():.1f}")
    assert diff <= TOL
