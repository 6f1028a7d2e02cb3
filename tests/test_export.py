"""`rstar export`: trees -> SFT traces, PPM pairs, Step-DPO pairs, value targets, on hand-built
trees whose expected records were worked out by hand (the tree is drawn in test_trace.py)."""

import json
import pytest

from rstar import export, trace
from rstar.errors import DataError
from test_trace import PROMPT, ans, node, record, tree_a, tree_no_correct


def rec_a():
    return trace.load_trace(tree_a())


def step_pairs(pairs):
    return [p for p in pairs if p["kind"] == "step"]


def test_ppm_pairs_follow_rstars_rule():
    rec = rec_a()
    pairs = step_pairs(export.ppm_pairs(rec, run="R"))
    got = [tuple(p["nodes"]) for p in pairs]
    # root: chosen 1 (the only child leading to a correct answer) vs the wrong-only child 2; child 3 is a
    #   cut step (its code failed before any scorer saw it): no pair (issue 18; it used to give (0, 1, 3))
    # node 1: chosen 4 (q 1) and 6 (q 0, leads to a correct answer too) vs wrong-only 5 (q -1) and 10 (q -0.4):
    #   (6, 10) has margin 0.4 < 0.5: dropped
    # node 6: 8 vs 9 has margin 2 but the steps differ by an edit distance of 4 < 20: dropped
    assert got == [(0, 1, 2), (1, 4, 5), (1, 4, 10), (1, 6, 5)]
    ns = rec["tree"]["nodes"]
    assert [p["weight"] for p in pairs] == [1.0, 1 / 3, 1 / 3, 1 / 3]
    assert [p["margin"] for p in pairs] == pytest.approx([1.2, 2.0, 1.4, 1.0])
    p = pairs[1]
    assert p["prompt"] == PROMPT + ns[1]["shown"]      # question + shared prefix, as the policy saw it
    assert p["chosen"] == ns[4]["shown"] and p["rejected"] == ns[5]["shown"]
    assert p["final"] is True and pairs[0]["final"] is False
    assert p["run"] == "R" and p["problem"] == "p1"
    assert pairs[0]["prompt"] == PROMPT


def test_ppm_pair_thresholds_are_settings():
    rec = rec_a()
    loose = step_pairs(export.ppm_pairs(rec, cfg=export.ExportConfig(min_margin=0.0, min_edit=0)))
    assert [tuple(p["nodes"]) for p in loose] == [(0, 1, 2), (1, 4, 5), (1, 4, 10), (1, 6, 5),
                                                  (1, 6, 10), (6, 8, 9)]
    strict = step_pairs(export.ppm_pairs(rec, cfg=export.ExportConfig(min_margin=1.5)))
    assert [tuple(p["nodes"]) for p in strict] == [(1, 4, 5)]
    assert strict[0]["weight"] == 1.0


def test_ppm_takes_top_two_per_side_and_four_against_a_single_one():
    # root with 5 correct answers (q 1.0, 0.9, ...) and 1 wrong: 4 chosen (top-4) vs the wrong one
    ns = [node(0, -1, 0, 0.5, 6, "", kind="root")]
    for i, q in enumerate([0.6, 1.0, 0.8, 0.9, 0.7], start=1):
        ns.append(ans(i, 0, 1, q, 1, 7, True, text=f"# way number {i} of getting there\nprint({i} + 7 - {i})\n"))
    ns.append(ans(6, 0, 1, -1.0, 1, 9, False, text="# something else entirely, and wrong\nprint(9)\n"))
    pairs = step_pairs(export.ppm_pairs(trace.load_trace(record(ns))))
    assert [tuple(p["nodes"]) for p in pairs] == [(0, 2, 6), (0, 4, 6), (0, 3, 6), (0, 5, 6)]
    # two wrong ones: top-2 vs both
    ns.append(ans(7, 0, 1, -0.5, 2, 8, False, text="# yet another wrong approach here\nprint(8)\n"))
    pairs = step_pairs(export.ppm_pairs(trace.load_trace(record(ns))))
    assert [tuple(p["nodes"]) for p in pairs] == [(0, 2, 6), (0, 2, 7), (0, 4, 6), (0, 4, 7)]


def test_step_dpo_pairs_reject_the_first_wrong_step():
    rec = rec_a()
    ns = rec["tree"]["nodes"]
    pairs = export.step_dpo_pairs(rec, run="R")
    assert [tuple(p["nodes"]) for p in pairs] == [(0, 1, 2), (0, 1, 3), (1, 4, 5), (1, 4, 10), (6, 8, 9)]
    assert [p["rejected_reason"] for p in pairs] == ["wrong", "failed", "wrong", "wrong", "wrong"]
    last = pairs[-1]
    # prompt = question + the correct steps before the first wrong one (shown, as the policy saw them)
    assert last["prompt"] == PROMPT + ns[1]["shown"] + ns[6]["shown"]
    assert last["chosen"] == ns[8]["text"] and last["rejected"] == ns[9]["text"]
    assert last["initial_reason_steps"] == ns[1]["text"] + ns[6]["text"]
    assert pairs[1]["rejected"] == ns[3]["text"]       # the step whose code failed


