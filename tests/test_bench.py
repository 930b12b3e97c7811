"""The bench's pure helpers: statistics and report rendering (no timing, no heavy imports)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import benchlib as bl  # noqa: E402


def test_median_odd_even_and_missing() -> None:
    assert bl.median([3.0, 1.0, 2.0]) == 2.0
    assert bl.median([4, 1, 3, 2]) == 2.5
    assert bl.median([None, 5.0, float("nan")]) == 5.0
    assert bl.median([]) is None
    assert bl.median([None]) is None


def test_ratio_and_verdict() -> None:
    assert bl.ratio(3.0, 2.0) == 1.5
    assert bl.ratio(None, 2.0) is None
    assert bl.ratio(1.0, 0) is None
    assert bl.verdict(1.02, 1.03) == "met"
    assert bl.verdict(1.2, 1.03) == "MISSED"
    assert bl.verdict(1.6, 1.5, "higher") == "met"
    assert bl.verdict(None, 1.5) == "n/a"


def test_last_json_picks_the_document_after_log_lines() -> None:
    assert bl.last_json('{"a": 1}') == {"a": 1}
    assert bl.last_json('noise\n{"x": 2}\ntrailing') == {"x": 2}
    assert bl.last_json("no json here") is None
    assert bl.last_json("") is None


def test_fmt() -> None:
    assert bl.fmt(None) == "—"
    assert bl.fmt(12345.6) == "12,346"
    assert bl.fmt(0.123456) == "0.123"
    assert bl.fmt(3, " s") == "3 s"


def test_render_reports_failures_and_tables() -> None:
    report = {
        "date": "2026-11-22T00:00:00",
        "quick": True,
        "total_seconds": 12.5,
        "machine": {"cpu": "Fake CPU", "cores": 2, "git": "abc123"},
        "summary": [["step ratio", "1.01", "≤ 1.03", "met"]],
        "sections": [
            {
                "title": "2. Step time",
                "text": "bench model",
                "headers": ["", "step s"],
                "rows": [["gemma", 0.1234], ["baseline", None]],
                "notes": ["interleaved"],
            }
        ],
        "failures": [{"name": "inspect gemma2_27b_en", "error": "timed out after 120 s"}],
    }
    md = bl.render(report)
    assert "QUICK mode" in md
    assert "| cpu | Fake CPU |" in md
    assert "| step ratio | 1.01 | ≤ 1.03 | met |" in md
    assert "| gemma | 0.123 |" in md and "| baseline | — |" in md
    assert "- **inspect gemma2_27b_en**: timed out after 120 s" in md
    json.dumps(report)  # the same dict is what report.json holds


def test_render_without_failures() -> None:
    md = bl.render({"machine": {}, "sections": [], "failures": []})
    assert "None: every measurement ran." in md


def test_segments_bench_packs_whole_texts_first_fit() -> None:
    from segments_bench import pack

    rows, segs = pack([[1, 2, 3], [4, 5, 6], [7, 8], [9, 9, 9, 9, 9, 9]], 5, 0)
    assert rows == [[1, 2, 3, 7, 8], [4, 5, 6, 0, 0], [9, 9, 9, 9, 9]]
    assert segs == [[1, 1, 1, 2, 2], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
