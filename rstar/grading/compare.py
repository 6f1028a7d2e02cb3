"""Three-valued mathematical equality of two parsed answers (runs in the worker).

``judge(pred, gold)`` reads both (normalised) answers, a program's printed
Python/sympy text through :func:`rstar.grading.pyparse.parse_printed` and
LaTeX through math-verify's parser (latex2sympy2-extended), and
``equal(a, b)`` compares the objects:

* numbers: exact ones to 25 significant digits (evaluated at 30), a side with a
  float (``863.9999999999998``) with relative tolerance ``REL_TOL``;
* expressions with symbols: evaluated at random points (same values for the
  same symbol names); disagreement at any point is ``False``, agreement at
  three or more is ``True``; if too few points evaluate, ``simplify`` /
  ``equals`` decide or the answer is ``None``;
* equations: proportional ``lhs - rhs`` (``2x = 4`` equals ``x - 2 = 0``);
  an inequality in one variable is read as its solution set;
* intervals: endpoints and open/closed ends; unions: their parts, unordered;
* sets and lists of roots unordered, tuples ordered (a tuple against a set is
  unordered: the set has no order to compare);
* a two-item tuple against an open interval and a two-item list against a
  closed one compare endpoints (the printed forms are the same string);
* matrices element by element; a vector against a printed list in order.

``None`` means "cannot decide": an unparsable side, a comparison that sympy
cannot settle.  The caller's deadline turns a slow comparison into ``None`` too.
"""

from __future__ import annotations

import cmath
import random
import re

import sympy as sp
from sympy.matrices import MatrixBase

from rstar.grading.normalize import REL_TOL
from rstar.grading.pyparse import Seq, Unparsable, parse_printed

__all__ = ["judge", "equal", "read_answer", "read_latex"]

_POINTS = 6  # random points tried for expressions with symbols
_MIN_AGREE = 3
_EXACT_TOL = 1e-20


def _all(results) -> bool | None:
    """Three-valued AND, short-circuiting on the first False."""
    unknown = False
    for r in results:
        if r is False:
            return False
        if r is None:
            unknown = True
    return None if unknown else True


# ----------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------