def test_sft_keeps_correct_traces_without_errors_by_mean_then_min_q():
    rec = rec_a()
    ns = rec["tree"]["nodes"]
    sft = export.sft_records(rec, run="R")
    # correct endings are 4 and 8; the path to 8 passes through the failed step 6: left out
    assert [r["nodes"] for r in sft] == [[1, 4]]
    assert sft[0]["prompt"] == PROMPT
    assert sft[0]["completion"] == ns[1]["shown"] + ns[4]["shown"]
    assert sft[0]["mean_q"] == pytest.approx(0.6) and sft[0]["min_q"] == pytest.approx(0.2)

    # three clean correct traces: mean Q 0.5, 0.5 and 0.6; the tie is broken by min Q
    t = [node(0, -1, 0, 0.5, 9, "", kind="root"),
         node(1, 0, 1, 0.0, 3, "a = 1\n"), node(2, 0, 1, 0.2, 3, "b = 2\n"),
         ans(3, 1, 2, 1.0, 1, 7, True),                  # mean 0.5, min 0.0
         ans(4, 2, 2, 0.8, 1, 7, True),                  # mean 0.5, min 0.2
         ans(5, 2, 2, 1.0, 1, 7, True)]                  # mean 0.6, min 0.2
    sft = export.sft_records(trace.load_trace(record(t)))
    assert [r["nodes"] for r in sft] == [[2, 5], [2, 4]]
    three = export.sft_records(trace.load_trace(record(t)), cfg=export.ExportConfig(sft_per_problem=3))
    assert [r["nodes"][-1] for r in three] == [5, 4, 3]


def test_values_are_every_visited_step_with_its_q():
    rec = rec_a()
    vals = export.value_records(rec, run="R")
    # 12 never visited, root not a step, 3 a cut step (its failed code was never scored; issue 18)
    assert [v["nodes"] for v in vals] == [[i] for i in range(1, 12) if i != 3]
    by = {v["nodes"][0]: v for v in vals}
    assert by[10]["q"] == pytest.approx(-0.4) and by[2]["q"] == -1.0
    ns = rec["tree"]["nodes"]
    assert by[9]["prompt"] + by[9]["completion"] == trace.path_text(rec, 9)
    assert by[9]["completion"] == ns[9]["shown"]


def _run_dir(tmp_path, *records):
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def test_export_run_writes_all_four_files_with_provenance(tmp_path):
    second = tree_a()
    second["id"] = "p2"
    d = _run_dir(tmp_path, tree_a(), tree_no_correct(), second)
    out = tmp_path / "data"
    s = export.export_run(d, out)
    assert (s["problems"], s["solved"]) == (3, 2)
    # per tree_a: 4 step pairs + 4 solution pairs (the cut step 3 gives none; issue 18)
    assert (s["sft"], s["ppm_pairs"], s["step_dpo"]) == (2, 16, 10)
    assert (s["step_pairs"], s["solution_pairs"], s["cut_steps"]) == (8, 8, 3)
    # the problem without a correct answer still gives value targets (its answered step; the other is cut)
    assert s["values"] == 10 * 2 + 1
    for k in export.KINDS:
        rows = [json.loads(line) for line in (out / f"{k}.jsonl").read_text().splitlines()]
        assert len(rows) == s[k]
        assert all(r["run"] == str(d.resolve()) and r["problem"] in ("p1", "p2", "p-none") and r["nodes"]
                   for r in rows)
    assert json.loads((out / "export.json").read_text())["ppm_pairs"] == 16
    assert json.loads((out / "export.json").read_text())["cut_steps"] == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_export_errors_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "data"
    with pytest.raises(DataError, match="no such run directory"):
        export.export_run(tmp_path / "nope", out)
    d = _run_dir(tmp_path, tree_no_correct())
    with pytest.raises(DataError, match="no correct solution anywhere in 1 searched problem"):
        export.export_run(d, out)
    bad = tree_a()
    bad["schema"] = 3
    (d / "results.jsonl").write_text(json.dumps(tree_a()) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"results.jsonl:2: trace schema 3"):
        export.export_run(d, out)
    assert not out.exists() or not list(out.iterdir())


def test_export_of_a_schema_1_run_without_prompts_fails_cleanly(tmp_path):
    from test_trace import _schema1

    d = _run_dir(tmp_path, _schema1(tree_a()))
    out = tmp_path / "data"
    out.mkdir()
    (out / "sft.jsonl").write_text("old\n")
    with pytest.raises(DataError, match=r"results.jsonl:1: .*no prompt prefix"):
        export.export_run(d, out)
    assert (out / "sft.jsonl").read_text() == "old\n"       # an earlier export is left untouched
    assert sorted(p.name for p in out.iterdir()) == ["sft.jsonl"]


