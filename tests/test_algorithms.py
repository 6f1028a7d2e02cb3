"""Every search algorithm over the real C++ core, the real Docker sandbox and the real
templates, with rstar's instant ScriptedPolicy: each test knows exactly which steps the
"model" wrote, so trees, selections and answers are checked by hand."""

import math
import re

import pytest

from rstar.policy.scripted import ScriptedPolicy
from rstar.results import Problem
from rstar.scorers import ScoreItem, load_scorer
from rstar.search import BeamSearch, BestOfN, Greedy, MCTS, MCTSr, PUCTSearch, SearchConfig, make_search
from rstar.tree import PUCT

from _scripts import T, by_step, step_no  # noqa: E402

pytestmark = pytest.mark.docker


def nodes(r):
    return r["tree"]["nodes"]


def cfg(**kw):
    return SearchConfig(**{"max_depth": 6, "temperature": 0.7, **kw})


class StepValueScorer:
    """A rule-based scorer (the plug-in interface a PPM fills): a step's value is the number
    after 'v=' in its last step's text; finished solutions get the same rule."""

    name = "rule"
    needs_gold = False
    scores_partial = True

    def __init__(self):
        self.calls = 0

    def score(self, items: list[ScoreItem]):
        self.calls += 1
        out = []
        for it in items:
            m = re.search(r"v=(-?[\d.]+)", it.steps[-1]) if it.steps else None
            out.append(float(m.group(1)) if m else None)
        return out

    def close(self):
        pass


# ---------------------------------------------------------------- greedy and best-of-N

def test_greedy_writes_one_path_at_temperature_zero(sandbox_pool):
    table = {1: [" 1: half\nmay = 48 / 2\n# Step"], 2: [" 2: print\nprint(int(48 + may))\n```"]}
    seen = []

    def script(prompt, n):
        seen.append(n)
        return by_step(table)(prompt, n)
    search = Greedy(ScriptedPolicy(script), T, sandbox_pool, cfg(), scorer=load_scorer("none"))
    r = search.solve(Problem("p", "q", "72"))
    assert r["algo"] == "greedy" and r["answer"] == "72" and r["correct"] is True
    assert [n["depth"] for n in nodes(r)] == [0, 1, 2] and seen == [1, 1]
    assert r["selection"]["method"] == "vote" and r["selection"]["agree"] == 1


def test_best_of_n_writes_n_whole_solutions_and_votes(sandbox_pool):
    table = {1: [" 1: a\nx = 10\n# Step", " 1: b\nx = 11\n# Step", " 1: c\nx = 5 * 2\n# Step", " 1: d\nx = 1 / 0\n# Step"],
             2: [" 2: print\nprint(x)\n```"]}
    search = BestOfN(ScriptedPolicy(by_step(table)), T, sandbox_pool, cfg(n=4), scorer=load_scorer("none"))
    r = search.solve(Problem("p", "q", "10"))
    finals = [n for n in nodes(r) if n["kind"] == "final"]
    assert sorted(n["answer"] for n in finals) == ["10", "10", "11"]
    assert [n for n in nodes(r) if n["depth"] == 1 and n["kind"] == "invalid"][0]["status"] == "error"
    assert r["answer"] == "10" and r["selection"]["agree"] == 2 and r["selection"]["finished"] == 3
    # rollouts count finished solutions (and depth-limit endings); a failed step is not one
    assert r["num_terminal"] == 3 and r["num_correct_terminal"] == 2 and r["rollouts"] == 3
    # every solution was continued with exactly one sample per step: each depth-1 node has <= 1 child
    kids = {}
    for n in nodes(r):
        kids[n["parent"]] = kids.get(n["parent"], 0) + 1
    assert kids[0] == 4 and all(kids.get(n["id"], 0) <= 1 for n in nodes(r) if n["depth"] == 1)


# ---------------------------------------------------------------- beam search

