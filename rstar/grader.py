"""Answer extraction and three-valued equivalence, time-guarded.

Public API::

    extract_answer(text) -> str | None        # last \\boxed{...}, else "The answer is X", else last number
    normalize_gold(dataset_answer) -> str     # GSM8K "... #### 1,234" -> "1234"
    grade(pred, gold, timeout=2.0) -> bool | None    # True equal, False not, None cannot decide
    answers_equal(pred, gold, timeout=2.0) -> bool   # grade(...) is True
    agree(a, b, timeout=2.0) -> bool | None          # two predictions, both read as program output
    vote_groups(answers, weights=None, timeout=2.0) -> [(representative, weight, [indices])]
    majority_vote(answers, weights=None, timeout=2.0) -> str | None

``pred`` is what a solution ends with: a boxed LaTeX answer or whatever its
program printed (``3*pi/2``, ``Interval.Lopen(-oo, 0)``, ``[1, 2]``,
``863.9999999999998``); ``gold`` is a dataset answer, usually LaTeX
(``\\frac{3\\pi}{2}``, ``(-\\infty, 0]``, ``864 \\mbox{ inches}^2``).

How ``grade`` decides, cheapest first:

1. Both sides are normalised as strings (``rstar.grading.normalize``: units,
   ``\\text``, degrees, percent, dollars, thousands separators, ``x =``,
   ``\\pm``, "no solution"...).  Equal strings are equal.
2. Numeric fast path, no sympy: two plain numbers (decimals, fractions,
   mixed numbers, percentages) are compared with relative tolerance
   ``REL_TOL``; two answers made only of words or choice letters are compared
   as words.  These answers are final.
3. Otherwise a guarded worker process (``rstar.grading.worker``) reads both
   sides, program syntax with a whitelisted AST walker
   (``rstar.grading.pyparse``, no ``eval``) and LaTeX with math-verify, and
   compares them mathematically (``rstar.grading.compare``).  A comparison
   that runs out of ``timeout`` or that sympy cannot settle is ``None``.

Only decided results are cached.  Thread-safe; never raises.
"""

from __future__ import annotations

import atexit
import re
import threading
from collections import OrderedDict
from typing import Iterable, Sequence

from rstar.grading.normalize import (
    ABS_TOL,
    REL_TOL,
    as_words,
    last_boxed,
    normalize,
    numbers_equal,
)
from rstar.grading.worker import MAX_WORKERS, WorkerPool

__all__ = [
    "extract_answer",
    "normalize_gold",
    "grade",
    "answers_equal",
    "agree",
    "vote_groups",
    "majority_vote",
    "shutdown",
    "MAX_CHARS",
    "MAX_WORKERS",
    "REL_TOL",
    "ABS_TOL",
]

MAX_CHARS = 1000  # longer answers never reach sympy: only an exact match decides


# ----------------------------------------------------------------------------
# extraction
# ----------------------------------------------------------------------------

_ANSWER_IS_RE = re.compile(
    r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*(.+?)(?:\.\s|\.$|\n|$)",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+")


def extract_answer(text: str | None) -> str | None:
    """The final answer written in ``text``.

    The content of the last balanced ``\\boxed{...}`` (or ``\\fbox``); else the
    text after the last "The answer is" / "Answer:"; else the last number.
    ``None`` when there is nothing.  Never raises.
    """
    try:
        if not text:
            return None
        boxed = last_boxed(text)
        if boxed is not None:
            boxed = boxed.strip()
            return boxed or None
        matches = list(_ANSWER_IS_RE.finditer(text))
        if matches:
            ans = matches[-1].group(1).strip().rstrip(".").strip()
            ans = ans.strip("$ ").strip()
            if ans:
                return ans
        nums = _NUMBER_RE.findall(text)
        if nums:
            return nums[-1].rstrip(".")
        return None
    except Exception:  # pragma: no cover - defensive
        return None


def normalize_gold(dataset_answer: str | int | float | None) -> str:
    """Gold answer of a dataset row as a plain string.

    GSM8K solutions end with ``#### 72``: the text after the last ``####``.
    Commas used as thousands separators are removed (``1,234`` -> ``1234``);
    other text is returned stripped.
    """
    if dataset_answer is None:
        return ""
    s = str(dataset_answer)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    s = s.strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)
    return s


# ----------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------

_POOL = WorkerPool()
_CACHE: "OrderedDict[tuple[str, str], bool]" = OrderedDict()
_CACHE_MAX = 50_000
_CACHE_LOCK = threading.Lock()


def shutdown() -> None:
    """Stop the idle grader worker processes (they restart on demand)."""
    _POOL.shutdown()


atexit.register(shutdown)


