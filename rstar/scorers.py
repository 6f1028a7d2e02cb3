"""Scorers: the one place a value comes from (docs/ARCHITECTURE.md, "Scorers").

A scorer maps partial or finished solutions to values in [-1, 1], in batches:
one call per search round. ``None`` means "no value": answer selection then
falls back to a vote, and back-up adds nothing the scorer did not say.

    class Scorer(Protocol):
        name: str               # as written in recipes and results ("gold", "ppm:/path", ...)
        needs_gold: bool        # refuses problems without a gold answer
        scores_partial: bool    # gives values for unfinished solutions (new nodes start from them)
        def score(self, items: list[ScoreItem]) -> list[float | None]
        def close(self) -> None

``load_scorer(spec, policy=None, template=None)`` builds one from its CLI spec:

=============  ==============================================================
``gold``       +1 / -1 for finished solutions against the gold answer (data
               generation, rStar-Math round 1); unknown grades give ``None``
``none``       no value at all: answers are chosen by majority vote
``self``       the policy grades finished solutions with MCTSr's strict prompt,
               in [-100, 100] (scores of 95 or more replaced by 50), several
               samples averaged, mapped to [-1, 1]; unparseable grades are
               counted in ``unparsed``, never read as 0
``ppm:PATH``   a trained process preference model (``rstar train ppm``)
``value:PATH`` a trained value head (``rstar train value``)
``A+B``        composed: each finished solution gets the value of the first part
               that gives one, each partial solution the value of the first part
               that scores partial ones. ``gold+ppm:PATH`` is rStar-Math's data
               generation from round 2 on: +1 / -1 from the gold answer at the
               end, the PPM's score for new intermediate steps
=============  ==============================================================
"""

from __future__ import annotations

import re
import threading
import zlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from rstar.errors import RstarError


@dataclass
class ScoreItem:
    """One partial or finished solution to score."""

    question: str
    steps: list[str]              # the shown texts of the path's steps (what the policy saw)
    prompt: str                   # the exact policy prompt: chat prefix + "".join(steps)
    finished: bool                # the last step ended the solution
    answer: str | None = None     # the solution's answer, when finished
    gold: str | None = None       # the gold answer, when known
    key: tuple = field(default=())  # (problem id, local node id): seeds for sampling scorers


@runtime_checkable
class Scorer(Protocol):
    name: str
    needs_gold: bool
    scores_partial: bool

    def score(self, items: list[ScoreItem]) -> list[float | None]: ...

    def close(self) -> None: ...


def grade(pred, gold, timeout: float = 2.0) -> bool | None:
    """Three-valued grade (rstar.grader.grade): True, False, or None when undecidable."""
    from rstar import grader

    return grader.grade(pred, gold, timeout=timeout)


class NoScorer:
    """No value signal: every item gets ``None``; selection falls back to a vote."""

    name = "none"
    needs_gold = False
    scores_partial = False
    thread_safe = True  # the search may call it from several trees' threads at once

    def score(self, items: list[ScoreItem]) -> list[float | None]:
        return [None] * len(items)

    def close(self) -> None:
        pass


class GoldScorer:
    """rStar-Math's terminal reward: +1 when the answer grades equal to the gold answer,
    -1 when it grades unequal or there is no answer; ``None`` when the grader cannot
    decide (an unknown grade is never a wrong one). Partial solutions get ``None``."""

    name = "gold"
    needs_gold = True
    scores_partial = False
    thread_safe = True

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout

    def score(self, items: list[ScoreItem]) -> list[float | None]:
        out: list[float | None] = []
        for it in items:
            if not it.finished or it.gold is None:
                out.append(None)
            elif not it.answer:
                out.append(-1.0)
            else:
                g = grade(it.answer, it.gold, timeout=self.timeout)
                out.append(None if g is None else (1.0 if g else -1.0))
        return out

    def close(self) -> None:
        pass


# MCTSr's self-evaluation (docs/METHODS.md section 2): a strict grade in [-100, 100].
SELF_EVAL_PROMPT = (
    "Question: {question}\n\n"
    "Here is a proposed solution, written as a Python program with its printed output:\n\n"
    "{solution}\n\n"
    "Analyze this solution strictly and critically: point out every flaw in the reasoning, the code "
    "and the final answer. Be extremely demanding: do not give full marks. Then output a score "
    "between -100 and 100 on its own last line, in the form \"Score: N\"."
)
_SCORE_RE = re.compile(r"score\s*[:=]?\s*\**\s*(-?\d{1,3}(?:\.\d+)?)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])(-?\d{1,3}(?:\.\d+)?)(?![\w.])")
FULL_MARKS = 95.0      # grades at or above this are replaced (MCTSr's "no full marks" rule)
FULL_MARKS_VALUE = 50.0


def parse_grade(text: str) -> float | None:
    """The grade in a self-evaluation: the last "Score: N" (else a lone number on the last
    non-empty line) within [-100, 100], with the no-full-marks rule; ``None`` if none."""
    if not text:
        return None
    found = _SCORE_RE.findall(text)
    if not found:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        if not lines:
            return None
        nums = _NUMBER_RE.findall(lines[-1])
        if len(nums) != 1:
            return None
        found = nums
    value = float(found[-1])
    if not -100.0 <= value <= 100.0:
        return None
    if value >= FULL_MARKS:
        value = FULL_MARKS_VALUE
    return value