def test_cli_export_prints_counts_and_one_line_errors(tmp_path, capsys):
    from rstar.cli import main

    d = _run_dir(tmp_path, tree_a())
    assert main(["export", str(d), "--out", str(tmp_path / "o"), "--no-progress", "--min-margin", "1.5"]) == 0
    printed = capsys.readouterr().out
    assert "5 PPM pairs (1 step, 4 solution)" in printed and "1 cut steps" in printed
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no such run directory" in err


# ---------------------------------------------------------------- issue 18: solution pairs, cut steps, MCTSr

def test_solution_pairs_top_two_correct_by_mean_q_against_bottom_two_wrong():
    rec = rec_a()
    ns = rec["tree"]["nodes"]
    sols = [p for p in export.ppm_pairs(rec, run="R") if p["kind"] == "solution"]
    # finished solutions of tree_a and the mean Q of their paths (root left out):
    #   correct: 4 = (0.2 + 1) / 2 = 0.6;  8 = (0.2 + 0 + 1) / 3 = 0.4
    #   wrong:   7 = (-1 - 1) / 2 = -1.0;  5 = (0.2 - 1) / 2 = -0.4;  11 = (0.2 - 0.4 - 1) / 3 = -0.4 (a tie,
    #            to the lower id: 5);  9 = (0.2 + 0 - 1) / 3 = -0.27
    assert [tuple(p["nodes"]) for p in sols] == [(0, 4, 7), (0, 4, 5), (0, 8, 7), (0, 8, 5)]
    assert [p["q_chosen"] for p in sols] == pytest.approx([0.6, 0.6, 0.4, 0.4])
    assert [p["q_rejected"] for p in sols] == pytest.approx([-1.0, -0.4, -1.0, -0.4])
    assert [p["weight"] for p in sols] == [0.25] * 4
    first = sols[0]
    assert first["prompt"] == PROMPT                                   # the question's prompt
    assert first["chosen"] == ns[1]["shown"] + ns[4]["shown"]          # the whole solutions, as shown
    assert first["rejected"] == ns[2]["shown"] + ns[7]["shown"]
    assert sols[2]["chosen"] == ns[1]["shown"] + ns[6]["shown"] + ns[8]["shown"]
    assert first["final"] is True and first["problem"] == "p1" and first["run"] == "R"
    # the record format of step pairs, with its kind marked
    step = [p for p in export.ppm_pairs(rec) if p["kind"] == "step"][0]
    assert set(first) == set(step)


def test_solution_pairs_need_both_a_correct_and_a_wrong_solution():
    assert [p for p in export.ppm_pairs(trace.load_trace(tree_no_correct())) if p["kind"] == "solution"] == []
    ns = [node(0, -1, 0, 1.0, 2, "", kind="root"),
          ans(1, 0, 1, 1.0, 1, 7, True), ans(2, 0, 1, 1.0, 1, 7, True, text="# another way\nprint(3 + 4)\n")]
    assert export.ppm_pairs(trace.load_trace(record(ns))) == []


def crash_tree():
    """0 root
    |- 1 code  q -1/3 v3: 3 correct (q 1), 4 wrong (q -1), 5 cut: its code failed (q -1)
    |- 2 code  q 0    v2: 6 correct (q 1), 7 cut: did not parse (q -1)
    '- 8 code  q -1   v1: 9 cut: timed out (q -1)      -- its only "ending" is a crash
    """
    long = "# {} so that the texts differ by far more than twenty edits\n"
    ns = [node(0, -1, 0, -1 / 6, 6, "", kind="root"),
          node(1, 0, 1, -1 / 3, 3, long.format("first count the apples") + "a = 3\n"),
          node(2, 0, 1, 0.0, 2, long.format("add what he buys") + "b = 3 + 4\n"),
          ans(3, 1, 2, 1.0, 1, 7, True),
          ans(4, 1, 2, -1.0, 1, 9, False, text=long.format("a wrong total") + "print(a + 6)\n"),
          node(5, 1, 2, -1.0, 1, "print(a / 0)\n", kind="invalid", status="error"),
          ans(6, 2, 2, 1.0, 1, 7, True, text="print(b)\n"),
          node(7, 2, 2, -1.0, 1, "print(b\n", kind="invalid", status="parse_error"),
          node(8, 0, 1, -1.0, 1, long.format("set up a loop") + "n = 0\n"),
          node(9, 8, 2, -1.0, 1, "while True:\n    n += 1\n", kind="invalid", status="timeout")]
    return trace.load_trace(record(ns, pid="crash"))