def _worker_grade(p: str, g: str, timeout: float, reference: bool) -> bool | None:
    key = (p, g) if reference else (p, g, "peer")
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    res = _POOL.ask(p, g, timeout, reference)
    if res is not None:  # a time-out or a failure is not a fact about the answers
        with _CACHE_LOCK:
            _CACHE[key] = res
            if len(_CACHE) > _CACHE_MAX:
                _CACHE.popitem(last=False)
    return res


def grade(pred: str | None, gold: str | None, timeout: float = 2.0) -> bool | None:
    """Whether ``pred`` equals ``gold``: True, False, or None when it cannot be decided.

    None comes from a comparison that ran out of ``timeout`` seconds, a worker
    that failed, an answer that cannot be read as mathematics, or a gold answer
    that is missing.  A missing or empty ``pred`` is False (no answer is a
    wrong answer).  Never raises; a comparison that reaches a worker returns
    within about ``timeout`` + 0.5 s of getting one (a one-time worker start
    takes a few seconds; when more than ``MAX_WORKERS`` threads grade at once,
    the others wait for a free worker first).

    ``gold`` is read as a dataset answer: LaTeX first, so ``[1, 2]`` there is
    a closed interval, while a ``pred`` without backslashes is read as program
    output first (``[1, 2]`` is a list).  ``vote_groups`` reads both sides as
    predictions.
    """
    return _grade(pred, gold, timeout, True)


def _grade(pred, gold, timeout: float, reference: bool) -> bool | None:
    try:
        if gold is None or not str(gold).strip():
            return None
        if pred is None or not str(pred).strip():
            return False
        pred, gold = str(pred).strip(), str(gold).strip()
        if pred == gold:
            return True
        if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:
            return None
        p, g = normalize(pred), normalize(gold)
        if not p or not g:
            return None
        if p == g or p.replace(" ", "") == g.replace(" ", ""):
            return True
        num = numbers_equal(p, g)
        if num is not None:
            return num
        pw, gw = as_words(p), as_words(g)
        if pw is not None and gw is not None:
            return pw == gw
        if timeout is None or timeout <= 0:
            return None
        return _worker_grade(p, g, float(timeout), reference)
    except Exception:
        return None


def agree(a: str | None, b: str | None, timeout: float = 2.0) -> bool | None:
    """Whether two *predictions* are the same answer (three-valued, like ``grade``).

    Unlike ``grade``, neither side is a dataset answer: both are read as
    program output first, so ``[1, 2]`` and ``[2, 1]`` (two lists of roots)
    agree.  ``vote_groups`` compares this way.
    """
    if a is None or b is None or not str(a).strip() or not str(b).strip():
        return None
    return _grade(a, b, timeout, False)


def answers_equal(pred: str | None, gold: str | None, timeout: float = 2.0) -> bool:
    """``grade(pred, gold, timeout) is True``: unknown counts as not equal."""
    return grade(pred, gold, timeout) is True


def vote_groups(
    answers: Sequence[str | None] | Iterable[str | None],
    weights: Sequence[float] | None = None,
    timeout: float = 2.0,
) -> list[tuple[str, float, list[int]]]:
    """Answers grouped by equality: ``[(representative, total weight, member indices)]``.

    A group is represented by its first member; an answer joins the first
    group whose representative grades equal to it (an unknown grade does not
    join).  ``None``/empty answers are skipped.  Sorted by total weight,
    descending, ties to the group seen first.  ``weights`` default to 1 each.
    Raises ValueError when ``weights`` and ``answers`` differ in length.
    """
    answers = list(answers)
    if weights is None:
        weights = [1.0] * len(answers)
    else:
        weights = [float(w) for w in weights]
        if len(weights) != len(answers):
            raise ValueError("answers and weights differ in length")
    groups: list[list] = []  # [representative, total weight, indices]
    for i, (a, w) in enumerate(zip(answers, weights)):
        if a is None or not str(a).strip():
            continue
        a = str(a)
        for grp in groups:
            if grp[0] == a or agree(a, grp[0], timeout) is True:
                grp[1] += w
                grp[2].append(i)
                break
        else:
            groups.append([a, w, [i]])
    order = sorted(range(len(groups)), key=lambda k: (-groups[k][1], k))
    return [(groups[k][0], groups[k][1], groups[k][2]) for k in order]


def majority_vote(
    answers: Sequence[str | None] | Iterable[str | None],
    weights: Sequence[float] | None = None,
    timeout: float = 2.0,
) -> str | None:
    """The representative of the heaviest group of equal answers (``vote_groups``), or None."""
    groups = vote_groups(answers, weights, timeout)
    return groups[0][0] if groups else None
