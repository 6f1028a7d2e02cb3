"""The trace loader and tree helpers (rstar.trace), on hand-built schema-2 records.

The builders here are shared with test_export.py and test_ppm.py.

``tree_a()`` is drawn here with every node's Q, so the expected exports can be
computed by hand (tests/test_export.py does):

    0 root
    |- 1  code  q  0.2  v5   "total apples ..."              correct 2, wrong 3
    |  |- 4  answer CORRECT q  1.0 v2
    |  |- 5  answer wrong   q -1.0 v1
    |  |- 6  code (tolerated error) q 0.0 v2                  correct 1, wrong 1
    |  |  |- 8  answer CORRECT q 1.0 v1
    |  |  '- 9  answer wrong   q -1.0 v1   (text within edit distance 20 of 8)
    |  '- 10 code q -0.4 v2                                   wrong 1
    |     |- 11 answer wrong q -1.0 v1
    |     '- 12 code, never visited (q null)
    |- 2  code  q -1.0 v2                                     wrong 1
    |  '- 7  answer wrong q -1.0 v2
    '- 3  invalid (code failed) q -1.0 v1                     a dead end: wrong 1
"""

from __future__ import annotations

import json

import pytest

from rstar import trace
from rstar.errors import DataError

PROMPT = "<|im_start|>user\nTom has 3 apples and buys 4 more. How many?<|im_end|>\n<|im_start|>assistant\n"


def node(i, parent, depth, q, visits, text, kind="code", status="ok", answer=None, correct=None,
         shown=None, terminal_kind=None):
    return {"id": i, "parent": parent, "depth": depth, "visits": visits, "q": q, "value": None,
            "prior": 1.0, "terminal": terminal_kind is not None or kind == "invalid",
            "terminal_kind": terminal_kind, "kind": kind, "status": status,
            "reason": "NameError: x" if kind == "invalid" else None,
            "text": text, "shown": text if shown is None else shown, "code": text if status == "ok" else "",
            "output": "", "answer": answer, "correct": correct, "tokens": 10, "logprob": -3.0}


def ans(i, parent, depth, q, visits, value, correct, text=None):
    return node(i, parent, depth, q, visits, text or f"print(f'The answer is {value}')\n", kind="final",
                answer=str(value), correct=correct, terminal_kind="answer")


def record(nodes, pid="p1", question="Tom has 3 apples and buys 4 more. How many?", gold="7"):
    return {"schema": 2, "id": pid, "index": 0, "question": question, "gold": gold, "answer": None,
            "correct": None, "grade": None, "selection": {"method": "vote", "votes": 1.0, "finished": 1, "value": None},
            "chosen": None, "pass_at_k": True, "num_terminal": 0, "num_correct_terminal": 0,
            "num_unknown_terminal": 0, "rollouts": 6, "rounds": 3, "nodes": len(nodes), "tokens": 100,
            "time": {}, "algo": "mcts", "scorer": "gold", "model": "test", "template": "default", "seed": 0,
            "gold_rewards": True, "solution": [], "prompt": PROMPT, "tree": {"nodes": nodes}}


def tree_a() -> dict:
    n = [
        node(0, -1, 0, 0.0, 8, "", kind="root"),
        node(1, 0, 1, 0.2, 5, "# the apples Tom has after buying more\ntotal = 3 + 4\n",
             shown="# the apples Tom has after buying more\ntotal = 3 + 4\n[out: 7]\n"),
        node(2, 0, 1, -1.0, 2, "# he gives away some apples first, which the question never says\nleft = 3 - 4\n"),
        node(3, 0, 1, -1.0, 1, "total = apples_tom + 4\n", kind="invalid", status="error"),
        ans(4, 1, 2, 1.0, 2, 7, True),
        ans(5, 1, 2, -1.0, 1, 12, False, text="# multiply instead\nprint(total * 12 // 7 + 5)\n"),
        node(6, 1, 2, 0.0, 2, "print(undefined_name)\n", status="error"),
        ans(7, 2, 2, -1.0, 2, -1, False),
        ans(8, 6, 3, 1.0, 1, 7, True, text="print(total)\n"),
        ans(9, 6, 3, -1.0, 1, 8, False, text="print(total + 1)\n"),
        node(10, 1, 2, -0.4, 2, "# double it because the apples come in pairs\ntotal = total * 2\n"),
        ans(11, 10, 3, -1.0, 1, 14, False),
        node(12, 10, 3, None, 0, "# never visited\nx = 1\n"),
    ]
    return record(n)


def tree_no_correct() -> dict:
    n = [node(0, -1, 0, -1.0, 2, "", kind="root"),
         ans(1, 0, 1, -1.0, 1, 5, False),
         node(2, 0, 1, -1.0, 1, "oops(\n", kind="invalid", status="parse_error")]
    return record(n, pid="p-none")


# ---------------------------------------------------------------- tests

