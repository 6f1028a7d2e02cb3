"""Answer selection: pure functions from finished solutions to one answer.

Each candidate is a finished solution with an answer and an optional value in
[-1, 1] (from the scorer, or the node's Q). Every function returns a
:class:`Selection` saying which candidate won, how, and with what support, so
results and ``rstar solve`` can say "72 (3 of 4 finished solutions agree)".

- ``best_value``: the highest value (rStar-Math's final answer with a PPM);
  ties to the earliest candidate.
- ``majority_vote``: equivalent answers grouped (by the grader), the largest
  group wins; ties to the group seen first.
- ``weighted_vote``: the same with each vote weighted by ``(value + 1) / 2``.
- ``topk_vote``: majority vote among the ``k`` candidates with the highest
  values (rStar-Math's vote among the top-k by value).
- ``select(candidates, method="auto")``: ``auto`` is a majority vote when no
  candidate has a value, else a value-weighted vote: never an arbitrary pick.

Within the winning group the representative is the member with the highest
value (ties: earliest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

METHODS = ("auto", "best", "vote", "weighted_vote", "topk_vote")


@dataclass(frozen=True)
class Candidate:
    answer: str
    value: float | None = None   # in [-1, 1]; None: no value signal
    node: int | None = None      # whatever the caller uses to find the solution again


@dataclass(frozen=True)
class Selection:
    answer: str | None
    index: int | None            # index of the chosen candidate in the input
    method: str                  # the method actually used ("none" when nothing was finished)
    votes: float                 # weight of the winning group (1 each for a plain vote)
    finished: int                # candidates considered
    agree: int                   # candidates in the winning group
    value: float | None          # the chosen candidate's value

    def describe(self) -> str:
        if self.answer is None:
            return "no finished solution"
        if self.method == "best":
            v = "no value" if self.value is None else f"value {self.value:+.3f}"
            return f"highest value ({v}); {self.agree} of {self.finished} finished solutions agree"
        how = {"vote": "majority vote", "weighted_vote": "value-weighted vote",
               "topk_vote": "vote among the top by value"}[self.method]
        return f"{self.agree} of {self.finished} finished solutions agree; {how}"

    def as_dict(self) -> dict:
        return {"method": self.method, "votes": self.votes, "finished": self.finished,
                "agree": self.agree, "value": self.value}


Equal = Callable[[str, str], bool]


def _default_equal(a: str, b: str) -> bool:
    """Two finished solutions' answers agree (both read as program output, not one as gold)."""
    from rstar.grader import agree

    return agree(a, b) is True


def _groups(cands: Sequence[Candidate], idx: Sequence[int], equal: Equal) -> list[list[int]]:
    groups: list[list[int]] = []
    for i in idx:
        for g in groups:
            if equal(cands[i].answer, cands[g[0]].answer):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _best_member(cands: Sequence[Candidate], members: Sequence[int]) -> int:
    return max(members, key=lambda i: (cands[i].value if cands[i].value is not None else float("-inf"), -i))


def _vote(cands, idx, weight, method, equal) -> Selection:
    groups = _groups(cands, idx, equal)
    if not groups:
        return _nothing(len(cands))
    scored = [(sum(weight(cands[i]) for i in g), g) for g in groups]
    best_w, best_g = scored[0]
    for w, g in scored[1:]:
        if w > best_w:
            best_w, best_g = w, g
    # agreement counts every finished candidate that gives the winning answer, voters or not
    usable = _usable(cands)
    if len(idx) == len(usable):
        agree = len(best_g)
    else:
        agree = sum(1 for i in usable if i in best_g or equal(cands[i].answer, cands[best_g[0]].answer))
    k = _best_member(cands, best_g)
    return Selection(cands[k].answer, k, method, float(best_w), len(cands), agree, cands[k].value)


def _nothing(n: int) -> Selection:
    return Selection(None, None, "none", 0.0, n, 0, None)


def _usable(cands: Sequence[Candidate]) -> list[int]:
    return [i for i, c in enumerate(cands) if c.answer is not None and str(c.answer).strip()]


def majority_vote(cands: Sequence[Candidate], equal: Equal | None = None) -> Selection:
    return _vote(cands, _usable(cands), lambda c: 1.0, "vote", equal or _default_equal)


def weighted_vote(cands: Sequence[Candidate], equal: Equal | None = None) -> Selection:
    def w(c: Candidate) -> float:
        return 0.5 if c.value is None else (max(-1.0, min(1.0, c.value)) + 1.0) / 2.0
    return _vote(cands, _usable(cands), w, "weighted_vote", equal or _default_equal)


def topk_vote(cands: Sequence[Candidate], k: int = 4, equal: Equal | None = None) -> Selection:
    idx = _usable(cands)
    ranked = sorted(idx, key=lambda i: (-(cands[i].value if cands[i].value is not None else float("-inf")), i))
    return _vote(cands, sorted(ranked[:max(1, k)]), lambda c: 1.0, "topk_vote", equal or _default_equal)


def best_value(cands: Sequence[Candidate], equal: Equal | None = None) -> Selection:
    idx = _usable(cands)
    if not idx:
        return _nothing(len(cands))
    k = _best_member(cands, idx)
    eq = equal or _default_equal
    agree = sum(1 for i in idx if eq(cands[i].answer, cands[k].answer))
    return Selection(cands[k].answer, k, "best", 1.0, len(cands), agree, cands[k].value)


def select(cands: Sequence[Candidate], method: str = "auto", k: int = 4, equal: Equal | None = None) -> Selection:
    """Dispatch on ``method`` (one of METHODS)."""
    if method not in METHODS:
        raise ValueError(f"unknown answer selection {method!r}; one of {', '.join(METHODS)}")
    if method == "auto":
        has_value = any(c.value is not None for c in cands if c.answer)
        method = "weighted_vote" if has_value else "vote"
    if method == "best":
        return best_value(cands, equal)
    if method == "vote":
        return majority_vote(cands, equal)
    if method == "weighted_vote":
        return weighted_vote(cands, equal)
    return topk_vote(cands, k, equal)
