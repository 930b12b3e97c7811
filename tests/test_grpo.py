"""`train.method: grpo` (issue #25): the loss against TRL's, and learning on a tiny model.

- For fixed per-token log-probabilities, masks and advantages, our loss of each `loss` type,
  with clipping (clip-higher included) and the k3 KL, equals TRL's `GRPOTrainer._compute_loss`
  run on the same tensors (its own code, fed through its per-token-logps hook), and so do the
  clip shares and the KL it logs; the advantages equal TRL's formula with its `nanstd`.
- A tiny random Gemma 3 learns a reward it can learn (more vowels) in 30 steps: the rollouts'
  mean reward and the greedy answers to held-out prompts score ≥ 0.3 higher,
  sampling from the live policy under the (2, 4) mesh; every metric reaches metrics.jsonl and
  the summary; resume from a checkpoint reaches the same weights as the uninterrupted run;
  with LoRA and beta > 0 the KL to the adapters-off reference starts at 0 and grows.
- Bad input exits 2 before the model loads.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
from test_finetune import assert_one_error_line, gemma
from tiny import CORPUS

B, S, G = 8, 6, 4


def _fixed(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logp = rng.normal(-2.0, 0.5, (B, S)).astype(np.float32)
    return {
        "logp": logp,
        "old": (logp + rng.normal(0, 0.3, (B, S))).astype(np.float32),  # ratios well outside 1 ± 0.2
        "ref": (logp + rng.normal(0, 0.4, (B, S))).astype(np.float32),
        "mask": (rng.random((B, S)) > 0.25).astype(np.float32),
        "adv": rng.normal(0, 1, (B,)).astype(np.float32),
    }


def _trl_loss(t: dict[str, np.ndarray], loss: str, eps: float, eps_high: float, beta: float, max_len: int):
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    T = trl.GRPOTrainer
    tr = object.__new__(T)
    logp = torch.tensor(t["logp"], requires_grad=True)
    one = SimpleNamespace(num_processes=1, sync_gradients=True, reduce=lambda x, reduction="sum": x,
                          gather=lambda x: x, gather_for_metrics=lambda x: x)
    attrs = dict(
        loss_type=loss, epsilon_low=eps, epsilon_high=eps_high, beta=beta, importance_sampling_level="token",
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, max_completion_length=max_len, current_gradient_accumulation_steps=1,
        accelerator=one, model=SimpleNamespace(training=True), _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
    )
    for k, v in attrs.items():
        object.__setattr__(tr, k, v)
    object.__setattr__(tr, "_get_per_token_logps_and_entropies",
                       lambda *a, **k: (logp, torch.zeros_like(logp), None))
    mask = torch.tensor(t["mask"])
    inputs = {
        "prompt_ids": torch.zeros((B, 1), dtype=torch.long), "prompt_mask": torch.ones((B, 1), dtype=torch.long),
        "completion_ids": torch.zeros((B, S), dtype=torch.long), "completion_mask": mask,
        "advantages": torch.tensor(t["adv"]), "old_per_token_logps": torch.tensor(t["old"]),
        "ref_per_token_logps": torch.tensor(t["ref"]), "num_items_in_batch": mask.sum(),
    }
    out = T._compute_loss(tr, None, inputs)
    out.backward()
    return float(out.detach()), logp.grad.numpy(), {k: v[-1] for k, v in tr._metrics["train"].items()}


@pytest.mark.parametrize("loss", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta, eps_high", [(0.0, 0.2), (0.04, 0.28)], ids=["no_kl", "kl_clip_higher"])
def test_loss_clipping_and_kl_equal_trl(loss: str, beta: float, eps_high: float) -> None:
    import jax
    import jax.numpy as jnp

    from gemma_cli.engine.objectives.grpo import policy_loss

    t = _fixed()
    want, want_grad, logged = _trl_loss(t, loss, 0.2, eps_high, beta, S + 2)

    def ours(logp):
        return policy_loss(logp, jnp.asarray(t["old"]), jnp.asarray(t["ref"]), jnp.asarray(t["adv"]),
                           jnp.asarray(t["mask"]), loss=loss, epsilon=0.2, epsilon_high=eps_high, beta=beta,
                           max_completion_length=S + 2)

    (got, stats), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(t["logp"]))
    assert abs(float(got) - want) <= 1e-5 * max(1.0, abs(want)), (float(got), want)
    np.testing.assert_allclose(np.asarray(grad), want_grad, atol=1e-6)
    assert float(stats["clip_low"]) == pytest.approx(logged["clip_ratio/low_mean"], abs=1e-6)
    assert float(stats["clip_high"]) == pytest.approx(logged["clip_ratio/high_mean"], abs=1e-6)
    assert float(stats["clip_region"]) == pytest.approx(logged["clip_ratio/region_mean"], abs=1e-6)
    assert 0 < float(stats["clip_region"]) < 1  # the tensors exercise clipping on both sides
    if beta:
        assert float(stats["kl"]) == pytest.approx(logged["kl"], rel=1e-5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trl(scale: str) -> None:
    torch = pytest.importorskip("torch")
    from trl.trainer.utils import nanstd

    from gemma_cli.engine.objectives.grpo import advantages

    r = np.random.default_rng(1).random(4 * G).astype(np.float32)
    r[:G] = 0.5  # a group whose rewards do not differ
    rt = torch.tensor(r)
    mean = rt.view(-1, G).nanmean(dim=1).repeat_interleave(G)
    std = nanstd(rt) .expand_as(rt) if scale == "batch" else nanstd(rt.view(-1, G), dim=1).repeat_interleave(G)
    want = rt - mean
    if scale != "none":
        want = want / (std + 1e-4)
    got, zero = advantages(r, G, scale)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    if scale != "batch":
        assert zero[:G].all() and not zero[G:].any()


def test_completion_window_equals_the_whole_sequence(tiny_gemma3) -> None:
    """The head on each row's completion window only (`completion_start`) gives the loss, its
    gradient and every metric of the head on the whole sequence, rows with different prompt
    lengths and a window that runs past the end included."""
    import jax
    import jax.numpy as jnp
    import keras_hub

    from gemma_cli.engine.objectives.grpo import GRPO

    lm = keras_hub.models.CausalLM.from_preset(str(tiny_gemma3))
    rng = np.random.default_rng(0)
    rows, seq, width = 4, 12, 5
    starts = np.array([2, 5, 8, 9], dtype="int32")  # the last window reaches past position 11
    ids = rng.integers(3, 100, (rows, seq)).astype("int32")
    w = np.zeros((rows, seq), "float32")
    for r, st in enumerate(starts):
        w[r, st: min(st + width, seq)] = 1.0  # row 3: positions 9..11, its window 9..13 clamps
    y = np.concatenate([ids[:, 1:], np.zeros((rows, 1), "int32")], axis=1)
    x = {"token_ids": ids, "padding_mask": np.ones((rows, seq), bool), "advantages": rng.normal(0, 1, rows).astype("float32"),
         "old_logps": rng.normal(-4, 0.3, (rows, seq)).astype("float32")}
    obj = GRPO(loss="grpo", max_completion_length=width, temperature=0.7, chunk=4)

    bb = lm.backbone
    ntv = [v.value for v in bb.non_trainable_variables]

    @jax.jit
    def run(tv, xx):
        def loss(tv):
            hidden, _ = bb.stateless_call(tv, ntv, {"token_ids": xx["token_ids"], "padding_mask": xx["padding_mask"]})
            out = obj.compute(lm, xx, jnp.asarray(y), hidden, jnp.asarray(w), True)
            return out.loss, out.metrics

        return jax.value_and_grad(loss, has_aux=True)(tv)

    tv = [v.value for v in bb.trainable_variables]
    (l_full, m_full), g_full = run(tv, x)
    (l_win, m_win), g_win = run(tv, {**x, "completion_start": starts})
    assert float(l_full) == pytest.approx(float(l_win), rel=1e-5, abs=1e-6) and float(l_full) != 0.0
    for k in m_full:
        assert float(m_full[k]) == pytest.approx(float(m_win[k]), rel=1e-5, abs=1e-6), k
    for a_, b_ in zip(g_full, g_win, strict=True):
        np.testing.assert_allclose(np.asarray(a_), np.asarray(b_), rtol=1e-4, atol=1e-6)
    full = (l_full, {k: float(v) for k, v in m_full.items()})
    assert full[1]["clip_region"] > 0  # the old log-probs put ratios outside the clip range


def test_rollout_stops_after_the_completion_length(tiny_gemma3) -> None:
    """`limit_new_tokens`: the sampler's loop ends when the longest prompt has C new tokens —
    each row's first C tokens are those of the loop run to the end of the buffer (same seed),
    and the buffer past the longest prompt + C stays padding."""
    import keras_hub

    from gemma_cli.engine.sample.sampler import limit_new_tokens
    from gemma_cli.engine.train.grpo import Rollout

    lm = keras_hub.models.CausalLM.from_preset(str(tiny_gemma3))
    seq, C, pad = 24, 4, 0
    prompts = [[2, 10, 11], [2, 12, 13, 14, 15, 16], [2, 17]]
    out = {}
    for limited in (False, True):
        s = keras_hub.samplers.RandomSampler(seed=0)
        lm.sampler, lm.generate_function = (limit_new_tokens(s, C) if limited else s), None
        out[limited] = Rollout(lm, seq, None, pad, lm.sampler)(prompts, (0, 7))  # no stop token
    longest = max(len(p) for p in prompts)
    for r, p in enumerate(prompts):
        np.testing.assert_array_equal(out[True][r, : len(p) + C], out[False][r, : len(p) + C])
    assert (out[True][:, longest + C:] == pad).all()
    assert (out[False][:, longest + C:] != pad).any()  # the unlimited loop ran to the end


# ---------------------------------------------------------------- tiny model, end to end ---
VOWELS = '''
def vowels(prompts, completions, **kwargs):
    """The share of vowels among a completion's letters (0 when it has none)."""
    out = []
    for c in completions:
        letters = [ch for ch in c.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out
'''


def grpo_config(tmp: Path, preset: Path, *, steps: int = 30, out: str = "out", lora: int | None = None,
                lr: float = 2e-2, **grpo: Any) -> Path:
    prompts = tmp / "prompts.jsonl"
    words = " ".join(CORPUS).split()
    prompts.write_text("".join(json.dumps({"prompt": " ".join(words[i: i + 2]), "n": i}) + "\n" for i in range(0, 40, 2)))
    (tmp / "rewards.py").write_text(VOWELS)
    model: dict[str, Any] = {"preset": str(preset), "precision": "float32"}
    if lora:
        model["lora"] = {"rank": lora}
    cfg = {
        "model": model,
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "layout": {"indivisible": "replicate"},
        "data": {"paths": [str(prompts)], "sequence_length": 24, "batch_size": 2, "eval_holdout": 4},
        "optimizer": {"name": "adamw", "learning_rate": lr, "schedule": "constant", "warmup_steps": 0},
        "train": {"method": "grpo", "max_steps": steps, "output_dir": str(tmp / out), "log_every": 5,
                  "eval_every": steps, "checkpoint_every": 10},
        "grpo": {"rewards": [f"{tmp / 'rewards.py'}:vowels"], "num_generations": 8, "max_completion_length": 8,
                 **grpo},
    }
    p = tmp / f"{out}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_gemma3) -> dict[str, Any]:
    """30 steps of GRPO, a full fine-tune of the tiny Gemma 3 (measured on seeds 0 and 1: the
    rollouts' mean reward 0.36 → 1.0 by step 20; LoRA on this random model learns the same
    reward more slowly and noisily: 0.35 → 0.44 in 30 steps)."""
    tmp = tmp_path_factory.mktemp("grpo")
    cfg = grpo_config(tmp, tiny_gemma3)
    r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, (r.stderr[-3000:], r.exception)
    return {"summary": json.loads(r.stdout), "out": tmp / "out", "tmp": tmp, "cfg": cfg, "stderr": r.stderr}


def test_reward_rises_and_metrics_are_written(grpo_run) -> None:
    out = grpo_run["out"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "reward" in x and "loss" in x]
    assert [x["step"] for x in train] == [5, 10, 15, 20, 25, 30]
    rewards = [x["reward"] for x in train]
    assert rewards[-1] >= rewards[0] + 0.3, rewards
    evals = [x for x in lines if "eval_reward" in x]
    assert [x["step"] for x in evals] == [0, 30]
    assert evals[-1]["eval_reward"] >= evals[0]["eval_reward"] + 0.3, evals  # greedy, held-out prompts
    for key in ("reward_std", "reward_vowels", "completion_length", "completion_length_max", "truncated",
                "zero_std_groups", "time_rollout", "time_update", "rollout_tokens_per_second", "entropy",
                "clip_region", "kl"):
        assert key in train[-1], key
    assert train[-1]["reward_vowels"] == pytest.approx(train[-1]["reward"], abs=1e-6)  # one reward, weight 1
    for x in train:  # per-window means of per-step values (keras' metrics are reset by each update)
        assert x["entropy"] > 0 and x["kl"] == 0, x
        assert all(0 <= x[k] <= 1 for k in ("clip_low", "clip_high", "clip_region", "truncated", "zero_std_groups")), x
    assert 0 < train[-1]["completion_length"] <= 8
    s = grpo_run["summary"]
    assert s["final_metrics"]["reward"] == pytest.approx(rewards[-1], abs=1e-6)
    assert (out / "checkpoints" / "step_00000030").is_dir()
    assert "reward" in grpo_run["stderr"] and "eval at step 30" in grpo_run["stderr"]  # the progress lines


def test_live_greedy_samples_equal_generate_from_the_checkpoint(grpo_run) -> None:
    """The eval at step 30 sampled greedily from the live policy; `gemma generate` of the step-30
    checkpoint continues each prompt the same way (the eval cut its completions at
    max_completion_length)."""
    samples = [json.loads(x) for x in (grpo_run["out"] / "samples" / "eval_step_00000030.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all("reward_vowels" in x for x in samples)
    args = ["generate", grpo_run["out"] / "checkpoints" / "step_00000030", "--jsonl", "--sampler", "greedy",
            "--max-length", 24, "--batch-size", 4]
    for x in samples:
        args += ["-p", x["prompt"]]
    r = gemma(*args)
    assert r.exit_code == 0, r.stderr[-2000:]
    generated = [json.loads(x)["completion"] for x in r.stdout.splitlines()]
    for x, g in zip(samples, generated, strict=True):
        assert g.startswith(x["completion"]), (x, g)
    assert any(x["completion"] for x in samples)
    assert json.loads((grpo_run["out"] / "summary.json").read_text())["data"]["truncated"] == 0  # no prompt was cut


def _weights(ckpt: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    for f in sorted(ckpt.rglob("*.h5")):
        with h5py.File(f, "r") as h:
            h.visititems(lambda n, o, name=f.name: out.__setitem__(f"{name}/{n}", np.array(o))
                         if isinstance(o, h5py.Dataset) else None)
    return out


def test_resume_reaches_the_same_weights(grpo_run, tiny_gemma3) -> None:
    """A run stopped at its step-20 checkpoint and resumed equals the uninterrupted run: the
    prompts and the sampling seed of a step depend only on seed and step."""
    import shutil

    tmp = grpo_run["tmp"]
    first = tmp / "resumed"
    shutil.copytree(grpo_run["out"], first)
    ck = first / "checkpoints"
    for p in ck.glob("step_*"):
        if p.name != "step_00000020":
            shutil.rmtree(p)
    (ck / "latest").write_text("step_00000020\n")
    lines = (first / "metrics.jsonl").read_text().splitlines()
    (first / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= 20))
    cfg = grpo_config(tmp, tiny_gemma3, out="resumed")
    r = gemma("finetune", cfg, "--resume", "--json")
    assert r.exit_code == 0, r.stderr[-3000:]
    a = _weights(grpo_run["out"] / "checkpoints" / "step_00000030")
    b = _weights(first / "checkpoints" / "step_00000030")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)


def test_lora_with_kl_to_the_adapters_off_reference(tmp_path, tiny_gemma3) -> None:
    """beta > 0 with LoRA: the reference is the same model with its adapters off, in the step.
    At the first update the policy is the reference (LoRA B starts at 0): KL 0; it grows as the
    adapters move."""
    cfg = grpo_config(tmp_path, tiny_gemma3, steps=6, lora=4, lr=5e-2, beta=0.04, loss="grpo")
    c = yaml.safe_load(cfg.read_text())
    c["train"].update(log_every=1, eval_every=None, checkpoint_every=None)
    c["data"].pop("eval_holdout")
    cfg.write_text(yaml.safe_dump(c, sort_keys=False))
    r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, r.stderr[-3000:]
    kl = [json.loads(x)["kl"] for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(kl) == 6 and kl[0] == pytest.approx(0.0, abs=1e-7)
    assert kl[-1] > 1e-6 and all(np.isfinite(kl)), kl


@pytest.mark.parametrize(
    "change, words",
    [
        ({"grpo": {"num_generations": 1}}, ["grpo.num_generations", "greater than or equal to 2"]),
        ({"grpo": {"rewards": ["nope.py:f"]}}, ["grpo.rewards[0]", "no such file"]),
        ({"grpo": {"rewards": ["REWARDS:missing"]}}, ["has no function missing"]),
        ({"data": {"batch_size": 1}, "grpo": {"num_generations": 3}},
         ["batch_size × grpo.num_generations = 1 × 3 = 3 sequences", "multiple of 2"]),
        ({"grpo": {"max_completion_length": 24}}, ["grpo.max_completion_length", "no room for a prompt"]),
        ({"data": {"packing": True}}, ["data.packing", "grpo"]),
        ({"prompts": '{"question": "hi"}\n'}, ["prompts.jsonl:1", "no 'prompt' field"]),
        ({"grpo": None}, ["train.method: grpo needs a grpo: section"]),
    ],
)
def test_bad_grpo_input_exits_2_before_loading(tmp_path, tiny_gemma3, change, words) -> None:
    p = grpo_config(tmp_path, tiny_gemma3)
    cfg = yaml.safe_load(p.read_text())
    if "prompts" in change:
        (tmp_path / "prompts.jsonl").write_text(change["prompts"])
    for section in ("grpo", "data"):
        if section in change:
            if change[section] is None:
                cfg.pop(section)
            else:
                for k, v in change[section].items():
                    cfg[section][k] = [x.replace("REWARDS", str(tmp_path / "rewards.py")) for x in v] if k == "rewards" else v
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    line = assert_one_error_line(gemma("finetune", p), 2)
    for w in words:
        assert w in line, line


# ---------------------------------------------------------------- two processes over gloo ---
@pytest.mark.multihost
def test_two_processes_train_like_one(tmp_path, tiny_gemma3, monkeypatch) -> None:
    """GRPO on 2 processes × 4 CPU devices over Gloo equals the 1-process run on 8 devices: each
    process samples the global batch under the one mesh, scores only its own groups (a group of
    G never spans processes), the scores are shared, and both processes train their rows of one
    global step — the same rewards per step and the same adapters."""
    from test_multihost import launch

    steps = 4
    mh = grpo_config(tmp_path, tiny_gemma3, steps=steps, out="mh", lora=4, lr=1e-2)
    res = launch([sys.executable, "-m", "gemma_cli", "finetune", str(mh), "--json"],
                 [tmp_path / "p0", tmp_path / "p1"])
    for r in res:
        assert r["rc"] == 0, r["stderr"][-3000:]
    s0, s1 = (json.loads(r["stdout"]) for r in res)
    assert s0["final_metrics"]["reward"] == pytest.approx(s1["final_metrics"]["reward"], abs=1e-6)
    monkeypatch.chdir(tmp_path)
    one = grpo_config(tmp_path, tiny_gemma3, steps=steps, out="single", lora=4, lr=1e-2)
    r = gemma("finetune", one, "--json")
    assert r.exit_code == 0, r.stderr[-3000:]

    def rows(out: str) -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return [x for x in lines if "reward" in x and "loss" in x]

    a, b = rows("mh"), rows("single")
    assert [x["step"] for x in a] == [x["step"] for x in b] and a
    for x, y in zip(a, b, strict=True):
        for k in ("reward", "reward_std", "completion_length", "zero_std_groups", "entropy", "loss"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), (k, x, y)
    wa = _weights(tmp_path / "mh" / "checkpoints" / f"step_{steps:08d}")
    wb = _weights(tmp_path / "single" / "checkpoints" / f"step_{steps:08d}")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], atol=1e-4, err_msg=k)
