"""Reward functions (engine/rewards): specs, built-ins, user files, checks, score. No model."""

from __future__ import annotations

import sys
import textwrap

import pytest

from gemma_cli.engine.rewards import resolve, score
from gemma_cli.errors import RuntimeFailure, UsageError


def _file(tmp_path, body: str, name: str = "my_rewards.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body), encoding="utf-8")
    return p


def test_contains_ignores_case_and_takes_any_of_a_list():
    r = resolve("contains")
    assert r.name == "contains"
    got = r(["q1", "q2", "q3", "q4"], ["Run GEMMA finetune now", "no", "use --resume", "x"],
            answer=["gemma finetune", "yes", ["--force", "--RESUME"], None])
    assert got == [1.0, 0.0, 1.0, None]


def test_reference_falls_back_to_the_completion_field():
    assert resolve("exact")(["q", "q"], [" 42\n", "42 apples"], completion=["42", "42"]) == [1.0, 0.0]


def test_a_builtin_without_its_reference_field_is_a_usage_error():
    with pytest.raises(UsageError, match="contains.*'answer' or 'completion'"):
        resolve("contains")(["q"], ["a"], other=["x"])


def test_regex_json_length():
    assert resolve(r"regex:^\d+$")(["q"] * 2, ["123", "12a"]) == [1.0, 0.0]
    assert resolve("json")(["q"] * 3, ['{"a": 1}', "```json\n[1, 2]\n```", "{nope"]) == [1.0, 1.0, 0.0]
    length = resolve("length:3")
    assert length(["q"] * 2, ["one two three", "one two three four"]) == [1.0, 0.0]
    # token ids, when the caller has them, count instead of words
    assert length(["q"] * 2, ["one", "one two"], completion_ids=[[1, 2, 3, 4], [5]]) == [0.0, 1.0]


def test_math_uses_math_verify():
    pytest.importorskip("math_verify")
    r = resolve("math")
    got = r(["q"] * 3, ["The answer is $\\frac{1}{2}$", "I think it is 0.5", "It is $3$"], answer=["1/2", "0.5", "4"])
    assert got == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("contain", "no such built-in.*did you mean contains"),
        ("regex:(", "regex:\\(: not a valid regular expression"),
        ("length:x", "length:x: N must be a positive"),
        ("length:0", "length:0: N must be a positive"),
        ("missing/file.py:f", "missing/file.py:f: missing/file.py: no such file"),
        ("rewards.py", "name the function too"),
    ],
)
def test_bad_specs_name_the_spec(spec, said):
    with pytest.raises(UsageError, match=said):
        resolve(spec)


def test_user_function_with_trl_signature_gets_the_columns(tmp_path):
    p = _file(tmp_path, """
        def has_answer(prompts, completions, answer, **kwargs):
            return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

        def only_completions(completions):
            return [len(c) for c in completions]
    """)
    r = resolve(f"{p}:has_answer")
    assert r.name == "has_answer"
    assert r(["p1", "p2"], ["x is 4", "x is 5"], answer=["4", "4"], extra=[1, 2]) == [1.0, 0.0]
    # a function without **kwargs is given only the columns it names
    assert resolve(f"{p}:only_completions")(["p"], ["abc"], answer=["z"]) == [3.0]


def test_user_spec_failures_name_the_spec(tmp_path):
    p = _file(tmp_path, """
        def no_completions(prompts, answers):
            return []
        VALUE = 3
    """)
    with pytest.raises(UsageError, match=r":nope: .* has no function nope \(it has: no_completions\)"):
        resolve(f"{p}:nope")
    with pytest.raises(UsageError, match="no_completions.*takes no 'completions'"):
        resolve(f"{p}:no_completions")
    with pytest.raises(UsageError, match="VALUE in .* is not a function"):
        resolve(f"{p}:VALUE")
    broken = _file(tmp_path, "import not_a_module_anywhere\n", "broken.py")
    with pytest.raises(UsageError, match=r"broken.py:f: importing .*broken.py failed: ModuleNotFoundError"):
        resolve(f"{broken}:f")
    assert not any(m.startswith("gemma_reward_") and "broken" in str(getattr(sys.modules[m], "__file__", ""))
                   for m in sys.modules)


def test_run_time_failures_name_function_and_first_bad_record(tmp_path):
    p = _file(tmp_path, """
        def short(prompts, completions, **kw):
            return [1.0]

        def words(prompts, completions, **kw):
            return [1.0, "high", 0.0]

        def boom(prompts, completions, **kw):
            return [1.0 / len(c) for c in completions]

        def nan(prompts, completions, **kw):
            return [float("nan") for c in completions]
    """)
    three = (["a", "b", "c"], ["x", "y", "z"])
    with pytest.raises(RuntimeFailure, match="reward short: returned 1 values for 3 completions .*record 2"):
        resolve(f"{p}:short")(*three)
    with pytest.raises(RuntimeFailure, match=r"reward words: data.jsonl:8: returned 'high'"):
        resolve(f"{p}:words")(*three, labels=["data.jsonl:7", "data.jsonl:8", "data.jsonl:9"])
    with pytest.raises(RuntimeFailure, match="reward boom: record 2: raised ZeroDivisionError"):
        resolve(f"{p}:boom")(["a", "b", "c"], ["x", "", "z"])
    with pytest.raises(RuntimeFailure, match="reward nan: record 1: returned nan"):
        resolve(f"{p}:nan")(*three)


def test_score_means_and_pass_rate():
    rs = [resolve("contains"), resolve("length:2")]
    out = score(rs, ["q"] * 4, ["Paris", "it is Paris indeed", "Rome", "Berlin"],
                {"answer": ["paris", "paris", "paris", None]}, threshold=1.0)
    assert [r["rewards"] for r in out["records"]] == [
        {"contains": 1.0, "length:2": 1.0},
        {"contains": 1.0, "length:2": 0.0},
        {"contains": 0.0, "length:2": 1.0},
        {"contains": None, "length:2": 1.0},
    ]
    assert [r["pass"] for r in out["records"]] == [True, False, False, True]
    assert out["means"] == {"contains": 2 / 3, "length:2": 0.75}
    assert out["pass_rates"] == {"contains": 2 / 3, "length:2": 0.75}
    assert out["pass_rate"] == 0.5
    assert score(rs, ["q"], ["a b c"], {"answer": ["zzz"]}, threshold=0.0)["pass_rate"] == 1.0


def test_rewards_import_no_ml_library():
    import subprocess

    code = ("import sys; import gemma_cli.engine.rewards as r; r.resolve('contains'); "
            "print(sorted(m for m in ('keras', 'jax', 'tensorflow', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
