"""The rooms post-training methods land in (issue #22): recipes, objectives and their metrics
dict, the live sampler, and the adapters-off reference.

- An objective's auxiliary metrics reach every place the loss reaches, by name, with no hook
  knowing them: metrics.jsonl, TensorBoard, the progress line, the eval results, summary.json
  and `gemma runs show`. The test objective reports the loss a second time (`loss_copy`), so
  each place must show it equal to the loss, averaged the same way.
- The live sampler reads the weights being trained: greedy completions sampled inside the
  training loop at a checkpoint's step equal `gemma generate` of that checkpoint.
- `adapters_off` gives the base model's logits from a LoRA model, inside one jitted function
  that also computes the adapted logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_finetune import config, gemma

PROMPTS = ["the cat", "a dog sat", "the bird"]
STEPS, CKPT = 6, 3


def _recipe_classes() -> tuple[type, type]:
    import keras

    from gemma_cli.engine.objectives import Output
    from gemma_cli.engine.objectives.cross_entropy import CrossEntropy
    from gemma_cli.engine.train.sft import SFTRecipe

    class EchoCE(CrossEntropy):
        """Cross-entropy that also reports the loss again, and the share of trained tokens."""

        metric_names = ("loss_copy", "target_share")

        def compute(self, model, x, y, y_pred, sample_weight, training):
            out = super().compute(model, x, y, y_pred, sample_weight, training)
            w = keras.ops.cast(sample_weight, "float32")
            share = keras.ops.sum(w) / keras.ops.cast(keras.ops.size(w), "float32")
            return Output(out.loss, {"loss_copy": out.loss, "target_share": share}, out.matches)

    class LiveSample(keras.callbacks.Callback):
        """Greedy completions from the live policy at step CKPT, mid-training."""

        def __init__(self, recipe: Any, seen: dict[str, Any]):
            super().__init__()
            self.recipe, self.seen = recipe, seen

        def on_train_batch_end(self, batch, logs=None):
            if self.recipe.state.step != CKPT:
                return
            from gemma_cli.engine.sample.sampler import Sampler

            m = self.recipe.model
            m.causal_lm.jax_state_sync()  # keras keeps the training state outside the variables
            sampler = Sampler(m.causal_lm, m.distribution, self.recipe.cfg.generate,
                              batch_axis=m.batch_axis_size, batch_size=len(PROMPTS))
            self.seen["live"] = [r["completion"] for r in sampler(PROMPTS, max_length=12)]

    class Probe(SFTRecipe):
        seen: dict[str, Any] = {}

        def objective(self):
            base = super().objective()
            return EchoCE(chunk=base.chunk)

        def setup_hooks(self):
            hooks = super().setup_hooks()
            # after the tracker (which counts the step), before the checkpoint
            return [*hooks[:1], LiveSample(self, self.seen), *hooks[1:]]

    return Probe, EchoCE


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, tiny_presets) -> dict[str, Any]:
    from gemma_cli.commands.common import make_output
    from gemma_cli.config import load_config
    from gemma_cli.engine.core import runtime

    tmp = tmp_path_factory.mktemp("probe")
    cfg_path = config(
        tmp, tiny_presets["gemma3"], mesh=[2, 4], layout={"indivisible": "replicate"},
        data={"eval_holdout": 8},
        train={"max_steps": STEPS, "checkpoint_every": CKPT, "eval_every": CKPT, "log_every": CKPT},
    )
    runtime.setup()
    Probe, _ = _recipe_classes()
    Probe.seen = {}
    cfg = load_config(str(cfg_path), ["generate.sampler=greedy"])
    summary = Probe(cfg, make_output(False, False, False)).run()
    return {"summary": summary, "out": tmp / "out", "seen": Probe.seen, "cfg": cfg_path}


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_aux_metrics_reach_metrics_jsonl_eval_and_summary(probe_run):
    lines = _lines(probe_run["out"])
    train = [ln for ln in lines if "loss" in ln]
    assert [ln["step"] for ln in train] == [CKPT, STEPS]
    for ln in train:
        assert ln["loss_copy"] == pytest.approx(ln["loss"], rel=1e-5)
        assert 0 < ln["target_share"] <= 1
    evals = [ln for ln in lines if "eval_loss" in ln]
    assert [ln["step"] for ln in evals] == [0, CKPT, STEPS]
    for ln in evals:
        assert ln["eval_loss_copy"] == pytest.approx(ln["eval_loss"], rel=1e-5)
        assert 0 < ln["eval_target_share"] <= 1
    s = probe_run["summary"]
    assert s["final_metrics"]["loss_copy"] == pytest.approx(s["final_loss"], rel=1e-5)
    assert set(s["final_metrics"]) == {"loss_copy", "target_share"}  # the loss is final_loss
    assert json.loads((probe_run["out"] / "summary.json").read_text())["final_metrics"] == s["final_metrics"]


def test_aux_metrics_reach_tensorboard(probe_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for d in {p.parent for p in (probe_run["out"] / "tensorboard").rglob("events.out.tfevents.*")}:
        acc = EventAccumulator(str(d))
        acc.Reload()
        tags |= set(acc.Tags().get("scalars", [])) | set(acc.Tags().get("tensors", []))
    assert {"train/loss_copy", "train/target_share", "eval/loss_copy", "eval/target_share"} <= tags, tags


def test_aux_metrics_reach_runs_show(probe_run):
    r = gemma("runs", "show", probe_run["out"], "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    text = json.dumps(doc)
    assert "loss_copy" in text and "target_share" in text, doc


def test_progress_line_formats_aux_metrics():
    from gemma_cli.engine.train.hooks import format_metrics

    line = format_metrics({"loss": 1.5, "loss_copy": 1.5, "target_share": 0.25}, skip=("loss",))
    assert "loss_copy" in line and "target_share 0.25" in line and not line.startswith("loss ")


def test_live_sampling_equals_generate_from_the_checkpoint(probe_run):
    live = probe_run["seen"]["live"]
    ckpt = probe_run["out"] / "checkpoints" / f"step_{CKPT:08d}"
    assert ckpt.is_dir()
    args = ["generate", str(ckpt), "--jsonl", "--batch-size", len(PROMPTS), "--sampler", "greedy", "--max-length", 12]
    for p in PROMPTS:
        args += ["-p", p]
    r = gemma(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    from_ckpt = [json.loads(ln)["completion"] for ln in r.stdout.splitlines() if ln.strip()]
    assert from_ckpt == live
    assert any(c for c in live)  # something was generated


def test_adapters_off_is_the_base_model_inside_one_jit(tiny_presets):
    import jax
    import keras

    from gemma_cli.engine.core import runtime
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.model.lora import adapters_off, lora_layers

    runtime.setup()
    lm = model.load_causal_lm(str(tiny_presets["gemma3"]), "float32")
    bb = lm.backbone
    x = {"token_ids": np.array([[2, 5, 9, 11, 7, 3]], "int32"), "padding_mask": np.ones((1, 6), bool)}
    base = np.asarray(bb(x))
    bb.enable_lora(4)
    rng = np.random.default_rng(0)
    for layer in lora_layers(bb):
        layer.lora_kernel_b.assign(rng.normal(0, 0.5, layer.lora_kernel_b.shape).astype("float32"))

    state = [v.value for v in bb.trainable_variables], [v.value for v in bb.non_trainable_variables]

    @jax.jit
    def both(trainable, non_trainable, inputs):
        on, _ = bb.stateless_call(trainable, non_trainable, inputs)
        with adapters_off(lm):
            off, _ = bb.stateless_call(trainable, non_trainable, inputs)
        return on, off

    on, off = (np.asarray(a) for a in both(*state, x))
    assert np.abs(on - base).max() > 1e-2  # the adapters matter
    assert np.abs(off - base).max() <= 1e-5  # and switched off, the base model is back
    assert all(layer.lora_enabled for layer in lora_layers(bb))  # restored on exit
    assert keras.ops.convert_to_numpy(bb(x)).shape == base.shape


def test_methods_in_the_schema_are_the_recipes():
    from gemma_cli.config import METHODS
    from gemma_cli.engine.train import RECIPES, recipe_for

    assert list(METHODS) == list(RECIPES)
    for method in METHODS:
        cls = recipe_for(type("C", (), {"train": type("T", (), {"method": method})})())
        assert cls.method == method


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"train": {"method": "foo"}}, ["train.method", "'sft'", "'grpo'", "foo"]),
        ({"grpo": {"rewards": ["length:5"]}}, ["grpo", "belongs to train.method: grpo", "train.method: sft"]),
    ],
    ids=["unknown_method", "section_of_another_method"],
)
def test_method_errors_exit_2_in_config_validate(tmp_path, tiny_gemma3, extra, words):
    import yaml
    from test_finetune import assert_one_error_line

    p = config(tmp_path, tiny_gemma3)
    cfg = yaml.safe_load(p.read_text())
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for verb in (("config", "validate"), ("finetune",)):
        line = assert_one_error_line(gemma(*verb, p), 2)
        for w in words:
            assert w in line, (verb, line)
