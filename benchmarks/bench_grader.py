"""Grading what programs print: self agreement, false positives, unknowns, time.

For every gold answer of a MATH-style JSONL file that sympy can parse (read
with math-verify's LaTeX parser after the grader's normalisation), the parsed
object is printed back the way a program would print it:

* ``str(obj)`` (``3*pi/2``, ``Interval.Lopen(-oo, 0)``, ``{1, 2}``, ``(1, 2)``);
* ``repr(float(obj))`` (or ``complex``) where it is a number
  (``4.71238898038469``).

Each printed form must grade equal to the gold (``self_agreement``), and a
perturbed copy of the object must grade unequal (``false_positive_rate`` is
the share of perturbed copies graded equal).  A perturbation: a number or an
expression + 1 (its float form also x (1 + 1e-3)), a set's or tuple's first
item + 1 (a tuple of distinct items is also reversed), an interval's first
finite end opened or closed, a matrix's first entry + 1, an equation's
right-hand side + 1.  ``unknown_rate`` is the share of all comparisons graded
``None``.  Times are per ``grade`` call (the worker is started before timing).

Baseline, in the same process on the same pairs: math-verify alone
(``verify(parse(gold), parse(printed))``, what ``rstar.grader`` used before).

Usage::

    python benchmarks/bench_grader.py [--data PATH] [--limit N] [--timeout 2] [--no-baseline] [--json]
"""

from __future__ import annotations

import argparse
import cmath
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sympy as sp  # noqa: E402
from sympy.matrices import MatrixBase  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rstar import grader  # noqa: E402
from rstar.grading.compare import read_latex  # noqa: E402
from rstar.grading.normalize import as_words, normalize  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "math_dev.jsonl"


class _Alarm(BaseException):
    pass


def _with_alarm(seconds: float, fn, *args):
    def on_alarm(signum, frame):
        raise _Alarm()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parse_gold(gold: str):
    """The sympy object of a gold answer, or None when sympy cannot read it."""
    try:
        obj = _with_alarm(5.0, read_latex, normalize(gold))
    except (_Alarm, Exception):
        return None
    ng = normalize(gold)
    if as_words(ng) is not None or ("\\text" in gold and re.fullmatch(r"[A-Za-z\s,()]+", ng)):
        return None  # words and choice letters are compared as words, not by sympy
    try:
        obj = _with_alarm(5.0, obj.doit)  # evaluated, as a program's sympy objects are (-1*1/2*x is ambiguous)
    except (_Alarm, Exception):
        return None
    if isinstance(obj, MatrixBase):
        return sp.ImmutableMatrix(obj)
    if not isinstance(obj, sp.Basic) or isinstance(obj, (sp.Symbol,)) and len(obj.name) > 1:
        return None  # a word (\text{Saturday}) is not something sympy parsed
    if isinstance(obj, sp.Expr) and obj.has(sp.nan, sp.zoo):
        return None
    return obj


def _number(obj) -> str | None:
    if isinstance(obj, sp.Expr) and obj.is_number and not obj.has(sp.oo, -sp.oo):
        try:
            c = complex(obj.evalf(20))
        except (TypeError, ValueError):
            return None
        if not cmath.isfinite(c):
            return None  # 2^{2005} overflows a float: no float form
        if c.imag == 0:
            return repr(c.real)
        return repr(c)
    return None


def printed_forms(obj) -> list[str]:
    forms = [str(obj)]
    f = _number(obj)
    if f is not None and f != forms[0]:
        forms.append(f)
    return forms


def _bump(x):
    """One object near ``x`` that is not equal to it."""
    if isinstance(x, sp.Expr):
        return x + 1
    objs = perturbed_objects(x)
    return objs[0] if objs else None


def perturbed_objects(obj) -> list:
    """Objects near ``obj`` that are not equal to it (see the module docstring)."""
    out: list = []
    if isinstance(obj, sp.Expr):
        out.append(obj + 1)
    elif isinstance(obj, sp.Tuple):
        items = list(obj.args)
        if len(set(items)) == len(items) and len(items) > 1:
            out.append(sp.Tuple(*reversed(items)))
        first = _bump(items[0])
        if first is not None:
            out.append(sp.Tuple(first, *items[1:]))
    elif isinstance(obj, sp.FiniteSet):
        items = list(obj.args)
        first = _bump(items[0])
        if first is not None:
            out.append(sp.FiniteSet(first, *items[1:]))
    elif isinstance(obj, sp.Interval):
        if obj.start.is_finite:
            out.append(sp.Interval(obj.start, obj.end, not obj.left_open, obj.right_open))
        elif obj.end.is_finite:
            out.append(sp.Interval(obj.start, obj.end, obj.left_open, not obj.right_open))
        else:
            out.append(sp.Interval(0, obj.end))
    elif isinstance(obj, sp.Union):
        first = _bump(obj.args[0])
        if first is not None:
            out.append(sp.Union(first, *obj.args[1:], evaluate=False))
    elif isinstance(obj, MatrixBase):
        m = sp.Matrix(obj)
        first = _bump(m[0])
        if first is not None:
            m[0] = first
            out.append(sp.ImmutableMatrix(m))
    elif isinstance(obj, sp.Eq):
        out.append(sp.Eq(obj.lhs, obj.rhs + 1, evaluate=False))
    return out


def perturbed_forms(obj) -> list[str]:
    """Printed forms of the perturbed objects, and of the number x (1 + 1e-3)."""
    out = [str(o) for o in perturbed_objects(obj)]
    f = _number(obj)
    if f is not None:
        c = complex(f)
        v = c * (1 + 1e-3) + (1e-3 if c == 0 else 0)
        out.append(repr(v.real) if v.imag == 0 else repr(v))
    return out


