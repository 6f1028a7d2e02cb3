"""Dataset reading, the resumable result file, and metrics."""

import json

import pytest

from rstar.errors import DataError
from rstar.results import ResultWriter, load_results, read_problems, summarize


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_reads_questions_gold_and_ids(tmp_path):
    f = write(tmp_path / "d.jsonl", [
        json.dumps({"id": "a", "question": " Q1 ", "answer": "Some work.\n#### 1,234"}),
        json.dumps({"problem": "Q2", "answer": "\\frac{1}{2}"}),
        json.dumps({"question": "Q3"}),
    ])
    probs = list(read_problems(f))
    assert [p.id for p in probs] == ["a", "line-2", "line-3"]
    assert [p.question for p in probs] == ["Q1", "Q2", "Q3"]
    assert [p.gold for p in probs] == ["1,234", "\\frac{1}{2}", None]


def test_malformed_lines_are_reported_with_numbers_and_skipped(tmp_path, capsys):
    f = write(tmp_path / "d.jsonl", [
        json.dumps({"question": "good one", "answer": "1"}),
        "{not json",
        "[1, 2]",
        json.dumps({"answer": "3"}),
        "",
        json.dumps({"id": "x", "question": "dup 1"}),
        json.dumps({"id": "x", "question": "dup 2"}),
        json.dumps({"question": "last", "answer": "9"}),
    ])
    bad = []
    probs = list(read_problems(f, bad))
    assert [p.question for p in probs] == ["good one", "dup 1", "last"]
    assert [b.lineno for b in bad] == [2, 3, 4, 7]
    assert "not valid JSON" in bad[0].reason
    assert "JSON object" in bad[1].reason
    assert "question" in bad[2].reason
    assert "duplicate id" in bad[3].reason
    err = capsys.readouterr().err
    assert f"{f}:line 2:" in err and "(skipped)" in err


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_problems(tmp_path / "nope.jsonl"))


def result(pid, correct=True, gold="1"):
    return {"id": pid, "gold": gold, "answer": "1" if correct else "2", "correct": correct,
            "pass_at_k": True, "rollouts": 2, "nodes": 5, "tokens": 10,
            "time": {"model_s": 1.0, "sandbox_s": 0.5, "other_s": 0.5, "total_s": 2.0}}


def test_writer_refuses_to_overwrite_and_resumes(tmp_path):
    with ResultWriter(tmp_path) as w:
        w.write(result("a"))
        w.write(result("b", correct=False))
    with pytest.raises(DataError, match="--resume"):
        ResultWriter(tmp_path)
    with ResultWriter(tmp_path, resume=True) as w:
        assert set(w.done) == {"a", "b"}
        w.write(result("c"))
    assert [r["id"] for r in load_results(tmp_path)] == ["a", "b", "c"]


def test_torn_last_line_is_dropped_and_repaired_on_resume(tmp_path, capsys):
    with ResultWriter(tmp_path) as w:
        w.write(result("a"))
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write('{"id": "b", "gold": "1", "ans')  # killed mid-write
    with ResultWriter(tmp_path, resume=True) as w:
        assert set(w.done) == {"a"}
        w.write(result("b"))
    assert "incomplete last line" in capsys.readouterr().err
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["a", "b"]


def test_damaged_middle_line_is_an_error_not_silent_loss(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps(result("a")) + "\ngarbage\n" + json.dumps(result("b")) + "\n")
    with pytest.raises(DataError, match="line 2"):
        load_results(tmp_path)


def test_summary_metrics():
    s = summarize([result("a"), result("b", correct=False), {**result("c"), "gold": None, "correct": None}])
    assert s["problems"] == 3 and s["graded"] == 2
    assert s["accuracy"] == 0.5 and s["pass_at_k"] == 1.0
    assert s["rollouts"] == 6 and s["nodes"] == 15 and s["tokens"] == 30
    assert s["time"]["total_s"] == 6.0 and s["time"]["model_s"] == 3.0
