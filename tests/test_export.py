"""`rstar export`: trees -> SFT traces, PPM pairs, Step-DPO pairs, value targets, on hand-built
trees whose expected records were worked out by hand (the tree is drawn in test_trace.py)."""

import json
import pytest

from rstar import export, trace
from rstar.errors import DataError
from test_trace import PROMPT, ans, node, record, tree_a, tree_no_correct


def rec_a():
    return trace.load_trace(tree_a())


def test_ppm_pairs_follow_rstars_rule():
    rec = rec_a()
    pairs = export.ppm_pairs(rec, run="R")
    got = [tuple(p["nodes"]) for p in pairs]
    # root: chosen 1 (the only child leading to a correct answer) vs the two wrong-only children 2 and 3
    # node 1: chosen 4 (q 1) and 6 (q 0, leads to a correct answer too) vs wrong-only 5 (q -1) and 10 (q -0.4):
    #   (6, 10) has margin 0.4 < 0.5: dropped
    # node 6: 8 vs 9 has margin 2 but the steps differ by an edit distance of 4 < 20: dropped
    assert got == [(0, 1, 2), (0, 1, 3), (1, 4, 5), (1, 4, 10), (1, 6, 5)]
    ns = rec["tree"]["nodes"]
    assert [p["weight"] for p in pairs] == [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]
    assert [p["margin"] for p in pairs] == pytest.approx([1.2, 1.2, 2.0, 1.4, 1.0])
    p = pairs[2]
    assert p["prompt"] == PROMPT + ns[1]["shown"]      # question + shared prefix, as the policy saw it
    assert p["chosen"] == ns[4]["shown"] and p["rejected"] == ns[5]["shown"]
    assert p["final"] is True and pairs[0]["final"] is False
    assert p["run"] == "R" and p["problem"] == "p1"
    assert pairs[0]["prompt"] == PROMPT


def test_ppm_pair_thresholds_are_settings():
    rec = rec_a()
    loose = export.ppm_pairs(rec, cfg=export.ExportConfig(min_margin=0.0, min_edit=0))
    assert [tuple(p["nodes"]) for p in loose] == [(0, 1, 2), (0, 1, 3), (1, 4, 5), (1, 4, 10), (1, 6, 5),
                                                  (1, 6, 10), (6, 8, 9)]
    strict = export.ppm_pairs(rec, cfg=export.ExportConfig(min_margin=1.5))
    assert [tuple(p["nodes"]) for p in strict] == [(1, 4, 5)]
    assert strict[0]["weight"] == 1.0


def test_ppm_takes_top_two_per_side_and_four_against_a_single_one():
    # root with 5 correct answers (q 1.0, 0.9, ...) and 1 wrong: 4 chosen (top-4) vs the wrong one
    ns = [node(0, -1, 0, 0.5, 6, "", kind="root")]
    for i, q in enumerate([0.6, 1.0, 0.8, 0.9, 0.7], start=1):
        ns.append(ans(i, 0, 1, q, 1, 7, True, text=f"# way number {i} of getting there\nprint({i} + 7 - {i})\n"))
    ns.append(ans(6, 0, 1, -1.0, 1, 9, False, text="# something else entirely, and wrong\nprint(9)\n"))
    pairs = export.ppm_pairs(trace.load_trace(record(ns)))
    assert [tuple(p["nodes"]) for p in pairs] == [(0, 2, 6), (0, 4, 6), (0, 3, 6), (0, 5, 6)]
    # two wrong ones: top-2 vs both
    ns.append(ans(7, 0, 1, -0.5, 2, 8, False, text="# yet another wrong approach here\nprint(8)\n"))
    pairs = export.ppm_pairs(trace.load_trace(record(ns)))
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
    assert [v["nodes"] for v in vals] == [[i] for i in range(1, 12)]   # 12 never visited, root not a step
    by = {v["nodes"][0]: v for v in vals}
    assert by[10]["q"] == pytest.approx(-0.4) and by[3]["q"] == -1.0
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
    assert (s["sft"], s["ppm_pairs"], s["step_dpo"]) == (2, 10, 10)
    # the problem without a correct answer still gives value targets (its 2 steps)
    assert s["values"] == 11 * 2 + 2
    for k in export.KINDS:
        rows = [json.loads(line) for line in (out / f"{k}.jsonl").read_text().splitlines()]
        assert len(rows) == s[k]
        assert all(r["run"] == str(d.resolve()) and r["problem"] in ("p1", "p2", "p-none") and r["nodes"]
                   for r in rows)
    assert json.loads((out / "export.json").read_text())["ppm_pairs"] == 10
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
    assert "1 PPM pairs" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no such run directory" in err
