"""`train.remat: blocks` and `train.loss_chunk`: the same loss and gradients, less memory (issue #13).

Tiny float32 models of every family; the loss and its gradients are those of keras' own train
step (`compute_loss_and_updates`, what `fit` differentiates) on one batch whose sample weights
hold zeros (as prompt masking makes them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gemma_cli.cli import app

B, S = 4, 16


def _batch(vocab: int = 128) -> tuple[dict[str, Any], Any, Any]:
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, vocab, (B, S)).astype("int32"), "padding_mask": np.ones((B, S), bool)}
    y = rng.integers(0, vocab, (B, S)).astype("int32")
    sw = (rng.random((B, S)) > 0.3).astype("float32")
    sw[:, :5] = 0.0  # a masked prompt
    return x, y, sw


def _build(family: str, presets: dict[str, Path], remat: str, lora: int) -> Any:
    """A compiled float32 CausalLM of `family` (from its tiny preset on disk when there is one)."""
    import keras
    import keras_hub

    from gemma_cli.engine import families
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.patches import remat as rematlib

    keras.utils.set_random_seed(0)
    if family in presets:
        lm = model.load_causal_lm(str(presets[family]), "float32", remat=remat)
        lm.preprocessor = None
    else:  # no tiny tokenizer for this family: the backbone from its tiny config
        fam, cfg = families.tiny_config(family)
        backbone_cls = getattr(keras_hub.models, fam.backbone_class)
        task_cls = getattr(keras_hub.models, fam.backbone_class.replace("Backbone", "CausalLM"))
        lm = rematlib.build(
            remat,
            fam.serialized(cfg),
            lambda: task_cls(backbone=backbone_cls(**cfg, vocabulary_size=128, dtype="float32"), preprocessor=None),
        )
    if lora:
        keras.utils.set_random_seed(1)
        lm.backbone.enable_lora(lora)
    lm.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    lm.optimizer.build(lm.trainable_variables)
    return lm


def _loss_and_grads(lm: Any) -> tuple[float, list[Any], Any]:
    """keras' training loss and its gradients for the fixed batch, and the jaxpr of that step."""
    import jax

    x, y, sw = _batch()
    lm._symbolic_build(data_batch=(x, y, sw))  # noqa: SLF001
    tv = [v.value for v in lm.trainable_variables]
    ntv = [v.value for v in lm.non_trainable_variables]
    mv = [v.value for v in lm.metrics_variables]
    ov = [v.value for v in lm.optimizer.variables]
    grad = jax.value_and_grad(lm.compute_loss_and_updates, has_aux=True)

    def step(tv: Any) -> Any:
        (loss, _), g = grad(tv, ntv, mv, x, y, sw, training=True, optimizer_variables=ov)
        return loss, g

    loss, g = jax.jit(step)(tv)
    return float(loss), [np.asarray(a) for a in g], jax.make_jaxpr(step)(tv)


def _count(jaxpr: Any, names: set[str]) -> int:
    """Equations of these primitives in a jaxpr, nested jaxprs included."""
    from jax.extend import core

    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name in names
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                if isinstance(sub, core.ClosedJaxpr):
                    n += _count(sub.jaxpr, names)
                elif isinstance(sub, core.Jaxpr):
                    n += _count(sub, names)
    return n


REMAT = {"checkpoint", "remat", "remat2"}


def _close(a: tuple[float, list[Any], Any], b: tuple[float, list[Any], Any]) -> None:
    assert abs(a[0] - b[0]) <= 1e-5, (a[0], b[0])
    assert len(a[1]) == len(b[1])
    for ga, gb in zip(a[1], b[1], strict=True):
        np.testing.assert_allclose(ga, gb, atol=1e-5, rtol=1e-4)


# every family (gemma: Gemma 1/2, gemma3, llama3), LoRA and full fine-tunes; not every pair:
# each case compiles two train steps. gemma2 soft-caps its logits, llama3's head is untied.
CASES = [("gemma3", 0), ("gemma3", 2), ("gemma2", 0), ("llama3", 0)]
CHUNK_CASES = [("gemma3", 2), ("gemma2", 0), ("llama3", 2)]