def test_beam_keeps_the_best_b1_candidates_by_value_and_finished_ones_shrink_it(sandbox_pool):
    # step 1: four candidates with values 0.1, 0.9, 0.5, 0.3 -> keep the two best (0.9, 0.5)
    # step 2: from each kept beam, a finished answer and a continuation
    table = {
        1: [" 1: v=0.1\na = 1\n# Step", " 1: v=0.9\na = 2\n# Step", " 1: v=0.5\na = 3\n# Step",
            " 1: v=0.3\na = 4\n# Step"],
        2: [" 2: v=0.8 answer\nprint(a * 10)\n```", " 2: v=0.2 more\nb = a\n# Step"],
        3: [" 3: v=0.7 answer\nprint(b * 100)\n```"],
    }
    scorer = StepValueScorer()
    search = BeamSearch(ScriptedPolicy(by_step(table)), T, sandbox_pool, cfg(beam_width=2, beam_samples=4),
                        scorer=scorer)
    r = search.solve(Problem("p", "q", "20"))
    d1 = {n["text"].split("\n")[0]: n for n in nodes(r) if n["depth"] == 1}
    expanded = {n["parent"] for n in nodes(r)}
    assert d1[" 1: v=0.9"]["id"] in expanded and d1[" 1: v=0.5"]["id"] in expanded
    assert d1[" 1: v=0.1"]["id"] not in expanded and d1[" 1: v=0.3"]["id"] not in expanded  # pruned
    # round 2: two answers finished (20 and 30): the beam shrinks from 2 to 0 and the search ends,
    # so no depth-3 step was ever written
    assert max(n["depth"] for n in nodes(r)) == 2
    assert sorted(n["answer"] for n in nodes(r) if n["kind"] == "final") == ["20", "30"]
    # values recorded; with values the answer is a value-weighted vote: 20 (0.8) beats 30 (0.8)? tie -> first seen
    assert {n["answer"]: n["value"] for n in nodes(r) if n["kind"] == "final"} == {"20": 0.8, "30": 0.8}
    assert r["selection"]["method"] == "weighted_vote" and r["answer"] == "20"


def test_beam_with_one_finished_solution_continues_with_b1_minus_one(sandbox_pool):
    table = {
        1: [" 1: v=0.9 answer\nprint(7)\n```", " 1: v=0.5\nc = 3\n# Step", " 1: v=0.4\nc = 4\n# Step"],
        2: [" 2: v=0.6 answer\nprint(c)\n```"],
    }
    search = BeamSearch(ScriptedPolicy(by_step(table)), T, sandbox_pool, cfg(beam_width=2, beam_samples=3),
                        scorer=StepValueScorer())
    r = search.solve(Problem("p", "q", "3"))
    d1 = {n["text"].split("\n")[0]: n for n in nodes(r) if n["depth"] == 1}
    expanded = {n["parent"] for n in nodes(r)}
    # one finished at step 1 -> width 1: only the best unfinished candidate (v=0.5) goes on
    assert d1[" 1: v=0.5"]["id"] in expanded and d1[" 1: v=0.4"]["id"] not in expanded
    assert sorted(n["answer"] for n in nodes(r) if n["kind"] == "final") == ["3", "7"]
    assert r["answer"] == "7" and r["correct"] is False and r["pass_at_k"] is True


# ---------------------------------------------------------------- MCTS (rStar) and PUCT (AlphaMath)

def test_mcts_with_a_partial_scorer_initialises_new_nodes_with_their_value(sandbox_pool):
    table = {1: [" 1: v=0.5\nx = 2\n# Step", " 1: v=-0.5\nx = 3\n# Step"], 2: [" 2: v=1 done\nprint(x)\n```"]}
    search = MCTS(ScriptedPolicy(by_step(table)), T, sandbox_pool, cfg(rollouts=1, children=2),
                  scorer=StepValueScorer())
    r = search.solve(Problem("p", "q", None))
    d1 = {n["text"].split("\n")[0]: n for n in nodes(r) if n["depth"] == 1}
    assert d1[" 1: v=0.5"]["visits"] >= 1 and d1[" 1: v=0.5"]["value"] == 0.5
    assert d1[" 1: v=-0.5"]["value"] == -0.5
    # UCT after initialisation: the +0.5 child is expanded before the -0.5 one (equal visits)
    expanded = {n["parent"] for n in nodes(r)}
    assert d1[" 1: v=0.5"]["id"] in expanded and d1[" 1: v=-0.5"]["id"] not in expanded
    root = nodes(r)[0]
    # root back-ups: the two initial values and the finished solution's value 1
    assert root["visits"] == 3 and root["q"] == pytest.approx((0.5 - 0.5 + 1.0) / 3)


