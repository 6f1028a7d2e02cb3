"""The search loop end to end: real C++ core, real Docker sandbox, real templates.

The policy here is rstar's ScriptedPolicy (the benchmark's instant policy): it
replays canned continuations chosen by the step number of the prompt, so each
test knows exactly which steps the model "wrote" and can check what the search
made of them.
"""

import re

import pytest

from rstar.policy.scripted import ScriptedPolicy
from rstar.results import Problem
from rstar.scorers import load_scorer
from rstar.search import MCTS, SearchConfig

from _scripts import T, by_step, step_no  # noqa: E402

pytestmark = pytest.mark.docker


def chat(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


GOOD = {
    1: [" 1: clips sold in May\nmay = 48 / 2\n# Step"],
    2: [" 2: total of both months\ntotal = 48 + may\n# Step"],
    3: [" 3: print the answer\nprint(int(total))\n```"],
}


def run(sandbox_pool, script, problems, scorer="gold", **cfg):
    config = SearchConfig(**{"rollouts": 2, "children": 2, "max_depth": 6, "temperature": 0.7, **cfg})
    search = MCTS(ScriptedPolicy(script), T, sandbox_pool, config, scorer=load_scorer(scorer))
    results = list(search.search(problems))
    return search, results


def nodes(result):
    return result["tree"]["nodes"]


def test_verified_solution_is_found_and_saved(sandbox_pool):
    _, [r] = run(sandbox_pool, by_step(GOOD), [Problem("p", "Natalia...", "72")])
    assert r["answer"] == "72" and r["correct"] is True and r["pass_at_k"] is True
    assert [s["kind"] for s in r["solution"]] == ["code", "code", "final"]
    assert r["solution"][-1]["output"].strip() == "72"
    assert r["rollouts"] >= 1 and r["nodes"] == len(nodes(r))
    root = nodes(r)[0]
    assert root["parent"] == -1 and root["visits"] >= 1
    # the duplicate candidates of each expansion were merged: a chain, not a bush
    assert len(nodes(r)) == 4
    final = [n for n in nodes(r) if n["kind"] == "final"][0]
    assert final["terminal"] and final["q"] == 1.0 and final["correct"] is True


def test_failing_and_malformed_steps_are_cut_with_reasons(sandbox_pool):
    table = {
        1: [" 1: divide by zero\nx = 1 / 0\n# Step",            # runs and fails -> cut
            " 1: undefined name\ny = undefined_thing + 1\n# Step",  # NameError -> cut
            " 1: broken syntax\nz = (1 +\n# Step",               # does not parse -> cut, never executed
            " 1: fine\nx = 6\n# Step"],
        2: [" 2: answer\nprint(x * 7)\n```"],
    }
    _, [r] = run(sandbox_pool, by_step(table), [Problem("p", "q", "42")], children=4)
    by_text = {n["text"].split("\n")[0]: n for n in nodes(r)[1:] if n["depth"] == 1}
    assert by_text[" 1: divide by zero"]["kind"] == "invalid"
    assert "ZeroDivisionError" in by_text[" 1: divide by zero"]["reason"]
    assert "NameError" in by_text[" 1: undefined name"]["reason"]
    assert by_text[" 1: broken syntax"]["status"] == "parse_error"
    assert "syntax" in by_text[" 1: broken syntax"]["reason"]
    assert by_text[" 1: fine"]["kind"] == "code" and by_text[" 1: fine"]["reason"] is None
    for n in nodes(r)[1:]:  # every node is valid, or invalid with a reason
        assert (n["kind"] != "invalid") or n["reason"]
    assert r["answer"] == "42" and r["correct"]


def test_hostile_step_cannot_hurt_the_search(sandbox_pool):
    table = {
        1: [" 1: spin forever\nwhile True: pass\n# Step",
            " 1: fork bomb\nimport os\nwhile True: os.fork()\n# Step",
            " 1: ok\nv = 5\n# Step"],
        2: [" 2: answer\nprint(v + 1)\n```"],
    }
    _, [r] = run(sandbox_pool, by_step(table), [Problem("p", "q", "6")], children=3)
    d1 = [n for n in nodes(r) if n["depth"] == 1]
    statuses = sorted(n["status"] for n in d1)
    assert "ok" in statuses and len(d1) == 3
    assert all(n["kind"] == "invalid" for n in d1 if n["status"] != "ok")
    assert r["answer"] == "6" and r["correct"]


def test_wrong_answers_get_minus_one_and_the_value_weighted_vote_follows_the_reward(sandbox_pool):
    table = {
        1: [" 1: a\nprint(10)\n```", " 1: b\nprint(10)\n```", " 1: c\nprint(11)\n```"],
    }
    # Identical candidates are merged, so 3 samples give 2 distinct endings: 10 and 11.
    _, [r] = run(sandbox_pool, by_step(table), [Problem("p", "q", "11")], children=3, rollouts=3)
    finals = [n for n in nodes(r) if n["kind"] == "final"]
    q = {n["answer"]: n["q"] for n in finals}
    assert q["10"] == -1.0 and q["11"] == 1.0
    assert r["pass_at_k"] is True
    # gold values are +1/-1: the value-weighted vote gives "10" weight 0 and "11" weight 1
    assert r["answer"] == "11" and r["selection"]["method"] == "weighted_vote"
    assert r["selection"]["votes"] == 1.0 and r["gold_rewards"] is True


def test_without_gold_the_answer_is_a_vote_and_rewards_are_zero(sandbox_pool):
    table = {1: [" 1: a\nprint(3)\n```", " 1: b\nprint(3)\n```", " 1: c\nprint(4)\n```", " 1: d\nprint(3)\n```"]}
    search, [r] = run(sandbox_pool, by_step(table), [Problem("p", "q", None)], scorer="none", children=4,
                      rollouts=4)
    assert r["answer"] == "3" and r["correct"] is None and r["gold_rewards"] is False
    assert r["selection"]["method"] == "vote" and r["selection"]["agree"] == 3 and r["selection"]["finished"] == 4
    assert all(n["q"] == 0.0 for n in nodes(r) if n["kind"] == "final")


def test_regression_no_gold_never_returns_the_first_answer_found(sandbox_pool):
    """Without a value signal every terminal Q is 0; the old default (highest Q, ties to the lowest
    node id) returned the first answer found. The answer must be the majority's."""
    table = {1: [" 1: a\nprint(5)\n```", " 1: b\nprint(9)\n```", " 1: c\nprint(9)\n```", " 1: d\nprint(9)\n```"]}
    _, [r] = run(sandbox_pool, by_step(table), [Problem("p", "q", "5")], scorer="none", children=4, rollouts=4)
    first = min((n for n in nodes(r) if n["kind"] == "final"), key=lambda n: n["id"])
    assert first["answer"] == "5"                 # the first answer found...
    assert r["answer"] == "9" and r["correct"] is False  # ...is not the one chosen: 3 of 4 say 9
    assert r["selection"] == {"method": "vote", "votes": 3.0, "finished": 4, "agree": 3, "value": None}
    assert r["pass_at_k"] is True and r["num_correct_terminal"] == 1


def test_depth_limit_ends_a_path_as_invalid(sandbox_pool):
    endless = {k: [f" {k}: more\nx{k} = {k}\n# Step"] for k in range(1, 20)}
    _, [r] = run(sandbox_pool, by_step(endless), [Problem("p", "q", "1")], max_depth=3, rollouts=1, children=1)
    deepest = max(nodes(r), key=lambda n: n["depth"])
    assert deepest["depth"] == 3 and deepest["status"] == "max_depth" and "depth limit" in deepest["reason"]
    assert r["answer"] is None and r["correct"] is False


def test_error_threshold_two_lets_a_failing_step_be_followed(sandbox_pool):
    table = {
        1: [" 1: oops\nq = 1 / 0\n# Step"],
        2: [" 2: recover\nq = 2\n# Step"],
        3: [" 3: answer\nprint(q * 3)\n```"],
    }
    _, [r] = run(sandbox_pool, by_step(table), [Problem("p", "q", "6")], error_threshold=2, children=1, rollouts=1)
    first = [n for n in nodes(r) if n["depth"] == 1][0]
    assert first["status"] == "error" and first["kind"] == "code" and first["code"] == ""
    assert r["answer"] == "6" and r["correct"]
    # with the default threshold of 1 the same step is cut and nothing is found
    _, [r1] = run(sandbox_pool, by_step(table), [Problem("p", "q", "6")], children=1, rollouts=1)
    assert r1["answer"] is None and [n for n in nodes(r1) if n["depth"] == 1][0]["kind"] == "invalid"


def test_many_problems_each_give_exactly_one_result(sandbox_pool):
    def script(prompt, n):
        m = re.search(r"ADD (\d+) (\d+)", prompt)
        a, b = int(m.group(1)), int(m.group(2))
        k = step_no(prompt)
        if k == 1:
            return [f" 1: first number\na = {a}\n# Step", f" 1: first number again\na = {a} + 0\n# Step"][:n]
        return [f" {k}: add and print\nprint(a + {b})\n```"] * n
    problems = [Problem(f"p{i}", f"ADD {i} {2 * i}", str(3 * i)) for i in range(11)]
    search, results = run(sandbox_pool, script, problems, concurrent_problems=4, leaves_per_tree=2)
    assert sorted(r["id"] for r in results) == sorted(p.id for p in problems)
    assert all(r["correct"] for r in results)
    assert search.info == {}  # the text of finished trees is freed
    assert search.expansions == sum(r["nodes"] - 1 for r in results)


def test_greedy_preset_is_one_path(sandbox_pool):
    from rstar.search import preset

    cfg = preset("greedy")
    search = MCTS(ScriptedPolicy(by_step(GOOD)), T, sandbox_pool, cfg, scorer=load_scorer("gold"))
    r = search.solve(Problem("p", "q", "72"))
    assert r["nodes"] == 4 and r["rollouts"] == 1 and r["correct"]


def test_a_search_process_exits_cleanly(sandbox_pool):
    """A static Python object in the core's bindings once crashed every search process at exit."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from test_search import *\n"
        "from rstar.sandbox import SandboxPool\n"
        "from rstar.search import preset\n"
        "with SandboxPool(size=1) as pool:\n"
        "    r = MCTS(ScriptedPolicy(by_step(GOOD)), T, pool, preset('greedy')).solve(Problem('p', 'q', '72'))\n"
        "print(r['answer'])\n"
    ) % str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip().endswith("72")