def test_children_paths_and_outcomes_of_the_drawn_tree():
    rec = trace.load_trace(tree_a())
    kids = trace.children(rec)
    assert kids[0] == [1, 2, 3] and kids[1] == [4, 5, 6, 10] and kids[6] == [8, 9] and kids[12] == []
    assert trace.path(rec, 9) == [0, 1, 6, 9]
    out = trace.outcomes(rec)
    assert (out[0].correct, out[0].wrong) == (2, 5)
    assert (out[1].correct, out[1].wrong) == (2, 3)
    assert (out[6].correct, out[6].wrong) == (1, 1)
    assert (out[2].correct, out[2].wrong) == (0, 1)
    assert (out[3].correct, out[3].wrong) == (0, 1)      # a cut step is a wrong ending
    assert (out[10].correct, out[10].wrong) == (0, 1)
    assert not out[12].known                              # never visited: no ending below
    assert trace.correct_endings(rec) == [4, 8]
    assert trace.is_failed(rec["tree"]["nodes"][6]) and trace.is_failed(rec["tree"]["nodes"][3])
    assert not trace.is_failed(rec["tree"]["nodes"][1])


def test_node_prompt_is_prefix_plus_shown_texts_of_ancestors():
    rec = trace.load_trace(tree_a())
    ns = rec["tree"]["nodes"]
    assert trace.node_prompt(rec, 1) == PROMPT
    # node 1's shown text (with its output block) is what node 4's prompt continues from
    assert trace.node_prompt(rec, 4) == PROMPT + ns[1]["shown"]
    assert ns[1]["shown"] != ns[1]["text"]
    assert trace.node_prompt(rec, 9) == PROMPT + ns[1]["shown"] + ns[6]["shown"]
    assert trace.path_text(rec, 9) == PROMPT + ns[1]["shown"] + ns[6]["shown"] + ns[9]["shown"]


def test_unknown_grades_are_no_ending():
    rec = tree_a()
    rec["tree"]["nodes"][4]["correct"] = None      # the grader could not decide
    out = trace.outcomes(trace.load_trace(rec))
    assert (out[1].correct, out[1].wrong) == (1, 3)


def _schema1(rec):
    old = json.loads(json.dumps(rec))
    for k in ("schema", "prompt", "grade", "chosen", "num_unknown_terminal", "algo", "scorer", "template"):
        old.pop(k, None)
    old["selection"] = "vote"
    for n in old["tree"]["nodes"]:
        for k in ("shown", "terminal_kind", "value", "logprob"):
            n.pop(k, None)
    return old


def test_schema_1_is_upgraded_where_the_data_allows():
    old = _schema1(tree_a())
    rec = trace.load_trace(old, "results.jsonl:3")
    assert rec["schema"] == 2 and rec["upgraded_from"] == 1
    assert "schema" not in old                       # the input is not modified
    ns = rec["tree"]["nodes"]
    assert ns[4]["terminal_kind"] == "answer" and ns[1]["terminal_kind"] is None
    assert ns[1]["shown"] == ns[1]["text"]
    assert rec["selection"]["method"] == "vote"
    assert trace.correct_endings(rec) == [4, 8]
    with pytest.raises(DataError, match="schema-1 trace"):
        trace.node_prompt(rec, 4)


def test_unknown_schema_and_broken_trees_are_one_line_errors():
    rec = tree_a()
    rec["schema"] = 7
    with pytest.raises(DataError, match=r"results.jsonl:5: trace schema 7 is not readable") as e:
        trace.load_trace(rec, "results.jsonl:5")
    assert "\n" not in str(e.value)
    rec = tree_a()
    del rec["tree"]
    with pytest.raises(DataError, match="no search tree"):
        trace.load_trace(rec)
    rec = tree_a()
    rec["tree"]["nodes"][4]["parent"] = 9
    with pytest.raises(DataError, match=r"tree.nodes\[4\] has parent 9"):
        trace.load_trace(rec)
    with pytest.raises(DataError, match="not a JSON object"):
        trace.load_trace([1, 2])


def test_iter_results_names_file_and_line(tmp_path):
    with pytest.raises(DataError, match="no such run directory"):
        list(trace.iter_results(tmp_path / "missing"))
    with pytest.raises(DataError, match="no results file"):
        list(trace.iter_results(tmp_path))
    f = tmp_path / "results.jsonl"
    f.write_text(json.dumps(tree_a()) + "\n{broken\n" + json.dumps(tree_a()) + "\n")
    with pytest.raises(DataError, match=r"results.jsonl:2: not valid JSON"):
        list(trace.iter_results(tmp_path))
    # a last line cut mid-write (a killed run) is not a finished problem: skipped
    f.write_text(json.dumps(tree_a()) + "\n" + json.dumps(tree_a())[:50])
    assert [w.rsplit(":", 1)[1] for w, _ in trace.iter_results(tmp_path)] == ["1"]