def test_puct_uses_exp_mean_logprob_priors_and_the_puct_rule(sandbox_pool):
    table = {1: [" 1: a\nx = 2\n# Step"], 2: [" 2: done\nprint(x)\n```"]}
    policy = ScriptedPolicy(by_step(table), logprob_per_token=-0.25)
    search = PUCTSearch(policy, T, sandbox_pool, cfg(rollouts=1, children=1), scorer=load_scorer("gold"))
    r = search.solve(Problem("p", "q", "2"))
    assert r["algo"] == "puct" and r["answer"] == "2" and r["correct"] is True
    assert all(n["prior"] == pytest.approx(math.exp(-0.25), rel=1e-6) for n in nodes(r)[1:])
    assert search.rule == PUCT


# ---------------------------------------------------------------- MCTSr

def mctsr_script(prompt, n):
    """Zero-shot: prints 5. Critique: fixed text. Rewrite: prints 6 (7 when the attempt printed 6).
    Self-evaluation: 40 for 5, 80 / 60 for 6, 100 (-> 50) for 7, -80 for "I don't know"."""
    if "output a score" in prompt:
        if "print(6)" in prompt:
            return (["Score: 80", "Score: 60"] * n)[:n]
        if "print(7)" in prompt:
            return ["Score: 100"] * n
        if "print(5)" in prompt:
            return ["Score: 40"] * n
        return ["Score: -80"] * n
    if "Criticise this solution" in prompt:
        return ["The answer must be one more."] * n
    if "A critique of that attempt" in prompt:
        target = "7" if "print(6)" in prompt.split("A critique of that attempt")[0] else "6"
        return [f" 1: fixed\nprint({target})\n```"] * n
    return [" 1: first try\nprint(5)\n```"] * n


def test_mctsr_q_backup_and_selection_by_hand(sandbox_pool):
    policy = ScriptedPolicy(mctsr_script)
    search = MCTSr(policy, T, sandbox_pool, cfg(mctsr_rollouts=3, mctsr_max_children=3, self_eval_samples=2),
                   scorer=load_scorer("self", policy=policy, samples=2))
    r = search.solve(Problem("p", "q", "6"))
    ns = nodes(r)
    zs = [n for n in ns if n["answer"] == "5"][0]
    dummy = [n for n in ns if n["text"] == "I don't know."][0]
    assert zs["parent"] == 0 and dummy["parent"] == 0
    # own Q = (min + mean) / 2 of the grades, / 100; a grade of 100 counts as 50 (no full marks)
    assert zs["value"] == pytest.approx(0.40) and dummy["value"] == pytest.approx(-0.80)
    sixes = [n for n in ns if n["answer"] == "6"]
    assert all(n["value"] == pytest.approx((60 + 70) / 2 / 100) for n in sixes)
    # rollout 1: N(root) = 0, so UCT is Q alone: the zero-shot answer (40 > -80) is refined -> a 6
    # rollout 2: the dummy is unvisited: its term 1.4 * sqrt(ln 2 / 1e-5) = 368 beats the refined
    #            node's 1.4 * sqrt(ln 2 / 1) = 1.17, so the dummy is refined -> another 6
    # rollout 3: both root children visited once; Q' = (own + best child) / 2: 0.525 vs -0.075 ->
    #            the zero-shot branch; it has one child (< 3) but that child (0.65) beats it (0.40),
    #            so the descent goes on to the 6 under it, which is refined -> a 7
    assert sorted(n["parent"] for n in sixes) == sorted([zs["id"], dummy["id"]])
    seven = [n for n in ns if n["answer"] == "7"][0]
    six_under_zs = [n for n in sixes if n["parent"] == zs["id"]][0]
    assert seven["parent"] == six_under_zs["id"] and seven["value"] == pytest.approx(0.50)
    # back-up along the whole path: Q'(6) = (0.65 + 0.50) / 2, Q'(zero-shot) = (0.40 + Q'(6)) / 2
    assert six_under_zs["q"] == pytest.approx((0.65 + 0.50) / 2, abs=1e-6)
    assert zs["q"] == pytest.approx((0.40 + (0.65 + 0.50) / 2) / 2, abs=1e-6)
    assert dummy["q"] == pytest.approx((-0.80 + 0.65) / 2, abs=1e-6)
    assert r["rollouts"] == 3 and r["algo"] == "mctsr"
    # the answer is the node with the highest own Q (0.65), not "any node correct"
    assert r["answer"] == "6" and r["correct"] is True and r["selection"]["method"] == "best"
    assert "A critique of that attempt" in six_under_zs["prompt"]


