"""The command line: help, and one clear line (no traceback) for each kind of bad input."""

import json
import subprocess
import sys


def rstar(*args, **kw):
    return subprocess.run([sys.executable, "-m", "rstar.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, **kw)


def test_help_explains_every_command():
    r = rstar("--help")
    assert r.returncode == 0
    for cmd in ("solve", "run", "eval", "model", "sandbox"):
        assert cmd in r.stdout
    r = rstar("run", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout and "--reward" in r.stdout and "JSONL" in r.stdout


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("rstar: error: ") or "rstar: error:" in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_missing_data_file(tmp_path):
    assert_one_line_error(rstar("run", tmp_path / "nope.jsonl", "--out", tmp_path / "o"), "no such file")


def test_bad_search_setting(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    assert_one_line_error(rstar("run", data, "--out", tmp_path / "o", "--rollouts", "0"), "rollouts must be >= 1")


def test_unknown_template(tmp_path):
    assert_one_line_error(rstar("solve", "1+1?", "--template", "nope"), "nope", "default", "rstar")


def test_eval_of_a_directory_without_results(tmp_path):
    assert_one_line_error(rstar("eval", tmp_path), "no results here")


def test_eval_recomputes_metrics(tmp_path):
    rows = [{"id": "a", "gold": "1", "answer": "1", "correct": True, "pass_at_k": True, "rollouts": 3,
             "nodes": 7, "tokens": 50, "time": {"model_s": 2, "sandbox_s": 1, "other_s": 1, "total_s": 4}},
            {"id": "b", "gold": "2", "answer": None, "correct": False, "pass_at_k": False, "rollouts": 1,
             "nodes": 2, "tokens": 9, "time": {"model_s": 1, "sandbox_s": 0, "other_s": 0, "total_s": 1}}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = rstar("eval", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["accuracy"] == 0.5 and s["pass_at_k"] == 0.5 and s["nodes"] == 9 and s["answered"] == 1
    r = rstar("eval", tmp_path)
    assert "accuracy: 50.0%" in r.stdout and "model 60%" in r.stdout
