"""Property tests of rstar.grader: random sympy objects printed by a program
(``str()``) grade equal to their own LaTeX (``sympy.latex()``), and small
perturbations of them grade unequal.

Derandomized (the same examples every run) so CI is reproducible; each
comparison runs in the real grader worker.
"""

import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rstar.grader import grade

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

x, y = sp.symbols("x y")

small_ints = st.integers(-12, 12)
rationals = st.builds(lambda p, q: sp.Rational(p, q), st.integers(-30, 30), st.integers(1, 12))
atoms = st.one_of(
    small_ints.map(sp.Integer),
    rationals,
    st.sampled_from([sp.pi, sp.sqrt(2), sp.sqrt(3), sp.E, x, y]),
)


def _combine(children):
    return st.one_of(
        st.builds(lambda a, b: a + b, children, children),
        st.builds(lambda a, b: a - b, children, children),
        st.builds(lambda a, b: a * b, children, children),
        st.builds(lambda a, b: a / b, children, children),
        st.builds(lambda a, n: a**n, children, st.integers(2, 3)),
        st.builds(sp.sqrt, children),
    )


expressions = st.recursive(atoms, _combine, max_leaves=6)


def _usable(e) -> bool:
    return isinstance(e, sp.Expr) and not e.has(sp.zoo, sp.nan, sp.oo, -sp.oo) and len(str(e)) < 300


@SETTINGS
@given(expressions)
def test_expression_printed_equals_its_latex(e):
    assume(_usable(e))
    assert grade(str(e), sp.latex(e), timeout=5.0) is True, (str(e), sp.latex(e))


@SETTINGS
@given(expressions, st.sampled_from([sp.Integer(1), sp.Integer(-1), sp.Rational(1, 7), sp.Rational(-3, 100)]))
def test_perturbed_expression_is_unequal(e, delta):
    assume(_usable(e))
    assert grade(str(e + delta), sp.latex(e), timeout=5.0) is False, (str(e + delta), sp.latex(e))


ends = st.one_of(rationals, small_ints.map(sp.Integer), st.sampled_from([sp.sqrt(2), -sp.sqrt(3), sp.pi / 2]))


@st.composite
def intervals(draw):
    a, b = draw(ends), draw(ends)
    assume(a != b)
    a, b = (a, b) if a < b else (b, a)
    if draw(st.booleans()):
        a = -sp.oo
    elif draw(st.integers(0, 3)) == 0:
        b = sp.oo
    return sp.Interval(a, b, draw(st.booleans()), draw(st.booleans()))


@SETTINGS
@given(intervals())
def test_interval_printed_equals_its_latex(iv):
    assert grade(str(iv), sp.latex(iv), timeout=5.0) is True, (str(iv), sp.latex(iv))


@SETTINGS
@given(intervals(), st.integers(0, 2))
def test_perturbed_interval_is_unequal(iv, how):
    if how == 0 and iv.start.is_finite:
        other = sp.Interval(iv.start, iv.end, not iv.left_open, iv.right_open)  # the other kind of end
    elif how == 1 and iv.end.is_finite:
        other = sp.Interval(iv.start, iv.end, iv.left_open, not iv.right_open)
    elif iv.end.is_finite:
        other = sp.Interval(iv.start, iv.end + 1, iv.left_open, iv.right_open)  # a moved end
    else:
        other = sp.Interval(iv.start - 1, iv.end, iv.left_open, iv.right_open)
    assert grade(str(other), sp.latex(iv), timeout=5.0) is False, (str(other), sp.latex(iv))


tuples = st.lists(st.one_of(atoms, rationals), min_size=2, max_size=4).map(lambda xs: sp.Tuple(*xs))


@SETTINGS
@given(tuples)
def test_tuple_printed_equals_its_latex(t):
    assert grade(str(t), sp.latex(t), timeout=5.0) is True, (str(t), sp.latex(t))


@SETTINGS
@given(tuples, st.integers(0, 1))
def test_perturbed_tuple_is_unequal(t, how):
    items = list(t.args)
    if how == 0 and items[0] != items[1]:
        items[0], items[1] = items[1], items[0]  # order matters in a tuple
    else:
        items[-1] = items[-1] + 1
    other = sp.Tuple(*items)
    assert grade(str(other), sp.latex(t), timeout=5.0) is False, (str(other), sp.latex(t))


sets = st.lists(st.one_of(small_ints.map(sp.Integer), rationals, st.sampled_from([sp.sqrt(2), sp.pi])), min_size=1, max_size=4).map(
    lambda xs: sp.FiniteSet(*xs)
)


@SETTINGS
@given(sets, st.randoms(use_true_random=False))
def test_set_printed_in_any_order_equals_its_latex(s, rnd):
    items = list(s.args)
    rnd.shuffle(items)
    printed = "[" + ", ".join(str(i) for i in items) + "]"  # a program's list of roots
    assert grade(printed, sp.latex(s), timeout=5.0) is True, (printed, sp.latex(s))
    bumped = "[" + ", ".join(str(i) for i in items[:-1] + [items[-1] + 100]) + "]"
    assert grade(bumped, sp.latex(s), timeout=5.0) is False, (bumped, sp.latex(s))