@pytest.mark.parametrize(("family", "lora"), CASES, ids=[f"{f}-{'lora' if r else 'full'}" for f, r in CASES])
def test_remat_blocks_same_loss_and_gradients(tiny_presets: dict[str, Path], family: str, lora: int) -> None:
    from gemma_cli.engine import families
    from gemma_cli.engine.patches import remat

    plain = _build(family, tiny_presets, "none", lora)
    rematted = _build(family, tiny_presets, "blocks", lora)
    fam = families.tiny_config(family)[0]
    assert remat.active_blocks(plain) == []
    assert remat.active_blocks(rematted) == fam.block_names(2)  # every decoder block, by its real name
    a, b = _loss_and_grads(plain), _loss_and_grads(rematted)
    # the train step really rematerialises: one checkpoint per block in the jaxpr, none without
    assert _count(a[2].jaxpr, REMAT) == 0 and _count(b[2].jaxpr, REMAT) == 2
    _close(a, b)


@pytest.mark.parametrize(("family", "lora"), CHUNK_CASES, ids=[f"{f}-{'lora' if r else 'full'}" for f, r in CHUNK_CASES])
def test_chunked_loss_same_loss_gradients_and_accuracy(tiny_presets: dict[str, Path], family: str, lora: int) -> None:
    """gemma2 soft-caps its logits; llama3 has an untied output head; 5 does not divide 16."""
    from gemma_cli.engine.objectives.cross_entropy import CrossEntropy
    from gemma_cli.engine.patches import objective as objective_patch

    lm = _build(family, tiny_presets, "none", lora)
    x, y, sw = _batch()
    evaluate = family == "gemma3" and lora  # one case checks evaluate() too (two more compiles)
    plain = _loss_and_grads(lm)
    ev_plain = lm.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True) if evaluate else None
    objective_patch.install(lm, CrossEntropy(chunk=5))
    assert objective_patch.installed(lm).chunk == 5
    chunked = _loss_and_grads(lm)
    _close(plain, chunked)
    # the chunked step is a scan over ceil(16 / 5) = 4 chunks of the head, not one [B, S, V] matmul
    assert _count(chunked[2].jaxpr, {"scan"}) >= 1 and _count(plain[2].jaxpr, {"scan"}) == 0
    if evaluate:
        ev_chunked = lm.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True)
        assert ev_chunked["loss"] == pytest.approx(ev_plain["loss"], abs=1e-5)
        acc = "sparse_categorical_accuracy"
        assert ev_chunked[acc] == pytest.approx(ev_plain[acc], abs=1e-6) and ev_plain[acc] > 0
    objective_patch.uninstall(lm)
    assert objective_patch.installed(lm) is None and "call" not in lm.__dict__


def test_loss_chunk_auto() -> None:
    from gemma_cli.engine.objectives.cross_entropy import resolve_chunk

    # Gemma 3's vocabulary at 8 x 512 per device: 4 GiB of float32 logits → 32-position chunks (256 MiB)
    assert resolve_chunk("auto", 262144, 8, 512) == 32
    assert resolve_chunk("auto", 262144, 1, 1024) is None  # 1 GiB: the plain loss
    assert resolve_chunk("auto", 128, 4, 16) is None
    assert resolve_chunk("none", 262144, 8, 512) is None
    assert resolve_chunk(128, 262144, 8, 512) == 128
    assert resolve_chunk(512, 262144, 8, 512) is None  # one chunk is the plain loss


def test_finetune_with_remat_and_chunks_and_generation_without_remat(tmp_path: Path, tiny_gemma3: Path) -> None:
    from tiny import CORPUS

    from gemma_cli.config import load_config
    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.model import checkpoint
    from gemma_cli.engine.patches import remat
    from gemma_cli.engine.sample.generate import Generator

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for _ in range(8) for t in CORPUS[:6]))
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"preset": str(tiny_gemma3), "precision": "float32", "lora": {"rank": 2}},
        "mesh": {"shape": [2, 4]},
        "layout": "fsdp",
        "data": {"paths": [str(data)], "sequence_length": 16, "batch_size": 4, "eval_holdout": 8},
        "train": {"max_steps": 3, "output_dir": str(tmp_path / "out"), "remat": "blocks", "loss_chunk": 5, "log_every": 1},
    }))  # fmt: skip
    r = CliRunner().invoke(app, ["finetune", str(cfg_path), "--json"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    s = json.loads(r.stdout)
    assert math.isfinite(s["final_loss"]) and s["steps"] == 3
    assert all(0.0 <= e["eval_accuracy"] <= 1.0 for e in s["evals"])  # fed by the chunks' argmax
    # generation from the run builds its model without the remat scope
    cfg = load_config(str(cfg_path))
    gen = Generator(cfg, NullReporter(), checkpoint.latest(tmp_path / "out"))
    assert remat.active_blocks(gen.lm) == []
