"""Issue 18: the value signal reaches the search and the data. Composed scorers (gold for finished
solutions, a PPM for partial ones), ``rstar evolve``'s data rounds keeping the gold reward, and a
data-generation budget at which a value signal changes the tree. Real components: the C++ core,
the Docker sandbox, a PPM head trained here on the SmolLM2-135M test model, rstar's ScriptedPolicy."""

from __future__ import annotations

import json

import pytest

from rstar.policy.scripted import ScriptedPolicy
from rstar.results import Problem
from rstar.scorers import CombinedScorer, GoldScorer, ScoreItem, load_scorer, split_spec
from rstar.search import MCTS, SearchConfig, preset
from rstar.search.config import values_steer

from _scripts import T, by_step  # noqa: E402


def item(answer, gold, finished=True, prompt="p s"):
    return ScoreItem(question="q", steps=["s"], prompt=prompt, finished=finished, answer=answer, gold=gold)


# ---------------------------------------------------------------- composed scorers

def test_gold_plus_self_takes_gold_where_it_decides_and_self_where_it_cannot():
    policy = ScriptedPolicy("Score: 40")
    s = load_scorer("gold+self", policy=policy)
    assert isinstance(s, CombinedScorer) and s.name == "gold+self"
    assert s.needs_gold and not s.scores_partial
    # finished with gold: +1 / -1 from gold; finished without gold: the self-grade (0.4); partial: nobody
    vals = s.score([item("7", "7"), item("8", "7"), item("7", None), item(None, "7", finished=False)])
    assert vals == [1.0, -1.0, pytest.approx(0.4), None]
    assert policy.calls == 1          # the self-grader was asked about the one item gold left open
    s.close()


def test_combined_spec_parsing_and_errors():
    assert split_spec("gold+ppm:/runs/a+b/ppm") == ["gold", "ppm:/runs/a+b/ppm"]
    assert split_spec("ppm:/x") == ["ppm:/x"]
    assert load_scorer("gold+none").name == "gold+none"
    from rstar.errors import RstarError

    with pytest.raises(RstarError, match="unknown scorer"):
        load_scorer("gold+oracle:x")
    with pytest.raises(RstarError, match="at least two"):
        CombinedScorer([GoldScorer()])


@pytest.fixture(scope="module")
def ppm_head(tmp_path_factory):
    """A PPM head trained on toy pairs over SmolLM2's hidden states (seconds)."""
    from conftest import need_module, need_smol

    need_module("llama_cpp")
    base = need_smol()
    from rstar.train.reward import train_head

    prompt = "<|im_start|>user\nWhat is {a} plus {b}?<|im_end|>\n<|im_start|>assistant\n"
    rows = [{"problem": f"p{i}", "prompt": prompt.format(a=3 + i, b=11 + 2 * i),
             "chosen": f"# add the two numbers\ntotal = {3 + i} + {11 + 2 * i}\nprint(total)\n",
             "rejected": f"Traceback (most recent call last):\nNameError: name 'x{i}' is not defined\n",
             "weight": 1.0} for i in range(10)]
    out = tmp_path_factory.mktemp("ppm") / "head"
    train_head("ppm", rows, [], str(base), out, progress=False, epochs=40)
    return out


def test_gold_plus_ppm_scores_finished_by_gold_and_partial_by_the_ppm(ppm_head):
    from rstar.ppm import load_ppm_scorer

    alone = load_ppm_scorer(ppm_head)
    s = load_scorer(f"gold+ppm:{ppm_head}")
    try:
        assert s.name == f"gold+ppm:{ppm_head}" and s.needs_gold and s.scores_partial
        items = [item("7", "7", prompt="A: print(7)"), item("9", "7", prompt="A: print(9)"),
                 item(None, "7", finished=False, prompt="A partial step\nx = 3\n"),
                 item(None, "7", finished=False, prompt="Traceback (most recent call last):\n")]
        got = s.score(items)
        want = alone.score(items[2:])
        assert got[:2] == [1.0, -1.0]                    # never the PPM's view of a finished solution
        assert got[2:] == pytest.approx(want) and all(-1 < v < 1 for v in got[2:])
    finally:
        s.close()
        alone.close()


GOOD = {
    1: [" 1: the apples Tom has\nx = 3\n# Step", " 1: count what he buys\nx = 4\n# Step"],
    2: [" 2: total\nprint(x + 4)\n```"],
}