def stable_seed(*parts) -> int:
    """A seed that depends only on ``parts`` (never on Python's hash randomisation)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8")) & 0x7FFFFFFF


class SelfEvalScorer:
    """The policy grades finished solutions (MCTSr's prompt); partial ones get ``None``.

    Each finished item is graded ``samples`` times; the value is the mean of the parsed
    grades / 100. Grades that do not parse are counted in ``self.unparsed`` and left out;
    an item none of whose grades parse gets ``None``.
    """

    needs_gold = False
    scores_partial = False
    thread_safe = True  # model calls go through policy.submit; the counters take a lock

    def __init__(self, policy, samples: int = 3, temperature: float = 0.7, max_tokens: int = 256,
                 seed: int = 0) -> None:
        if policy is None:
            raise RstarError("the 'self' scorer needs the policy model")
        self.name = "self"
        self.policy = policy
        self.samples = samples
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.unparsed = 0
        self.graded = 0
        self._lock = threading.Lock()

    def grades(self, questions: Sequence[str], solutions: Sequence[str], keys: Sequence[tuple]) -> list[list[float]]:
        """Parsed grades in [-100, 100] for each (question, solution); unparseable ones dropped."""
        if not questions:
            return []
        prompts = [self.policy.format_chat([{"role": "user", "content": SELF_EVAL_PROMPT.format(
            question=q, solution=s)}]) for q, s in zip(questions, solutions)]
        seeds = [stable_seed(self.seed, "self-eval", *k) for k in keys]
        # one request per answer through the engine's queue (the same seeds give the same grades
        # as one batched call), so several trees can be graded at once while the model serves others
        futs = [self.policy.submit(p, n=self.samples, stop=[], max_tokens=self.max_tokens,
                                   temperature=self.temperature, seed=s) for p, s in zip(prompts, seeds)]
        out = []
        for fut in futs:
            got = []
            for c in fut.result():
                g = parse_grade(c.text)
                with self._lock:
                    self.graded += 1
                    if g is None:
                        self.unparsed += 1
                if g is not None:
                    got.append(g)
            out.append(got)
        return out

    def score(self, items: list[ScoreItem]) -> list[float | None]:
        idx = [i for i, it in enumerate(items) if it.finished and it.answer]
        out: list[float | None] = [None] * len(items)
        grades = self.grades([items[i].question for i in idx],
                             ["".join(items[i].steps) for i in idx],
                             [items[i].key or (i,) for i in idx])
        for i, g in zip(idx, grades):
            out[i] = (sum(g) / len(g) / 100.0) if g else None
        return out

    def close(self) -> None:
        pass


class CombinedScorer:
    """Scorers composed in order (spec ``A+B``): a finished item gets the first value one of the
    parts gives it (``gold+ppm:PATH``: the gold grade, the PPM's only where the grade is unknown);
    a partial item the first value of the parts that score partial solutions. Each part is asked
    only about the items still without a value, in one batch per part."""

    def __init__(self, parts: Sequence[Scorer], name: str | None = None) -> None:
        if len(parts) < 2:
            raise RstarError("a combined scorer needs at least two parts (spec A+B)")
        self.parts = list(parts)
        self.name = name or "+".join(getattr(p, "name", "?") for p in self.parts)
        self.needs_gold = any(getattr(p, "needs_gold", False) for p in self.parts)
        self.scores_partial = any(getattr(p, "scores_partial", False) for p in self.parts)

    def score(self, items: list[ScoreItem]) -> list[float | None]:
        out: list[float | None] = [None] * len(items)
        for part in self.parts:
            todo = [i for i, it in enumerate(items)
                    if out[i] is None and (it.finished or getattr(part, "scores_partial", False))]
            if not todo:
                continue
            for i, v in zip(todo, part.score([items[i] for i in todo])):
                out[i] = v
        return out

    def close(self) -> None:
        for part in self.parts:
            part.close()


SCORER_SPECS = "gold, none, self, ppm:PATH, value:PATH, or parts joined by '+' (gold+ppm:PATH)"
_PART_START = re.compile(r"\+(?=\s*(?:gold|none|self|ppm:|value:))")


def split_spec(spec: str) -> list[str]:
    """The parts of a combined spec: ``"gold+ppm:/a+b/ppm"`` -> ``["gold", "ppm:/a+b/ppm"]`` (a '+'
    starts a new part only where a scorer kind follows it, so paths may contain '+')."""
    return [p.strip() for p in _PART_START.split(str(spec))]


def load_scorer(spec: str, policy=None, template=None, seed: int = 0, **opts) -> Scorer:
    """Build a scorer from its CLI spec (see the module docstring)."""
    s = str(spec or "none").strip()
    parts = split_spec(s)
    if len(parts) > 1:
        if any(not p for p in parts):
            raise RstarError(f"scorer {s!r}: an empty part; join scorers as A+B, e.g. gold+ppm:PATH")
        built: list = []
        try:
            for p in parts:
                built.append(load_scorer(p, policy=policy, template=template, seed=seed, **opts))
        except BaseException:
            for b in built:
                b.close()
            raise
        return CombinedScorer(built, name=s)
    if s == "gold":
        return GoldScorer()
    if s == "none":
        return NoScorer()
    if s == "self":
        return SelfEvalScorer(policy, seed=seed, **opts)
    kind, _, path = s.partition(":")
    if kind in ("ppm", "value") and path:
        try:
            from rstar import ppm
        except ModuleNotFoundError as exc:
            raise RstarError(f"--scorer {s}: the PPM support is not installed ({exc})") from None
        loader = ppm.load_ppm_scorer if kind == "ppm" else ppm.load_value_scorer
        scorer = loader(path, policy=policy)
        return scorer
    raise RstarError(f"unknown scorer {s!r}; use one of: {SCORER_SPECS}")