def test_cut_steps_are_no_pairs_and_do_not_label_their_parent_wrong():
    rec = crash_tree()
    steps = [tuple(p["nodes"]) for p in export.ppm_pairs(rec) if p["kind"] == "step"]
    # old rule: (0, 2, 8) and (0, 1, 8) (node 8 "wrong" only because its one child crashed), (1, 3, 5)
    # and (2, 6, 7) (crashed siblings as rejected steps). Now: 8 has no label, 5 / 7 / 9 are no steps.
    assert steps == [(1, 3, 4)]
    assert export.cut_steps(rec) == [5, 7, 9]
    q = export.clean_q(rec)
    # Q with the cut descendants' -1 back-ups taken out, (W - W_cut) / (N - N_cut):
    # node 1 (-1/3 * 3 + 1) / (3 - 1) = 0; node 2 (0 * 2 + 1) / (2 - 1) = 1; node 8 had only its crash: no Q
    assert q[1] == pytest.approx(0.0) and q[2] == pytest.approx(1.0) and q[8] is None
    assert q[5] is None and q[3] == 1.0
    vals = export.value_records(rec)
    assert [v["nodes"][0] for v in vals] == [1, 2, 3, 4, 6]
    assert {v["nodes"][0]: v["q"] for v in vals}[1] == pytest.approx(0.0)
    out = export.clean_outcomes(rec)
    assert not out[8].known and (out[1].correct, out[1].wrong) == (1, 1) and (out[2].correct, out[2].wrong) == (1, 0)


def test_a_finished_solution_without_an_answer_stays_a_wrong_ending():
    ns = [node(0, -1, 0, 0.0, 2, "", kind="root"),
          ans(1, 0, 1, 1.0, 1, 7, True),
          node(2, 0, 1, -1.0, 1, "# the total, printed nowhere at all in the end\nt = 7\n", kind="invalid",
               status="no_answer")]
    rec = trace.load_trace(record(ns))
    assert export.cut_steps(rec) == []
    assert [tuple(p["nodes"]) for p in export.ppm_pairs(rec) if p["kind"] == "step"] == [(0, 1, 2)]


def test_export_summary_counts_cut_steps(tmp_path):
    d = _run_dir(tmp_path, tree_a(), crash_tree())
    s = export.export_run(d, tmp_path / "data")
    assert s["cut_steps"] == 1 + 3
    vals = [json.loads(x) for x in (tmp_path / "data" / "values.jsonl").read_text().splitlines()]
    ids = {(v["problem"], v["nodes"][0]) for v in vals}
    assert ("p1", 3) not in ids and ("crash", 8) not in ids and ("crash", 9) not in ids


REWRITE = "<|im_start|>user\nQuestion ... An earlier attempt ... A critique ... Write a better solution.<|im_end|>\n"


def mctsr_tree():
    """An MCTSr tree: whole solutions; 1 the zero-shot answer (correct), 2 the dummy, 3 a rewrite of 1
    written after a critique prompt (wrong)."""
    def whole(i, parent, q, text, answer, correct, prompt):
        n = node(i, parent, 1 if parent == 0 else 2, q, 1, text, kind="whole", answer=answer, correct=correct,
                 terminal_kind="answer" if answer else None)
        if prompt is not None:
            n["prompt"] = prompt
        return n
    ns = [node(0, -1, 0, -1.0, 3, "", kind="root"),
          whole(1, 0, 0.4, "# add\nprint(3 + 4)\n", "7", True, PROMPT),
          whole(2, 0, -1.0, "I don't know.", None, None, None),
          whole(3, 1, -0.2, "# the critique says to double everything\nprint((3 + 4) * 2)\n", "14", False,
                REWRITE)]
    rec = record(ns, pid="m")
    rec["algo"] = "mctsr"
    return trace.load_trace(rec)


def test_mctsr_exports_what_the_search_scored():
    """MCTSr scores a node as the question's prompt + its shown text (rstar/search/mctsr.py _rate);
    its export used the node's own critique-and-rewrite prompt."""
    rec = mctsr_tree()
    ns = rec["tree"]["nodes"]
    vals = {v["nodes"][0]: v for v in export.value_records(rec)}
    assert vals[3]["prompt"] == PROMPT and vals[3]["completion"] == ns[3]["shown"]
    assert vals[1]["prompt"] == PROMPT
    [pair] = [p for p in export.ppm_pairs(rec) if p["kind"] == "solution"]
    assert pair["nodes"] == [0, 1, 3] and pair["prompt"] == PROMPT
    # a rewrite replaces its parent: the solution is the node alone, not the path through its parent
    assert pair["chosen"] == ns[1]["shown"] and pair["rejected"] == ns[3]["shown"]
    [sft] = export.sft_records(rec)
    assert sft["prompt"] == PROMPT and sft["completion"] == ns[1]["shown"]