def _baseline_grade(printed: str, gold: str) -> bool | None:
    from math_verify import parse, verify

    try:
        g = parse("\\boxed{" + gold + "}")
        p = parse("\\boxed{" + printed + "}")
        return bool(g) and bool(p) and bool(verify(g, p))
    except BaseException:
        return None


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL with an 'answer' field (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N records (0: all)")
    ap.add_argument("--timeout", type=float, default=2.0, help="grade() timeout per comparison, seconds")
    ap.add_argument("--no-baseline", action="store_true", help="skip the math-verify baseline")
    ap.add_argument("--show", type=int, default=10, help="print up to N failures of each kind")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)

    golds = []
    with open(args.data) as f:
        for line in f:
            if line.strip():
                golds.append(str(json.loads(line)["answer"]))
    if args.limit:
        golds = golds[: args.limit]

    cases = []  # (gold, [printed], [perturbed])
    for g in tqdm(golds, desc="parse gold", disable=args.json and not sys.stderr.isatty()):
        obj = parse_gold(g)
        if obj is None:
            continue
        try:
            printed, perturbed = printed_forms(obj), perturbed_forms(obj)
        except Exception:  # e.g. a rational too long to print
            continue
        if max(len(x) for x in printed) > grader.MAX_CHARS:
            continue
        cases.append((g, printed, perturbed))

    grader.grade("1", "1.0")  # start a worker outside the timings
    grader.grade("x", "y")

    same, same_ok, pert, pert_eq, unknown, times = 0, 0, 0, 0, 0, []
    fast_times, worker_times = [], []

    def timed(p, g):
        asks = grader._POOL.asks
        t = time.perf_counter()
        r = grader.grade(p, g, timeout=args.timeout)
        dt = time.perf_counter() - t
        times.append(dt)
        (worker_times if grader._POOL.asks > asks else fast_times).append(dt)
        return r

    fails, fps, unk = [], [], []
    for g, printed, perturbed in tqdm(cases, desc="grade", disable=args.json and not sys.stderr.isatty()):
        for p in printed:
            r = timed(p, g)
            same += 1
            same_ok += r is True
            if r is None:
                unknown += 1
                unk.append((p, g))
            elif r is False:
                fails.append((p, g))
        for p in perturbed:
            r = timed(p, g)
            pert += 1
            pert_eq += r is True
            if r is None:
                unknown += 1
                unk.append((p, g))
            elif r is True:
                fps.append((p, g))

    base = None
    if not args.no_baseline:
        b_ok = b_fp = 0
        b_times = []
        for g, printed, perturbed in tqdm(cases, desc="baseline", disable=args.json and not sys.stderr.isatty()):
            for p in printed:
                t = time.perf_counter()
                b_ok += _baseline_grade(p, g) is True
                b_times.append(time.perf_counter() - t)
            for p in perturbed:
                t = time.perf_counter()
                b_fp += _baseline_grade(p, g) is True
                b_times.append(time.perf_counter() - t)
        base = {
            "self_agreement": round(b_ok / max(1, same), 4),
            "false_positive_rate": round(b_fp / max(1, pert), 4),
            "p50_ms": round(1000 * _pct(b_times, 0.5), 3),
            "p99_ms": round(1000 * _pct(b_times, 0.99), 3),
        }

    n = same + pert
    summary = {
        "data": os.path.basename(args.data),
        "gold_answers": len(golds),
        "parsed_by_sympy": len(cases),
        "printed_comparisons": same,
        "perturbed_comparisons": pert,
        "self_agreement": round(same_ok / max(1, same), 4),
        "false_positive_rate": round(pert_eq / max(1, pert), 4),
        "unknown_rate": round(unknown / max(1, n), 4),
        "p50_ms": round(1000 * _pct(times, 0.5), 3),
        "p99_ms": round(1000 * _pct(times, 0.99), 3),
        "mean_ms": round(1000 * sum(times) / max(1, len(times)), 3),
        "fast_path_share": round(len(fast_times) / max(1, len(times)), 4),
        "fast_path_p50_ms": round(1000 * _pct(fast_times, 0.5), 4),
        "fast_path_p99_ms": round(1000 * _pct(fast_times, 0.99), 4),
        "worker_p50_ms": round(1000 * _pct(worker_times, 0.5), 3),
        "worker_p99_ms": round(1000 * _pct(worker_times, 0.99), 3),
        "timeout_s": args.timeout,
        "baseline_math_verify": base,
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    for title, rows in (("not equal to its own gold", fails), ("false positives", fps), ("unknown", unk)):
        if rows:
            print(f"{title} ({len(rows)}):")
            for p, g in rows[: args.show]:
                print(f"  {p!r}  vs  {g!r}")
    print(
        f"{len(cases)}/{len(golds)} gold answers parsed; self agreement {summary['self_agreement']:.2%} "
        f"({same_ok}/{same}), false positives {summary['false_positive_rate']:.2%} ({pert_eq}/{pert}), "
        f"unknown {summary['unknown_rate']:.2%}; per comparison p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"
    )
    print(
        f"fast path (no sympy) {summary['fast_path_share']:.1%} of comparisons, p50 {summary['fast_path_p50_ms']} ms; "
        f"worker p50 {summary['worker_p50_ms']} ms, p99 {summary['worker_p99_ms']} ms"
    )
    if base:
        print(
            f"baseline math-verify alone: self agreement {base['self_agreement']:.2%}, "
            f"false positives {base['false_positive_rate']:.2%}, p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms"
        )
    grader.shutdown()
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