def test_mctsr_needs_a_scorer_that_values_answers(sandbox_pool):
    from rstar.errors import RstarError

    with pytest.raises(RstarError, match="mctsr needs a scorer"):
        MCTSr(ScriptedPolicy(mctsr_script), T, sandbox_pool, cfg(), scorer=load_scorer("none"))


# ---------------------------------------------------------------- one calling convention

@pytest.mark.parametrize("algo", ["mcts", "puct", "beam", "bon", "greedy", "mctsr"])
def test_every_algorithm_runs_many_problems_with_one_result_schema(sandbox_pool, algo):
    def script(prompt, n):
        if "output a score" in prompt:
            return ["Score: 70"] * n
        if "Criticise" in prompt:
            return ["Fine."] * n
        m = re.search(r"ADD (\d+) (\d+)", prompt)
        a, b = int(m.group(1)), int(m.group(2))
        k = step_no(prompt)
        if k == 1:
            return [f" 1: first\na = {a}\n# Step"] * n
        return [f" {k}: add\nprint(a + {b})\n```"] * n
    problems = [Problem(f"p{i}", f"ADD {i} {i + 1}", str(2 * i + 1)) for i in range(5)]
    policy = ScriptedPolicy(script)
    scorer = load_scorer("self", policy=policy) if algo == "mctsr" else load_scorer("gold")
    search = make_search(algo, policy, T, sandbox_pool,
                         cfg(rollouts=2, children=2, n=2, beam_width=2, beam_samples=2, mctsr_rollouts=1,
                             self_eval_samples=1, concurrent_problems=3), scorer=scorer)
    results = list(search.search(problems))
    assert sorted(r["id"] for r in results) == [p.id for p in problems]
    for r in results:
        assert r["schema"] == 2 and r["algo"] == algo and r["correct"] is True, r
        assert r["tree"]["nodes"][0]["parent"] == -1 and len(r["tree"]["nodes"]) == r["nodes"]
        assert [n["id"] for n in r["tree"]["nodes"]] == list(range(r["nodes"]))
        assert r["chosen"] is not None and r["tree"]["nodes"][r["chosen"]]["answer"] == r["answer"]
        assert r["time"]["kind"] == "share" and r["time"]["wall_s"] >= r["time"]["total_s"] * 0.0
        assert r["prompt"] and r["tree"]["nodes"][1]["shown"]
    assert search.info == {}  # text of finished trees is freed


def test_node_prompt_is_the_problem_prompt_plus_the_shown_steps(sandbox_pool):
    seen = {}

    def script(prompt, n):
        seen[step_no(prompt)] = prompt
        return by_step({1: [" 1: a\nx = 2\n# Step"], 2: [" 2: b\nprint(x)\n```"]})(prompt, n)
    r = MCTS(ScriptedPolicy(script), T, sandbox_pool, cfg(rollouts=1, children=1)).solve(Problem("p", "q", None))
    d1 = [n for n in nodes(r) if n["depth"] == 1][0]
    assert seen[1] == r["prompt"]
    assert seen[2] == r["prompt"] + d1["shown"]


def test_forest_memory_stays_flat_over_many_problems(sandbox_pool):
    def script(prompt, n):
        k = step_no(prompt)
        return [f" 1: a\nx = {k}\n# Step", f" 1: b\nx = {k} + 1\n# Step"][:n] if k == 1 else [" 2: p\nprint(x)\n```"] * n
    search = MCTS(ScriptedPolicy(script), T, sandbox_pool, cfg(rollouts=2, children=2, concurrent_problems=4),
                  scorer=load_scorer("none"))
    if not hasattr(search.forest, "release"):
        pytest.fail("the core has no release(): finished trees would grow the arena forever")
    sizes = []
    for k, _ in enumerate(search.search(Problem(f"p{i}", "q", None) for i in range(60))):
        sizes.append(len(search.forest))
    # every tree has 5 nodes and at most 4 are in flight: the arena's high-water mark stays small
    assert max(sizes) <= 4 * 5 * 3, max(sizes)
    assert search.forest.num_live == 0 and search.info == {}
