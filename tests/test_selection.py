"""Answer selection as pure functions: hand-checked winners, supports and tie rules."""

import pytest

from rstar.selection import Candidate, best_value, majority_vote, select, topk_vote, weighted_vote


def C(answer, value=None):
    return Candidate(answer, value)


def test_majority_vote_groups_equivalent_answers_and_counts_agreement():
    cands = [C("72"), C("72.0"), C("70"), C("\\frac{144}{2}")]
    s = majority_vote(cands)
    assert s.method == "vote" and s.answer == "72" and s.index == 0
    assert s.agree == 3 and s.finished == 4 and s.votes == 3.0


def test_majority_vote_tie_goes_to_the_group_seen_first():
    s = majority_vote([C("5"), C("6"), C("6"), C("5")])
    assert s.answer == "5" and s.agree == 2


def test_no_value_signal_never_picks_arbitrarily_auto_votes():
    # the first answer found is "1" but three of four say "2": the old "highest Q, lowest id" rule picked "1"
    cands = [C("1"), C("2"), C("2"), C("2")]
    s = select(cands, "auto")
    assert s.method == "vote" and s.answer == "2" and s.agree == 3


def test_auto_with_values_is_a_value_weighted_vote():
    # two low-valued votes for "8" lose to one confident "9": weights (v+1)/2 = 0.1 + 0.1 < 0.95
    cands = [C("8", -0.8), C("8", -0.8), C("9", 0.9)]
    s = select(cands, "auto")
    assert s.method == "weighted_vote" and s.answer == "9"
    assert s.votes == pytest.approx(0.95) and s.agree == 1
    assert majority_vote(cands).answer == "8"


def test_best_value_takes_the_highest_value_and_ties_to_the_earliest():
    cands = [C("3", 0.2), C("4", 0.7), C("5", 0.7), C("3", 0.1)]
    s = best_value(cands)
    assert s.answer == "4" and s.index == 1 and s.value == 0.7 and s.agree == 1


def test_topk_vote_votes_among_the_best_by_value_only():
    cands = [C("1", 0.9), C("2", -0.5), C("2", -0.4), C("2", -0.3), C("1", 0.8), C("3", 0.7)]
    s = topk_vote(cands, k=3)  # top 3 by value: 1 (0.9), 1 (0.8), 3 (0.7)
    assert s.answer == "1" and s.votes == 2.0
    assert majority_vote(cands).answer == "2"
    # agreement is counted over every finished solution, voters or not
    assert s.agree == 2 and s.finished == 6


def test_representative_of_the_winning_group_is_its_best_valued_member():
    cands = [C("10", 0.1), C("10.0", 0.6), C("11", 0.2)]
    s = weighted_vote(cands)
    assert s.answer == "10.0" and s.index == 1


def test_unanswered_candidates_are_skipped_and_nothing_gives_none():
    s = select([C(None), C("  ")], "vote")
    assert s.answer is None and s.method == "none" and s.index is None and s.finished == 2
    assert select([], "best").answer is None


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown answer selection"):
        select([C("1")], "median")
