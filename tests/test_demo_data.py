"""The demo's data and scorer, without a model: the shipped files are what data/make_demo.py
writes, the held-out questions are not training questions, and data/score_demo.py scores
hand-written answers by its rule and prints the one demo line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))

import make_demo  # noqa: E402
import score_demo  # noqa: E402

HELD = [
    {"prompt": "How do I carry on after a crash?", "expect": ["--resume"]},
    {"prompt": "How do I see the trace?", "expect": ["--debug", "GEMMA_DEBUG"]},
    {"prompt": "Which command trains?", "expect": ["gemma finetune"]},
]


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def _outs(*answers: str) -> list[dict]:
    return [{"prompt": h["prompt"], "completion": a} for h, a in zip(HELD, answers, strict=True)]


def _score(tmp_path: Path, before: list[dict], after: list[dict], *extra: str) -> subprocess.CompletedProcess:
    held = _write(tmp_path / "held.jsonl", HELD)
    b = _write(tmp_path / "before.jsonl", before)
    a = _write(tmp_path / "after.jsonl", after)
    return subprocess.run(
        [sys.executable, str(ROOT / "data/score_demo.py"), str(b), str(a), "--heldout", str(held), *extra],
        capture_output=True, text=True,
    )


def test_shipped_files_are_up_to_date() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "data/make_demo.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_training_data_is_chat_and_heldout_is_unseen() -> None:
    train = [json.loads(x) for x in (ROOT / "data/demo_gemma_cli.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (ROOT / "data/demo_heldout.jsonl").read_text().splitlines()]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in train)
    questions = {r["messages"][0]["content"] for r in train}
    assert len(held) >= 10
    for h in held:
        assert h["prompt"] not in questions
        assert h["messages"][0]["content"] == h["prompt"]
        assert not any(e.lower() in h["prompt"].lower() for e in h["expect"]), h  # not answerable by copying
    assert make_demo.problems(make_demo.records(), make_demo.heldout()) == []


def test_problems_catch_a_heldout_question_that_is_a_training_question() -> None:
    train = make_demo.records()
    q = train[0]["messages"][0]["content"]
    a = train[0]["messages"][1]["content"]
    key = next(k for k, _, answers in make_demo.TOPICS if a in answers)
    bad = make_demo.heldout() + [{"prompt": q, "expect": [key], "messages": make_demo._chat(q, a)}]
    errs = make_demo.problems(train, bad)
    assert any("too close to the training question" in e for e in errs), errs


def test_score_rule_is_a_case_insensitive_substring() -> None:
    assert score_demo.correct("gemma: Add `--RESUME` to the command.", ["--resume"])
    assert score_demo.correct("set gemma_debug=1", ["--debug", "GEMMA_DEBUG"])
    assert not score_demo.correct("Restart it with the Resume button.", ["--resume"])
    assert not score_demo.correct("", ["gemma finetune"])


def test_scorer_prints_the_demo_line(tmp_path: Path) -> None:
    before = _outs("Press the restart button.", "Look at the logs.", "Use `gemma finetune CONFIG`.")
    after = _outs("gemma: Add `--resume`.", "gemma: Add `--debug`.", "gemma: Run `gemma finetune CONFIG`.")
    r = _score(tmp_path, before, after)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["demo: held-out answers correct before 1/3, after 3/3"]
    r = _score(tmp_path, before, after, "--details")
    lines = r.stdout.splitlines()
    assert lines[-1] == "demo: held-out answers correct before 1/3, after 3/3"
    assert sum(line.startswith("Q: ") for line in lines) == 3 and "✗ Press the restart button." in r.stdout


@pytest.mark.parametrize(
    ("after", "message"),
    [
        (_outs("a", "b", "c")[:2], "2 answers for 3 held-out questions"),
        ([{"prompt": "other", "completion": "x"}] + _outs("a", "b", "c")[1:], "after.jsonl:1: answers 'other'"),
        ([{"prompt": HELD[0]["prompt"]}] + _outs("a", "b", "c")[1:], "after.jsonl:1: no `completion`"),
    ],
)
def test_scorer_names_the_file_that_does_not_fit(tmp_path: Path, after: list[dict], message: str) -> None:
    r = _score(tmp_path, _outs("a", "b", "c"), after)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("Error: ") and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_scorer_rejects_a_broken_line(tmp_path: Path) -> None:
    held = _write(tmp_path / "held.jsonl", HELD)
    a = _write(tmp_path / "after.jsonl", _outs("a", "b", "c"))
    b = tmp_path / "before.jsonl"
    b.write_text('{"completion": "x"}\n{broken\n')
    r = subprocess.run(
        [sys.executable, str(ROOT / "data/score_demo.py"), str(b), str(a), "--heldout", str(held)], capture_output=True, text=True
    )
    assert r.returncode == 2 and f"{b}:2: not valid JSON" in r.stderr
