"""`gemma eval` on tiny models (issue #23): rewards on generated completions, likelihood and
preference accuracy, lm-eval tasks, runs side by side, bad input.

Cost: one fit (a full fine-tune of the tiny Gemma 3 that memorizes four answers, module
fixture); every other model is the tiny preset itself.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_finetune import assert_one_error_line, config, gemma

QA = [
    ("the quick brown", "fox"),
    ("a mesh has a batch", "axis"),
    ("low rank", "adapters"),
    ("layout rules map", "variable paths"),
]

REWARDS_PY = """
def first_word(prompts, completions, answer, **kwargs):
    # TRL's signature: 1 when the completion starts with the answer's first word
    return [1.0 if c.strip().lower().startswith(a.split()[0]) else 0.0 for c, a in zip(completions, answer)]

def not_applicable(prompts, completions, **kwargs):
    return [None for _ in completions]

def explode(prompts, completions, **kwargs):
    if any(p == "low rank" for p in prompts):
        raise ValueError("no rank")
    return [0.0 for _ in completions]
"""


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def memorized(tmp_path_factory, tiny_presets) -> dict[str, Any]:
    """A run fine-tuned (full weights) on the QA pairs until it answers them."""
    tmp = tmp_path_factory.mktemp("eval_run")
    train = _jsonl(tmp / "qa.jsonl", [{"prompt": q, "completion": a} for q, a in QA] * 4)
    cfg = config(tmp, tiny_presets["gemma3"], lora=None,
                 data={"paths": [str(train)], "sequence_length": 32},
                 optimizer={"learning_rate": 3e-3}, train={"max_steps": 60, "log_every": 20})
    r = gemma("finetune", cfg, "-q")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    heldout = _jsonl(tmp / "heldout.jsonl", [{"prompt": q, "answer": a, "topic": "corpus"} for q, a in QA])
    rewards = tmp / "my_rewards.py"
    rewards.write_text(textwrap.dedent(REWARDS_PY), encoding="utf-8")
    return {"run": tmp / "out", "preset": tiny_presets["gemma3"], "heldout": heldout, "rewards": rewards, "tmp": tmp}


def test_rewards_on_a_memorizing_run_match_a_hand_check(memorized):
    m = memorized
    out = m["tmp"] / "scored.jsonl"
    specs = ["contains", "exact", r"regex:^[a-z ]+$", "json", "length:3", f"{m['rewards']}:first_word",
             f"{m['rewards']}:not_applicable"]
    args = ["eval", m["preset"], m["run"], "--data", m["heldout"], "--chat", "--out", out, "--json", "--batch-size", 4]
    for s in specs:
        args += ["--reward", s]
    r = gemma(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    base, run = doc["targets"]
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [ln["target"] for ln in lines] == [str(m["preset"])] * 4 + [str(m["run"])] * 4
    by_target: dict[str, list[dict[str, Any]]] = {}
    for ln in lines:
        by_target.setdefault(ln["target"], []).append(ln)
    for res in (base, run):
        recs = by_target[res["target"]]
        hand = {
            "contains": [float(a.lower() in x["completion"].lower()) for (_, a), x in zip(QA, recs, strict=True)],
            "exact": [float(x["completion"].strip() == a) for (_, a), x in zip(QA, recs, strict=True)],
            "regex:^[a-z ]+$": [float(bool(__import__("re").search(r"^[a-z ]+$", x["completion"]))) for x in recs],
            "json": [float(_parses(x["completion"])) for x in recs],
            "length:3": [float(x["completion_tokens"] <= 3) for x in recs],
            "first_word": [float(x["completion"].strip().lower().startswith(a.split()[0])) for (_, a), x in zip(QA, recs, strict=True)],
        }
        for name, values in hand.items():
            assert [x["rewards"][name] for x in recs] == values, name
            assert res["rewards"]["means"][name] == pytest.approx(sum(values) / len(values)), name
        assert all(x["rewards"]["not_applicable"] is None for x in recs)
        assert res["rewards"]["means"]["not_applicable"] is None
        passes = [all(v >= 1.0 for k, v in x["rewards"].items() if v is not None) for x in recs]
        assert [x["pass"] for x in recs] == passes
        assert res["rewards"]["pass_rate"] == pytest.approx(sum(passes) / 4)
    # the fine-tune memorized the answers; the base did not
    assert run["rewards"]["means"]["contains"] == 1.0, by_target[str(m["run"])]
    assert base["rewards"]["means"]["contains"] < 1.0
    assert run["likelihood"]["loss"] < base["likelihood"]["loss"]
    assert run["likelihood"]["perplexity"] == pytest.approx(math.exp(run["likelihood"]["loss"]))
    assert doc["difference"]["reward contains"] == pytest.approx(1.0 - base["rewards"]["means"]["contains"])
    # prompted as `generate --chat` prompts: the same completions
    g = ["generate", m["run"], "--chat", "--jsonl", "--batch-size", 4]
    for q, _ in QA:
        g += ["-p", q]
    r = gemma(*g)
    assert r.exit_code == 0, r.stderr
    assert [json.loads(ln)["completion"] for ln in r.stdout.splitlines()] == [x["completion"] for x in by_target[str(m["run"])]]


def _parses(text: str) -> bool:
    try:
        json.loads(text.strip())
        return True
    except ValueError:
        return False


def test_two_targets_give_a_side_by_side_table(memorized):
    m = memorized
    r = gemma("eval", m["preset"], m["run"], "--data", m["heldout"], "--chat", "--no-generate")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    head = [c.strip() for c in [ln for ln in r.stdout.splitlines() if "metric" in ln][0].split("┃")[1:-1]]
    assert head == ["metric", m["preset"].name, m["run"].name, f"Δ {m['run'].name} − {m['preset'].name}"]
    assert f"{m['run'].name}: {m['run']}" in r.stdout
    rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]] for ln in r.stdout.splitlines()
            if ln.startswith("│")}
    assert set(rows) == {"loss", "perplexity"}
    base_loss, run_loss, diff = (float(x) for x in rows["loss"])
    assert run_loss < base_loss and diff == pytest.approx(run_loss - base_loss, abs=2e-3)
    assert rows["loss"][2].startswith("-")


def _direct_logp(preset: Path, prompt: str, answer: str) -> float:
    """log p(answer <eos> | <bos> prompt) by calling the keras model on the whole sequence."""
    import keras_hub

    lm = _model(preset)
    tok = keras_hub.tokenizers.Tokenizer.from_preset(str(preset))
    p_ids = [int(t) for t in np.asarray(tok(prompt))]
    a_ids = [int(t) for t in np.asarray(tok(answer))] + [tok.end_token_id]
    ids = np.asarray([[tok.start_token_id, *p_ids, *a_ids]], dtype="int32")
    logits = np.asarray(lm({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}), dtype="float64")[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    start = 1 + len(p_ids)
    return float(sum(logp[i - 1, ids[0, i]] for i in range(start, ids.shape[1])))


def test_preference_accuracy_and_margin_equal_direct_log_probs(tmp_path, tiny_gemma3):
    rows = [
        {"prompt": "the quick brown", "chosen": " fox jumps", "rejected": " dog sat"},
        {"prompt": "a mesh has", "chosen": " a batch axis", "rejected": " the loss"},
        {"prompt": "low rank", "chosen": " adapters", "rejected": " yaml run configs"},
    ]
    data = _jsonl(tmp_path / "prefs.jsonl", rows)
    r = gemma("eval", tiny_gemma3, "--data", data, "--no-chat", "--json", "--out", tmp_path / "p.jsonl")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    pref = json.loads(r.stdout)["targets"][0]["preference"]
    margins = []
    for row, line in zip(rows, (tmp_path / "p.jsonl").read_text().splitlines(), strict=True):
        c = _direct_logp(tiny_gemma3, row["prompt"], row["chosen"])
        rj = _direct_logp(tiny_gemma3, row["prompt"], row["rejected"])
        got = json.loads(line)
        assert got["chosen_logprob"] == pytest.approx(c, abs=1e-3)
        assert got["rejected_logprob"] == pytest.approx(rj, abs=1e-3)
        margins.append(c - rj)
    assert pref["accuracy"] == pytest.approx(sum(x > 0 for x in margins) / len(margins))
    assert pref["margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-3)


MC = [
    {"question": "the quick brown", "choices": ["fox", "dog", "yaml"], "answer": 0},
    {"question": "a mesh has a batch", "choices": ["axis", "loss", "fox"], "answer": 0},
    {"question": "low rank", "choices": ["configs", "adapters"], "answer": 1},
    {"question": "the loss falls when the model learns the", "choices": ["corpus", "mesh"], "answer": 0},
    {"question": "gemma fine tunes models from", "choices": ["yaml", "dogs", "the"], "answer": 0},
]


def test_local_lm_eval_task_accuracy_equals_a_hand_computation(tmp_path, tiny_gemma3, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = _jsonl(tasks / "mc.jsonl", MC)
    (tasks / "gemma_tiny_mc.yaml").write_text(textwrap.dedent(f"""
        task: gemma_tiny_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        metric_list:
          - metric: acc
    """))
    r = gemma("eval", tiny_gemma3, "--tasks", "gemma_tiny_mc", "--include-path", tasks, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    acc = json.loads(r.stdout)["targets"][0]["metrics"]["gemma_tiny_mc acc"]
    # lm-eval asks log p(" " + choice | question) of each choice (target_delimiter " ")
    right = [int(np.argmax([_direct_logp_text(tiny_gemma3, d["question"], " " + c) for c in d["choices"]])) == d["answer"]
             for d in MC]
    assert acc == pytest.approx(sum(right) / len(MC))

    r = gemma("eval", tiny_gemma3, "--tasks", "gemma_tiny_mcq", "--include-path", tasks, "-q")
    line = assert_one_error_line(r, 2)
    assert "gemma_tiny_mcq: lm-eval has no such task; did you mean: gemma_tiny_mc" in line


def _direct_logp_text(preset: Path, context: str, continuation: str) -> float:
    """log p(continuation | <bos> context), context and continuation tokenized apart (as lm-eval asks)."""
    import keras_hub

    lm = _model(preset)
    tok = keras_hub.tokenizers.Tokenizer.from_preset(str(preset))
    c_ids = [int(t) for t in np.asarray(tok(context))]
    x_ids = [int(t) for t in np.asarray(tok(continuation))]
    ids = np.asarray([[tok.start_token_id, *c_ids, *x_ids]], dtype="int32")
    logits = np.asarray(lm({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}), dtype="float64")[0]
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return float(sum(logp[i - 1, ids[0, i]] for i in range(1 + len(c_ids), ids.shape[1])))


_MODELS: dict[str, Any] = {}


def _model(preset: Path) -> Any:
    import keras_hub

    if str(preset) not in _MODELS:
        _MODELS[str(preset)] = keras_hub.models.CausalLM.from_preset(str(preset), preprocessor=None)
    return _MODELS[str(preset)]


# ------------------------------------------------------------------------- bad input ---
def test_bad_reward_spec_exits_2_before_any_target_is_looked_at(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "answer": "a"}])
    r = gemma("eval", "no/such/run", "--data", data, "--reward", "regex:(", "-q")
    assert "reward regex:(: not a valid regular expression" in assert_one_error_line(r, 2)
    r = gemma("eval", "no/such/run", "--data", data, "--reward", f"{tmp_path}/none.py:f", "-q")
    assert "none.py: no such file" in assert_one_error_line(r, 2)


def test_a_record_without_the_reference_a_builtin_needs_names_file_and_line(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "answer": "a"}, {"prompt": "q2", "topic": "x"}])
    r = gemma("eval", "no/such/run", "--data", data, "--reward", "contains", "-q")
    line = assert_one_error_line(r, 2)
    assert "d.jsonl:2: --reward contains needs a reference answer: a field 'answer' or 'completion'" in line


def test_a_reward_that_raises_exits_1_naming_it_and_leaves_no_out_file(memorized):
    m = memorized
    out = m["tmp"] / "never.jsonl"
    r = gemma("eval", m["preset"], "--data", m["heldout"], "--reward", f"{m['rewards']}:explode", "--out", out, "-q")
    line = assert_one_error_line(r, 1)
    assert f"reward explode: {m['heldout']}:3: raised ValueError: no rank" in line
    assert not out.exists() and not list(out.parent.glob(".never.jsonl.tmp-*"))


# ------------------------------------------------------------------------------ demo ---
def test_demo_reward_is_the_demo_rule_and_score_demo_takes_evals_pass(tmp_path):
    import subprocess
    import sys

    from gemma_cli.engine.rewards import resolve

    root = Path(__file__).resolve().parents[1]
    r = resolve(f"{root}/data/demo_reward.py:expected")
    assert r(["q"] * 3, ["gemma: Add `--RESUME`.", "Press restart.", "set GEMMA_DEBUG=1"],
             expect=[["--resume"], ["--resume"], ["--debug", "gemma_debug"]]) == [1.0, 0.0, 1.0]
    held = [json.loads(ln) for ln in (root / "data/demo_heldout.jsonl").read_text().splitlines()][:2]
    _jsonl(tmp_path / "h.jsonl", held)
    # gemma eval --out lines: the `pass` decides (here against the completion's text on purpose)
    before = [{"target": "b", "prompt": h["prompt"], "completion": h["expect"][0], "pass": False} for h in held]
    after = [{"target": "a", "prompt": h["prompt"], "completion": "no", "pass": True} for h in held]
    _jsonl(tmp_path / "b.jsonl", before)
    _jsonl(tmp_path / "a.jsonl", after)
    out = subprocess.run([sys.executable, str(root / "data/score_demo.py"), str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl"),
                          "--heldout", str(tmp_path / "h.jsonl")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "demo: held-out answers correct before 0/2, after 2/2"