def read_latex(s: str):
    """A LaTeX answer as a sympy object (math-verify / latex2sympy2-extended)."""
    from math_verify import parse
    from math_verify.parser import LatexExtractionConfig

    res = parse("\\boxed{" + s + "}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    for r in res:
        if isinstance(r, (sp.Basic, MatrixBase)):
            return _plain(r)
    raise Unparsable("not LaTeX math")


def _plain(x):
    """latex2sympy's objects as plain, evaluated sympy ones (its FiniteSet is a subclass,
    and it leaves products unevaluated: ``-1*pi/2``)."""
    try:
        if isinstance(x, sp.FiniteSet):
            return sp.FiniteSet(*(_plain(a) for a in x.args))
        if isinstance(x, sp.Tuple):
            return sp.Tuple(*(_plain(a) for a in x.args))
        if isinstance(x, sp.Union):
            return sp.Union(*(_plain(a) for a in x.args))
        if isinstance(x, sp.Interval):
            return sp.Interval(_plain(x.start), _plain(x.end), x.left_open, x.right_open)
        if isinstance(x, MatrixBase):
            return sp.ImmutableMatrix(x.shape[0], x.shape[1], [_plain(a) for a in x])
        if isinstance(x, sp.Basic):
            return x.doit()
    except Exception:
        pass
    return x


def _imaginary_i(obj):
    """``i`` in an answer is the imaginary unit (sympy's ``I``)."""
    if isinstance(obj, Seq):
        return Seq(tuple(_imaginary_i(x) for x in obj.items), obj.ordered)
    if isinstance(obj, sp.Basic) and any(s.name == "i" for s in obj.free_symbols if isinstance(s, sp.Symbol)):
        return obj.xreplace({s: sp.I for s in obj.free_symbols if isinstance(s, sp.Symbol) and s.name == "i"})
    return obj


# program syntax that LaTeX does not use: **, *, calls of named functions, oo, I, {..}
_PROGRAM_RE = re.compile(
    r"\*|[A-Za-z_]{2,}\(|\d\s*j\b|\{|"
    r"\b(?:oo|pi|I|E|True|False|None|Reals|EmptySet|Integers|Naturals|Complexes)\b"
)


def read_answer(s: str, gold: bool = False):
    """The object an answer stands for; raises Unparsable.

    A prediction without a backslash is read as program output first
    (``[1, 2]`` is a list); a gold answer as LaTeX first (``[1, 2]`` is a
    closed interval, ``1, 2`` a set of answers) unless it looks like program
    syntax (``3*pi/2``: the grader also compares two predictions in a vote).
    """
    if "\\" not in s and (not gold or _PROGRAM_RE.search(s)):
        try:
            return _imaginary_i(parse_printed(s))
        except Unparsable:
            pass
    try:
        return _imaginary_i(read_latex(s))
    except Unparsable:
        if "\\" in s:
            raise
    return _imaginary_i(parse_printed(s))


# ----------------------------------------------------------------------------
# canonical forms
# ----------------------------------------------------------------------------


def _canon(x):
    if isinstance(x, sp.Tuple):
        return Seq(tuple(x.args), True)
    if isinstance(x, MatrixBase):
        return sp.ImmutableMatrix(x)
    if isinstance(x, sp.Eq) and isinstance(x.lhs, sp.Symbol) and isinstance(x.rhs, sp.Set):
        return x.rhs  # x \in [a, b]
    if isinstance(x, (sp.core.relational.Relational, sp.And, sp.Or)) and not isinstance(x, sp.Eq):
        syms = x.free_symbols
        if len(syms) == 1:
            try:
                return x.as_set()
            except Exception:
                return x
    return x


def _is_scalar(x) -> bool:
    return isinstance(x, sp.Expr)


# ----------------------------------------------------------------------------
# equality
# ----------------------------------------------------------------------------


def equal(a, b) -> bool | None:
    """Whether two parsed answers are mathematically equal (None: cannot decide)."""
    a, b = _canon(a), _canon(b)
    # one-element collections against a scalar: [2] or {2} vs 2
    for x, y in ((a, b), (b, a)):
        if _is_scalar(y):
            if isinstance(x, Seq) and len(x.items) == 1:
                return equal(x.items[0], y)
            if isinstance(x, sp.FiniteSet) and len(x.args) == 1:
                return equal(x.args[0], y)
    if isinstance(a, (Seq, MatrixBase)) or isinstance(b, (Seq, MatrixBase)):
        return _eq_collections(a, b)
    if isinstance(a, sp.Set) or isinstance(b, sp.Set):
        return _eq_sets(a, b)
    if isinstance(a, sp.Eq) or isinstance(b, sp.Eq):
        return _eq_equations(a, b)
    if _is_scalar(a) and _is_scalar(b):
        return _eq_expr(a, b)
    if isinstance(a, sp.Basic) and isinstance(b, sp.Basic):
        if a == b:
            return True
        if type(a) is not type(b) and (_is_scalar(a) or _is_scalar(b)):
            return False  # a number against a relation or a truth value
        return None
    return None


def _items(x):
    """(items, kind) of a collection: kind 'tuple' (ordered), 'list' or 'set' (unordered)."""
    if isinstance(x, Seq):
        return list(x.items), ("tuple" if x.ordered else "list")
    if isinstance(x, sp.FiniteSet):
        return list(x.args), "set"
    if x is sp.S.EmptySet:
        return [], "set"
    if isinstance(x, MatrixBase):
        if 1 in x.shape:
            return list(x), "tuple"
        return None, "matrix"
    return None, None


def _as_matrix(x):
    if isinstance(x, MatrixBase):
        return x
    if isinstance(x, Seq) and x.items and all(isinstance(r, Seq) for r in x.items):
        rows = [list(r.items) for r in x.items]
        if len({len(r) for r in rows}) == 1:
            try:
                return sp.ImmutableMatrix(rows)
            except Exception:
                return None
    return None


def _eq_collections(a, b) -> bool | None:
    ma, mb = _as_matrix(a), _as_matrix(b)
    if ma is not None and mb is not None and (isinstance(a, MatrixBase) or isinstance(b, MatrixBase)):
        if ma.shape != mb.shape:
            if 1 in ma.shape and 1 in mb.shape and len(ma) == len(mb):
                return _all(equal(x, y) for x, y in zip(ma, mb))  # row vs column vector
            return False
        return _all(equal(x, y) for x, y in zip(ma, mb))
    # a printed pair against an interval written the same way
    for x, y in ((a, b), (b, a)):
        if isinstance(y, sp.Interval) and isinstance(x, Seq) and len(x.items) == 2:
            if (x.ordered and y.left_open and y.right_open) or (not x.ordered and not y.left_open and not y.right_open):
                return _all((equal(x.items[0], y.start), equal(x.items[1], y.end)))
            return False
    ia, ka = _items(a)
    ib, kb = _items(b)
    if ia is None or ib is None:
        return False  # a list against a union of intervals, a matrix against a list...
    if "set" not in (ka, kb) and "tuple" in (ka, kb):
        if len(ia) != len(ib):
            return False
        return _all(equal(x, y) for x, y in zip(ia, ib))
    return _eq_unordered(ia, ib)


def _dedupe(items) -> tuple[list, bool]:
    out, sure = [], True
    for x in items:
        dup = False
        for y in out:
            r = equal(x, y)
            if r is True:
                dup = True
                break
            if r is None:
                sure = False
        if not dup:
            out.append(x)
    return out, sure


def _matching(edges: list[list[bool]], n: int) -> bool:
    """Whether a perfect matching exists in an n x n bipartite graph."""
    match = [-1] * n

    def try_row(i, seen):
        for j in range(n):
            if edges[i][j] and not seen[j]:
                seen[j] = True
                if match[j] < 0 or try_row(match[j], seen):
                    match[j] = i
                    return True
        return False

    return all(try_row(i, [False] * n) for i in range(n))


def _eq_unordered(ia, ib) -> bool | None:
    if len(ia) > 64 or len(ib) > 64:
        return None
    ia, sa = _dedupe(ia)
    ib, sb = _dedupe(ib)
    if len(ia) != len(ib):
        return False if (sa and sb) else None
    n = len(ia)
    if n == 0:
        return True
    m = [[equal(x, y) for y in ib] for x in ia]
    if _matching([[r is True for r in row] for row in m], n):
        return True
    if _matching([[r is not False for r in row] for row in m], n):
        return None
    return False


def _parts(s):
    return list(s.args) if isinstance(s, sp.Union) else [s]


def _eq_set_part(x, y) -> bool | None:
    if x == y:
        return True
    if isinstance(x, sp.Interval) and isinstance(y, sp.Interval):
        if x.left_open != y.left_open or x.right_open != y.right_open:
            return False
        return _all((equal(x.start, y.start), equal(x.end, y.end)))
    if isinstance(x, sp.FiniteSet) and isinstance(y, sp.FiniteSet):
        return _eq_unordered(list(x.args), list(y.args))
    kinds = (sp.Interval, sp.FiniteSet)
    if isinstance(x, kinds) and isinstance(y, kinds):
        return False
    return None


def _eq_sets(a, b) -> bool | None:
    if not (isinstance(a, sp.Set) and isinstance(b, sp.Set)):
        return False  # a set against a number or an equation
    if a == b:
        return True
    pa, pb = _parts(a), _parts(b)
    if len(pa) == len(pb):
        m = [[_eq_set_part(x, y) for y in pb] for x in pa]
        n = len(pa)
        if _matching([[r is True for r in row] for row in m], n):
            return True
        if not _matching([[r is not False for r in row] for row in m], n) and all(
            isinstance(x, (sp.Interval, sp.FiniteSet)) for x in pa + pb
        ):
            # as many intervals and points, and no way to pair them up: sympy
            # merges touching intervals, so these are different sets
            return False
    try:
        d = a.symmetric_difference(b)
        if d is sp.S.EmptySet:
            return True
        if isinstance(d, (sp.Interval, sp.FiniteSet, sp.Union)) and not d.free_symbols:
            return False
    except Exception:
        pass
    return None


def _eq_equations(a, b) -> bool | None:
    if not (isinstance(a, sp.Eq) and isinstance(b, sp.Eq)):
        eq, other = (a, b) if isinstance(a, sp.Eq) else (b, a)
        if isinstance(eq.lhs, sp.Symbol) and _is_scalar(other):
            return equal(eq.rhs, other)  # y = x + 1 against x + 1
        return False
    if not all(_is_scalar(t) for t in (a.lhs, a.rhs, b.lhs, b.rhs)):
        return None
    da, db = a.lhs - a.rhs, b.lhs - b.rhs
    if equal(da, db) is True:
        return True
    return _proportional(da, db)


# ----------------------------------------------------------------------------
# numbers and expressions
# ----------------------------------------------------------------------------


def _value(e, subs=None) -> complex | None:
    try:
        v = e.evalf(30, subs=subs) if subs else e.evalf(30)
        if not v.is_number:
            return None
        c = complex(v)
    except Exception:
        return None
    if not (cmath.isfinite(c)):
        return None
    return c


def _close(x: complex, y: complex, rel: float) -> bool:
    return abs(x - y) <= max(rel * max(abs(x), abs(y)), rel)


def _points(names: list[str], k: int):
    rng = random.Random(0x5EED)
    for _ in range(k):
        yield {n: sp.Rational(rng.randint(13, 997), rng.randint(101, 499)) for n in names}


def _subs(e, point):
    return {s: point[s.name] for s in e.free_symbols if isinstance(s, sp.Symbol) and s.name in point}


def _undef_as_symbols(e):
    """``f(x)`` of an unknown ``f`` -> a symbol named ``f(x)``: both sides agree on names."""
    from sympy.core.function import AppliedUndef

    apps = e.atoms(AppliedUndef)
    return e.xreplace({f: sp.Symbol(str(f)) for f in apps}) if apps else e


def _eq_expr(a, b) -> bool | None:
    if a == b:
        return True
    a, b = _undef_as_symbols(a), _undef_as_symbols(b)
    bad = (sp.nan, sp.zoo)
    if any(x.has(*bad) for x in (a, b)):
        return False
    inexact = a.has(sp.Float) or b.has(sp.Float)
    rel = REL_TOL if inexact else _EXACT_TOL
    names = sorted({s.name for s in (a.free_symbols | b.free_symbols) if isinstance(s, sp.Symbol)})
    if a.has(sp.oo, -sp.oo) or b.has(sp.oo, -sp.oo):
        if not names:
            va, vb = a.is_infinite, b.is_infinite
            if va is False and vb is False:
                pass
            elif va and vb:
                return bool(sp.sign(a) == sp.sign(b)) if a.is_extended_real and b.is_extended_real else None
            elif va is not None and vb is not None:
                return False
            else:
                return None
    if a.is_Rational and b.is_Rational:
        return False  # two different exact rationals (equal ones were caught above)
    if not names:
        va, vb = _value(a), _value(b)
        if va is None or vb is None:
            return _symbolic(a, b)
        if inexact:
            return _close(va, vb, rel)
        if not _close(va, vb, 1e-12):
            return False
        d = _value(a - b)  # adaptive precision: catches cancellation
        if d is not None and abs(d) <= _EXACT_TOL * max(1.0, abs(va)):
            return True
        return _symbolic(a, b) if d is None else False
    agree = 0
    for p in _points(names, _POINTS):
        va, vb = _value(a, _subs(a, p)), _value(b, _subs(b, p))
        if va is None or vb is None:
            continue
        if not _close(va, vb, REL_TOL if inexact else 1e-12):
            return False
        agree += 1
    if agree >= _MIN_AGREE:
        return True
    return _symbolic(a, b)


def _symbolic(a, b) -> bool | None:
    try:
        if sp.simplify(a - b) == 0:
            return True
        r = a.equals(b)
        return r if isinstance(r, bool) else None
    except Exception:
        return None


def _proportional(da, db) -> bool | None:
    """Whether two expressions differ by a constant non-zero factor (equations)."""
    names = sorted({s.name for s in (da.free_symbols | db.free_symbols) if isinstance(s, sp.Symbol)})
    inexact = da.has(sp.Float) or db.has(sp.Float)
    rel = REL_TOL if inexact else 1e-12
    ratio = None
    agree = 0
    for p in _points(names, _POINTS):
        va, vb = _value(da, _subs(da, p)), _value(db, _subs(db, p))
        if va is None or vb is None:
            continue
        if abs(va) < 1e-12 and abs(vb) < 1e-12:
            continue
        if abs(va) < 1e-12 or abs(vb) < 1e-12:
            return False
        r = va / vb
        if ratio is None:
            ratio = r
        elif not _close(r, ratio, rel):
            return False
        agree += 1
    if agree >= _MIN_AGREE:
        return True
    return None


def judge(pred: str, gold: str, gold_is_reference: bool = True) -> bool | None:
    """Read and compare two normalised answers: True, False or None (cannot decide).

    ``gold_is_reference``: ``gold`` is a dataset answer (read as LaTeX first);
    False when both are predictions, as in a vote (both read as program output first).
    """
    try:
        g = read_answer(gold, gold=gold_is_reference)
    except Unparsable:
        return None
    try:
        p = read_answer(pred)
    except Unparsable:
        return None
    return equal(p, g)
