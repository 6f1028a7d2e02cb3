"""Scorers: gold outcome, none, MCTSr's self-evaluation grade parser, and the spec loader."""

import pytest

from rstar.errors import RstarError
from rstar.policy.scripted import ScriptedPolicy
from rstar.scorers import GoldScorer, NoScorer, ScoreItem, SelfEvalScorer, load_scorer, parse_grade


def item(answer, gold, finished=True):
    return ScoreItem(question="q", steps=["s"], prompt="p s", finished=finished, answer=answer, gold=gold)


def test_gold_scorer_is_plus_minus_one_and_none_for_partial_or_ungraded():
    s = GoldScorer()
    vals = s.score([item("72", "72"), item("71", "72"), item(None, "72"), item("72", "72", finished=False),
                    item("72", None)])
    assert vals == [1.0, -1.0, -1.0, None, None]
    assert s.needs_gold and not s.scores_partial


def test_no_scorer_gives_no_value():
    assert NoScorer().score([item("1", "1"), item("2", None)]) == [None, None]


@pytest.mark.parametrize("text,grade", [
    ("The code is right.\nScore: 80", 80.0),
    ("Several flaws.\nScore: -35", -35.0),
    ("Perfect!\nScore: 100", 50.0),          # no full marks: >= 95 is replaced by 50
    ("Score: 95", 50.0),
    ("Score: 94.5", 94.5),
    ("**Score:** 60", 60.0),
    ("I would give it\n70", 70.0),           # a lone number on the last line
    ("Score: 250", None),                    # out of range
    ("no grade here", None),
    ("between 10 and 20", None),             # two numbers on the last line: ambiguous
    ("", None),
])
def test_self_evaluation_grades_parse_robustly(text, grade):
    assert parse_grade(text) == grade


def test_self_scorer_averages_parsed_grades_and_reports_unparsed_ones():
    replies = iter(["Score: 40", "nonsense", "Score: 60"])
    policy = ScriptedPolicy(lambda prompt, n: [next(replies) for _ in range(n)])
    s = SelfEvalScorer(policy, samples=3)
    [v, partial] = s.score([item("7", None), item(None, None, finished=False)])
    assert v == pytest.approx(0.5) and partial is None
    assert s.unparsed == 1 and s.graded == 3


def test_self_scorer_with_no_parsable_grade_gives_none_not_zero():
    s = SelfEvalScorer(ScriptedPolicy("I refuse to grade."), samples=2)
    assert s.score([item("7", None)]) == [None]
    assert s.unparsed == 2


def test_load_scorer_specs_and_errors():
    assert load_scorer("gold").name == "gold"
    assert load_scorer("none").name == "none"
    assert load_scorer("self", policy=ScriptedPolicy("Score: 1")).name == "self"
    with pytest.raises(RstarError, match="unknown scorer"):
        load_scorer("oracle")
    with pytest.raises(RstarError, match="needs the policy"):
        load_scorer("self")
