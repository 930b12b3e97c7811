"""Preference tuning, `train.method: dpo` (issue #24).

- Each loss variant against TRL's own implementation (`trl` from PyPI) on fixed log-probs, to
  1e-5: sigmoid (with label smoothing), ipo, hinge and simpo through `CPOTrainer.cpo_loss`
  (which is DPO's formula when handed the policy/reference log-ratios), orpo through
  `ORPOTrainer.odds_ratio_loss`.
- Preference records in TRL's three forms; every bad record an exit 2 naming file:line before
  any model loads; the config's own refusals.
- Pairs stay whole: each stream's rows are chosen, rejected, chosen, rejected ..., on one
  process or two; a long prompt is cut from the left before the completion.
- A tiny LoRA DPO run (one module fixture) raises held-out preference accuracy; its reference
  is the base model (adapters off); a resumed run reaches the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_finetune import assert_one_error_line, config, gemma
from tiny import CORPUS

P = 6  # pairs in the fixed log-probs
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPOTrainer / ORPOTrainer live in trl.experimental


# ------------------------------------------------------------------------ losses vs TRL ---
def _logps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lens = rng.integers(3, 30, size=(2, P)).astype("float32")
    pol = -rng.uniform(0.2, 3.0, size=(2, P)).astype("float32") * lens
    ref = pol + rng.normal(0, 2.0, size=(2, P)).astype("float32")
    return {"c": pol[0], "r": pol[1], "rc": ref[0], "rr": ref[1], "nc": lens[0], "nr": lens[1]}


def _ours(loss: str, v: dict[str, np.ndarray], **kw: Any) -> tuple[np.ndarray, ...]:
    from gemma_cli.engine.objectives.preference import pair_losses

    out = pair_losses(loss, v["c"], v["r"], v["rc"], v["rr"], v["nc"], v["nr"], **kw)
    return tuple(np.asarray(a, dtype="float64") for a in out)


def _trl_cpo(loss: str, chosen: np.ndarray, rejected: np.ndarray, beta: float, ls: float = 0.0, gamma: float = 0.5):
    import torch
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    me = SimpleNamespace(alpha=0.0, beta=beta, label_smoothing=ls, loss_type=loss, simpo_gamma=gamma,
                         accelerator=SimpleNamespace(device="cpu"))
    out = CPOTrainer.cpo_loss(me, torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64))
    return tuple(a.numpy() for a in out)


@pytest.mark.parametrize("loss,beta,ls", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("hinge", 0.1, 0.0),
                                          ("hinge", 2.0, 0.0), ("ipo", 0.1, 0.0), ("ipo", 0.7, 0.0)])
def test_reference_losses_match_trl(loss, beta, ls):
    v = _logps()
    lc, lr = v["c"] - v["rc"], v["r"] - v["rr"]  # the log-ratios DPO feeds its loss
    if loss == "ipo":  # TRL's DPOTrainer averages IPO's log-ratios over the completion tokens
        lc, lr = lc / v["nc"], lr / v["nr"]
    want, _, _ = _trl_cpo(loss, lc.astype("float64"), lr.astype("float64"), beta, ls)
    got, rc, rr = _ours(loss, v, beta=beta, label_smoothing=ls)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rc, beta * (v["c"] - v["rc"]), rtol=1e-5, atol=1e-5)  # rewards/chosen
    np.testing.assert_allclose(rr, beta * (v["r"] - v["rr"]), rtol=1e-5, atol=1e-5)
    assert np.ptp(got) > 1e-3  # the pairs differ: a constant would not test the formula


@pytest.mark.parametrize("beta,gamma,ls", [(2.0, 0.5, 0.0), (0.5, 1.2, 0.1)])
def test_simpo_matches_trl(beta, gamma, ls):
    v = _logps()
    want, want_c, want_r = _trl_cpo("simpo", (v["c"] / v["nc"]).astype("float64"), (v["r"] / v["nr"]).astype("float64"),
                                    beta, ls, gamma)
    got, rc, rr = _ours("simpo", v, beta=beta, gamma=gamma, label_smoothing=ls)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rc, want_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rr, want_r, rtol=1e-5, atol=1e-5)


def test_orpo_matches_trl():
    import torch
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    v = _logps()
    lam = 0.3
    me = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device="cpu"))  # TRL's ORPO beta is the paper's λ
    avg_c, avg_r = (torch.tensor(v[k] / v[n], dtype=torch.float64) for k, n in (("c", "nc"), ("r", "nr")))
    losses, _, _, _, _ = ORPOTrainer.odds_ratio_loss(me, avg_c, avg_r)
    got, rc, _ = _ours("orpo", v, beta=0.1, lam=lam)
    # TRL: loss = nll - mean(losses); ours per pair: -λ·logσ(log odds) (the NLL is added over tokens)
    np.testing.assert_allclose(got, -losses.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rc, 0.1 * v["c"] / v["nc"], rtol=1e-5)


def test_sigmoid_is_the_dpo_formula():
    v = _logps()
    got, _, _ = _ours("sigmoid", v, beta=0.1)
    delta = (v["c"] - v["rc"]) - (v["r"] - v["rr"])
    np.testing.assert_allclose(got, np.log1p(np.exp(-0.1 * delta)), rtol=1e-5)


# ----------------------------------------------------------------------------- records ---
def _tok() -> Any:
    from tiny import tiny_proto

    return SimpleNamespace(proto=tiny_proto(), start_token_id=2, end_token_id=1, pad_token_id=0)


def _msgs(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in turns]


def _pairs(n: int, form: str = "standard", offset: int = 0) -> list[dict[str, Any]]:
    """n pairs: chosen answers from the first half of the corpus, rejected from the second."""
    out = []
    for i in range(n):
        prompt = CORPUS[(i + offset) % 8]
        good, bad = CORPUS[(i + offset) % 3], CORPUS[3 + (i + offset) % 3]
        if form == "standard":
            out.append({"prompt": prompt, "chosen": good, "rejected": bad})
        elif form == "conversational":
            out.append({"prompt": _msgs(("user", prompt)), "chosen": _msgs(("assistant", good)),
                        "rejected": _msgs(("assistant", bad))})
        else:
            out.append({"chosen": _msgs(("user", prompt), ("assistant", good)),
                        "rejected": _msgs(("user", prompt), ("assistant", bad))})
    return out


def _write(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _data_cfg(paths: list[Path], **kw: Any) -> Any:
    from gemma_cli.config import DataConfig

    return DataConfig(paths=[str(p) for p in paths], sequence_length=kw.pop("sequence_length", 32),
                      batch_size=kw.pop("batch_size", 4), shuffle=False, **kw)


@pytest.mark.parametrize("form", ["standard", "conversational", "implicit"])
def test_three_forms_render_the_same_rows(tmp_path, form):
    from gemma_cli.engine.data import pipeline

    src = _write(tmp_path / f"{form}.jsonl", _pairs(4, form))
    b = pipeline.build(_data_cfg([src]), _tok(), seed=0, method="dpo")
    assert b.info.kind == "preference"
    rows = b.peek
    std = pipeline.build(_data_cfg([_write(tmp_path / "s.jsonl", _pairs(4))]), _tok(), seed=0, method="dpo").peek
    np.testing.assert_array_equal(rows["token_ids"], std["token_ids"])  # the three forms say the same
    np.testing.assert_array_equal(rows["weights"], std["weights"])
    for i in range(0, 4, 2):  # rows 2i, 2i+1: one pair, same prompt, loss on the completion only
        c, r = rows["weights"][i], rows["weights"][i + 1]
        first_c, first_r = int(np.argmax(c > 0)), int(np.argmax(r > 0))
        assert first_c == first_r > 4
        np.testing.assert_array_equal(rows["token_ids"][i][:first_c], rows["token_ids"][i + 1][:first_r])
        assert not np.array_equal(rows["token_ids"][i], rows["token_ids"][i + 1])


def test_pairs_stay_whole_on_one_stream_with_two_processes(tmp_path):
    from gemma_cli.engine.data import pipeline

    src = _write(tmp_path / "p.jsonl", _pairs(16))
    cfg = _data_cfg([src], batch_size=8)
    whole = pipeline.build(cfg, _tok(), seed=0, streams=(0, 2, 2), method="dpo")
    halves = [pipeline.build(cfg, _tok(), seed=0, streams=(p, p + 1, 2), method="dpo") for p in (0, 1)]
    it, its = iter(whole.train), [iter(h.train) for h in halves]
    for _ in range(3):
        x, _, w = next(it)
        parts = [next(i) for i in its]
        # the two processes' rows are the global batch's halves
        np.testing.assert_array_equal(np.concatenate([p[0]["token_ids"] for p in parts]), x["token_ids"])
        for p in parts:
            ids, wt = p[0]["token_ids"], p[2]
            for i in range(0, len(ids), 2):
                start = int(np.argmax(wt[i] > 0))
                np.testing.assert_array_equal(ids[i][:start], ids[i + 1][:start])  # one prompt, two answers
                assert wt[i].sum() > 0 and wt[i + 1].sum() > 0


def test_a_long_prompt_is_cut_from_the_left_first(tmp_path):
    from gemma_cli.engine.data import pipeline

    long_prompt = " ".join(CORPUS[:6])
    src = _write(tmp_path / "p.jsonl", [{"prompt": long_prompt, "chosen": CORPUS[0], "rejected": CORPUS[1]}] * 4)
    b = pipeline.build(_data_cfg([src], sequence_length=64, batch_size=2), _tok(), seed=0, method="dpo")
    full = pipeline.build(_data_cfg([src], sequence_length=400, batch_size=2), _tok(), seed=0, method="dpo")
    for i in (0, 1):
        cut_ids, cut_w = b.peek["token_ids"][i], b.peek["weights"][i]
        ids, w = full.peek["token_ids"][i], full.peek["weights"][i]
        n_cut, n = int((b.peek["segment_ids"][i] > 0).sum()), int((full.peek["segment_ids"][i] > 0).sum())
        assert n > 64 and 60 <= n_cut <= 64  # the longer side fills the row
        assert cut_ids[0] == ids[0] == 2  # <bos> kept
        assert cut_w.sum() == w.sum()  # the whole completion survives
        np.testing.assert_array_equal(cut_ids[n_cut - int(w.sum()) - 4 : n_cut], ids[n - int(w.sum()) - 4 : n])
    assert b.counters(1)["truncated"] == 2


BAD = {
    "one_side": ({"prompt": "a", "chosen": "b"}, "only one side (`rejected` is missing)"),
    "identical": ({"prompt": "a", "chosen": "b c", "rejected": "b c"}, "`chosen` is identical to `rejected`"),
    "implicit_prompts_differ": ({"chosen": _msgs(("user", "a"), ("assistant", "b")),
                                 "rejected": _msgs(("user", "z"), ("assistant", "c"))},
                                "implicit prompts of `chosen` and `rejected` differ"),
    "empty_completion": ({"prompt": "a", "chosen": "b", "rejected": "  "}, "`rejected` is empty: an empty completion"),
    "roles_out_of_order": ({"prompt": _msgs(("user", "a")), "chosen": _msgs(("user", "b")),
                            "rejected": _msgs(("assistant", "c"))}, "roles out of order"),
    "mixed_forms": ({"prompt": _msgs(("user", "a")), "chosen": _msgs(("assistant", "b")),
                     "rejected": _msgs(("assistant", "c"))}, "mixed record forms"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_preference_records_exit_2_with_file_line(tmp_path, tiny_gemma3, case):
    record, says = BAD[case]
    if case == "implicit_prompts_differ":
        records = [*_pairs(3, "implicit"), record]
    elif case == "roles_out_of_order":
        records = [*_pairs(3, "conversational"), record]
    else:
        records = [*_pairs(3), record]
    src = _write(tmp_path / "prefs.jsonl", records)
    cfg = config(tmp_path, tiny_gemma3, data={"paths": [str(src)], "batch_size": 8}, train={"method": "dpo"})
    r = gemma("finetune", cfg, "-q")
    line = assert_one_error_line(r)
    assert f"{src}:4" in line and says in line, line
    assert not (tmp_path / "out").exists()  # refused before anything was written or loaded


@pytest.mark.parametrize("data,dpo,model_lora,says", [
    ({}, {"loss": "orpo", "reference": "auto"}, 4, "dpo.loss: orpo has no reference model"),
    ({}, {"loss": "simpo", "reference": "none"}, 4, "dpo.loss: simpo has no reference model"),
    ({}, {"beta": 0}, 4, "dpo.beta"),
    ({"packing": True}, {}, 4, "does not pack"),
    ({"batch_size": 4}, {}, 4, "multiple of 2 × the batch axis (4) = 8"),
])
def test_config_refusals(tmp_path, tiny_gemma3, data, dpo, model_lora, says):
    src = _write(tmp_path / "prefs.jsonl", _pairs(8))
    cfg = config(tmp_path, tiny_gemma3, data={"paths": [str(src)], "batch_size": 8, **data}, lora=model_lora,
                 train={"method": "dpo"})
    text = cfg.read_text() + "dpo: " + json.dumps(dpo) + "\n"
    cfg.write_text(text)
    r = gemma("config", "validate", cfg, "-q")
    line = assert_one_error_line(r)
    assert says in line, line


def test_method_and_records_must_agree(tmp_path, tiny_gemma3):
    prefs = _write(tmp_path / "prefs.jsonl", _pairs(8))
    r = gemma("finetune", config(tmp_path, tiny_gemma3, data={"paths": [str(prefs)]}), "-q")  # sft on pairs
    assert "needs train.method: dpo" in assert_one_error_line(r)
    r = gemma("finetune", config(tmp_path, tiny_gemma3, data={"batch_size": 8}, train={"method": "dpo"}), "-q")
    line = assert_one_error_line(r)
    assert "train.method: dpo trains on preference pairs" in line and "corpus.jsonl:1" in line


# ------------------------------------------------------------------------ a tiny DPO run ---
STEPS, CKPT = 8, 4


def _dpo_config(tmp: Path, preset: Path, out: str) -> Path:
    train = _write(tmp / "train.jsonl", _pairs(32))
    held = _write(tmp / "held.jsonl", _pairs(8, offset=5))  # other prompt/answer pairings
    return config(
        tmp, preset, mesh=[2, 4], layout={"indivisible": "replicate"}, name=f"{out}.yaml",
        data={"paths": [str(train)], "eval_paths": [str(held)], "batch_size": 8, "sequence_length": 32},
        optimizer={"learning_rate": 2e-2},
        train={"method": "dpo", "max_steps": STEPS, "checkpoint_every": CKPT, "eval_every": CKPT,
               "log_every": CKPT, "output_dir": str(tmp / out)},
    )


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_presets) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("dpo")
    cfg = _dpo_config(tmp, tiny_presets["gemma3"], "a")
    r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    return {"tmp": tmp, "cfg": cfg, "out": tmp / "a", "summary": json.loads(r.stdout), "stderr": r.stderr}


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_raises_held_out_preference_accuracy(dpo_run):
    evals = [ln for ln in _lines(dpo_run["out"]) if "eval_loss" in ln]
    assert [e["step"] for e in evals] == [0, CKPT, STEPS]
    first, last = evals[0], evals[-1]
    # before training the policy is its reference: every reward is 0, no pair is preferred
    assert first["eval_rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    assert first["eval_rewards/accuracy"] == 0.0
    assert first["eval_loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert last["eval_rewards/accuracy"] >= 0.9
    assert last["eval_rewards/margin"] > 0.1 and last["eval_loss"] < first["eval_loss"] - 0.05
    assert last["eval_logps/chosen"] > first["eval_logps/chosen"]
    # the model's own preference on the held-out pairs (its chosen answer likelier) rises too
    assert last["eval_logps/accuracy"] > first["eval_logps/accuracy"]
    s = dpo_run["summary"]
    assert set(s["final_metrics"]) == {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
                                       "logps/chosen", "logps/rejected", "logps/accuracy"}
    assert "32 preference records" in dpo_run["stderr"]


def test_dpo_metrics_reach_tensorboard_and_runs_show(dpo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for d in {p.parent for p in (dpo_run["out"] / "tensorboard").rglob("events.out.tfevents.*")}:
        acc = EventAccumulator(str(d))
        acc.Reload()
        tags |= set(acc.Tags().get("scalars", [])) | set(acc.Tags().get("tensors", []))
    assert {"train/rewards/margin", "eval/rewards/accuracy", "train/logps/chosen"} <= tags, tags
    r = gemma("runs", "show", dpo_run["out"], "--json")
    assert r.exit_code == 0 and "rewards/accuracy" in r.stdout


def test_resume_reaches_the_same_weights(dpo_run, tiny_presets):
    tmp = dpo_run["tmp"]
    out_b = tmp / "b"
    cfg_b = _dpo_config(tmp, tiny_presets["gemma3"], "b")
    # run b: run a's state at the mid checkpoint, then --resume to the end
    shutil.copytree(dpo_run["out"], out_b)
    ck = out_b / "checkpoints"
    shutil.rmtree(ck / f"step_{STEPS:08d}")
    (ck / "latest").write_text(f"step_{CKPT:08d}\n")
    r = gemma("finetune", cfg_b, "--resume", "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert json.loads(r.stdout)["resumed_from"] == CKPT
    a_files = sorted(p.relative_to(dpo_run["out"] / "checkpoints" / f"step_{STEPS:08d}")
                     for p in (dpo_run["out"] / "checkpoints" / f"step_{STEPS:08d}").rglob("*.h5"))
    assert a_files
    import h5py

    def arrays(path: Path) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with h5py.File(path) as f:
            f.visititems(lambda k, v: out.__setitem__(k, np.asarray(v)) if isinstance(v, h5py.Dataset) else None)
        return out

    for rel in a_files:
        a = arrays(dpo_run["out"] / "checkpoints" / f"step_{STEPS:08d}" / rel)
        b = arrays(ck / f"step_{STEPS:08d}" / rel)
        assert a.keys() == b.keys() and a
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-6, err_msg=f"{rel}:{k}")


def test_the_adapters_off_reference_is_the_base_model(tiny_presets):
    import keras

    from gemma_cli.engine.core import runtime
    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.model.lora import adapters_off, lora_layers
    from gemma_cli.engine.objectives.preference import Preference

    runtime.setup()
    lm = model.load_causal_lm(str(tiny_presets["gemma3"]), "float32")
    lm.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 100, size=(4, 10)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((4, 9), bool)}
    y, w = ids[:, 1:], np.tile((np.arange(9) >= 4).astype("float32"), (4, 1))
    no_ref = Preference("sigmoid", beta=1.0, reference=None)
    base = no_ref.compute(lm, x, y, lm.backbone(x), w, True).metrics  # rewards = β·logp (reference 0)
    lm.backbone.enable_lora(4)
    for layer in lora_layers(lm.backbone):
        layer.lora_kernel_b.assign(rng.normal(0, 0.5, layer.lora_kernel_b.shape).astype("float32"))
    tuned = no_ref.compute(lm, x, y, lm.backbone(x), w, True).metrics
    with_ref = Preference("sigmoid", beta=1.0, reference=adapters_off).compute(lm, x, y, lm.backbone(x), w, True).metrics
    assert abs(float(tuned["rewards/chosen"]) - float(base["rewards/chosen"])) > 1e-2  # the adapters matter
    # policy − reference: the reference log-probs are the base model's
    for side in ("chosen", "rejected"):
        ref = float(tuned[f"rewards/{side}"]) - float(with_ref[f"rewards/{side}"])
        assert ref == pytest.approx(float(base[f"rewards/{side}"]), abs=1e-4)


def test_full_fine_tune_precomputes_the_reference(tmp_path, tiny_presets):
    """A full fine-tune: the reference log-probs of every pair come from a pass before training,
    stored with the run; at step 0 the policy is the reference, so every eval reward is 0 — it
    would not be if a row met another row's precomputed value."""
    train = _write(tmp_path / "train.jsonl", _pairs(32))
    held = _write(tmp_path / "held.jsonl", _pairs(8, offset=5))
    cfg = config(tmp_path, tiny_presets["gemma3"], mesh=[2, 4], lora=None, layout={"indivisible": "replicate"},
                 data={"paths": [str(train)], "eval_paths": [str(held)], "batch_size": 8, "sequence_length": 32},
                 optimizer={"learning_rate": 3e-3},
                 train={"method": "dpo", "max_steps": 4, "eval_every": 4, "log_every": 2})
    r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "Computing the reference log-probs of 32 training and 8 eval pairs" in r.stderr
    with np.load(tmp_path / "out" / "reference_logps.npz") as z:
        assert z["train"].shape == (32, 2) and z["eval"].shape == (8, 2) and (z["train"] < 0).all()
    evals = [ln for ln in _lines(tmp_path / "out") if "eval_loss" in ln]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == 4
    for k in ("eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margin"):
        assert first[k] == pytest.approx(0.0, abs=1e-4), (k, first)
    assert first["eval_loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert last["eval_rewards/margin"] > 0.05 and last["eval_loss"] < first["eval_loss"]


def test_shipped_dpo_example_data_is_current_and_checks_clean(tmp_path):
    """data/demo_dpo_*.jsonl are what data/make_dpo_demo.py writes, and every pair passes the
    record check of the shipped config."""
    import subprocess
    import sys

    from gemma_cli.config import load_config
    from gemma_cli.engine.data import check_records

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "data/make_dpo_demo.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = load_config(str(root / "configs/gemma3_270m_dpo.yaml"))
    data = cfg.data.model_copy(update={"paths": [str(root / p) for p in cfg.data.paths],
                                       "eval_paths": [str(root / p) for p in cfg.data.eval_paths]})
    assert check_records(data, None, method="dpo") == 178 + 20