@pytest.mark.docker
def test_search_with_gold_plus_ppm_backs_up_gold_at_the_end_and_the_ppm_in_between(sandbox_pool, ppm_head):
    from rstar import trace
    from rstar.ppm import load_ppm_scorer

    scorer = load_scorer(f"gold+ppm:{ppm_head}")
    search = MCTS(ScriptedPolicy(by_step(GOOD)), T, sandbox_pool,
                  SearchConfig(rollouts=2, children=2, max_depth=4), scorer=scorer)
    try:
        r = search.solve(Problem("p", "Tom has 3 apples and buys 4 more. How many?", "7"))
    finally:
        scorer.close()
    ns = r["tree"]["nodes"]
    finals = [n for n in ns if n["kind"] == "final"]
    partial = [n for n in ns if n["kind"] == "code"]
    assert sorted(n["answer"] for n in finals) == ["7", "8"] and len(partial) == 2
    # finished: +1 / -1 from the gold answer, backed up as such (one visit each)
    for n in finals:
        assert n["value"] == (1.0 if n["answer"] == "7" else -1.0) and n["q"] == n["value"]
    # partial: the PPM's score of the path's text, the first visit of the node
    alone = load_ppm_scorer(ppm_head)
    try:
        rec = trace.load_trace(r)
        want = alone.score([item(None, "7", finished=False, prompt=trace.path_text(rec, n["id"])) for n in partial])
    finally:
        alone.close()
    assert [n["value"] for n in partial] == pytest.approx(want)
    for n in partial:  # Q = (PPM init + the gold reward of its one finished child) / 2
        child = [c for c in finals if c["parent"] == n["id"]][0]
        assert n["visits"] == 2 and n["q"] == pytest.approx((n["value"] + child["value"]) / 2)
    assert r["scorer"] == f"gold+ppm:{ppm_head}" and r["gold_rewards"] is True


# ---------------------------------------------------------------- evolve's data rounds

def test_evolve_data_rounds_keep_gold_rewards_and_a_budget_where_they_steer(tmp_path):
    from rstar.evolve import PRESETS, Budget, Evolve, EvolveConfig

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"id": "p0", "question": "Add 4 and 4.", "answer": "8"}) + "\n")
    ev = Evolve(EvolveConfig(data=str(data), out=str(tmp_path / "out"), rounds=2, preset="cpu",
                             budget=PRESETS["cpu"]))
    assert ev.data_recipe(0).scorer == "gold"
    ev.state.round(0)["ppm_out"] = "/runs/round-0/ppm"     # what round 0's PPM stage records
    r1 = ev.data_recipe(1)
    assert r1.scorer == "gold+ppm:/runs/round-0/ppm"        # the gold reward stays; the PPM initialises steps
    assert load_scorer("gold+none").needs_gold             # a combined spec with gold is gold-rewarded
    # the data budget lets terminal rewards steer UCT (round 0 has no PPM to initialise steps)
    cfg = ev.data_recipe(0).search
    assert cfg.rollouts >= 16 and values_steer(cfg, "mcts", scores_partial=False)[0]
    assert Budget().search_preset == "cpu-generate"


# ---------------------------------------------------------------- values steer the search

STEER = {
    # three first steps: two lead to a wrong answer, the last one to the right one (x = 7)
    1: [" 1: guess\nx = 8\n# Step", " 1: another guess\nx = 9\n# Step", " 1: add them up\nx = 3 + 4\n# Step"],
}
for _k in range(2, 12):
    STEER[_k] = [f" {_k}: answer\nprint(x)\n```", f" {_k}: keep going\nx = x + 0\n# Step",
                 f" {_k}: note the step\nn{_k} = {_k}\n# Step"]


def _shape(r):
    return [(n["parent"], n["text"]) for n in r["tree"]["nodes"]]


def _under(r, first_text):
    ns = r["tree"]["nodes"]
    top = [n["id"] for n in ns if n["parent"] == 0 and n["text"].startswith(first_text)][0]
    below, count = {top}, 0
    for n in ns:
        if n["parent"] in below:
            below.add(n["id"])
            count += 1
    return count


def test_budget_rule_of_the_presets():
    assert not values_steer(preset("cpu"), "mcts")[0]                 # 4 rollouts of 3: sampling plus a vote
    assert values_steer(preset("cpu-generate"), "mcts")[0]
    assert values_steer(preset("cpu"), "mcts", scores_partial=True)[0]  # a PPM initialises new steps
    assert not values_steer(preset("cpu"), "bon")[0]


@pytest.mark.docker
def test_a_value_signal_changes_the_tree_when_the_budget_exceeds_the_branching(sandbox_pool):
    cfg = preset("cpu-generate").replace(max_depth=6)
    assert cfg.rollouts > cfg.children ** 2
    prob = Problem("p", "Tom has 3 apples and buys 4 more. How many?", "7")
    trees = {}
    for spec in ("gold", "none"):
        search = MCTS(ScriptedPolicy(by_step(STEER)), T, sandbox_pool, cfg, scorer=load_scorer(spec))
        trees[spec] = search.solve(prob)
    gold, blind = trees["gold"], trees["none"]
    assert gold["rollouts"] >= cfg.rollouts and blind["rollouts"] >= cfg.rollouts
    assert _shape(gold) != _shape(blind)
    # gold rewards pull the search under the first step that leads to the right answer
    assert _under(gold, " 1: add them up") > _under(blind, " 1: add them up")
    assert _under(gold, " 1: add them up") > _under(gold, " 1: guess")
