"""Read what a program printed as a sympy object, without ``eval``.

Programs print Python and sympy syntax: ``3*pi/2``, ``sqrt(5)/2``,
``x**2 + 1``, ``Interval.Lopen(-oo, 0)``, ``{1, 2}``, ``[3 - 2*sqrt(2), ...]``,
``(1, 2)``, ``Matrix([[1], [2]])``, ``(3+4j)``, ``0.30000000000000004``.
``parse_printed`` parses the text with :func:`ast.parse` and builds the sympy
object by walking the tree, allowing only numbers, whitelisted names and
functions, arithmetic, tuples, lists, sets and dicts.  Anything else (an
attribute that is not a known constructor, a subscript, a lambda, a keyword
argument, a string outside ``Symbol('x')``) raises :class:`Unparsable`.

Collections keep what the program meant: a Python ``tuple`` is ordered
(:class:`Seq` with ``ordered=True``), a ``list`` of roots is not
(``ordered=False``), a ``set``/``FiniteSet`` is a set.

Runs inside the grader's worker process (it imports sympy).
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

import sympy as sp

__all__ = ["parse_printed", "Seq", "Unparsable"]


class Unparsable(ValueError):
    """The text is not in the whitelisted Python/sympy answer syntax."""


@dataclass(frozen=True)
class Seq:
    """A printed list or tuple: ``ordered`` for tuples, not for lists of roots."""

    items: tuple
    ordered: bool

    def __str__(self) -> str:  # pragma: no cover - debugging aid
        o, c = ("(", ")") if self.ordered else ("[", "]")
        return o + ", ".join(map(str, self.items)) + c


_CONSTS = {
    "pi": sp.pi,
    "E": sp.E,
    "e": sp.E,  # e^2 in an answer is Euler's number
    "I": sp.I,
    "oo": sp.oo,
    "inf": sp.oo,
    "infinity": sp.oo,
    "Infinity": sp.oo,
    "zoo": sp.zoo,
    "nan": sp.nan,
    "EmptySet": sp.S.EmptySet,
    "Reals": sp.S.Reals,
    "Integers": sp.S.Integers,
    "Naturals": sp.S.Naturals,
    "Complexes": sp.S.Complexes,
    "True": sp.true,
    "False": sp.false,
    "None": sp.S.EmptySet,  # a program that finds nothing prints None
}

_ATTRS = {
    ("Interval", "open"): sp.Interval.open,
    ("Interval", "Lopen"): sp.Interval.Lopen,
    ("Interval", "Ropen"): sp.Interval.Ropen,
    ("S", "Reals"): sp.S.Reals,
    ("S", "EmptySet"): sp.S.EmptySet,
    ("S", "Half"): sp.S.Half,
    ("S", "Infinity"): sp.oo,
    ("S", "NegativeInfinity"): -sp.oo,
    ("S", "Integers"): sp.S.Integers,
    ("S", "Naturals"): sp.S.Naturals,
    ("S", "Complexes"): sp.S.Complexes,
    ("math", "pi"): sp.pi,
    ("math", "e"): sp.E,
    ("math", "inf"): sp.oo,
    ("np", "pi"): sp.pi,
    ("np", "e"): sp.E,
    ("np", "inf"): sp.oo,
}
# numpy 2 prints scalars in lists as np.float64(2.0): the value is the argument
for _mod in ("np", "numpy"):
    for _t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32",
               "complex128", "complex64", "bool_"):
        _ATTRS[(_mod, _t)] = lambda v: v


def _matrix(*args):
    if len(args) == 1 and isinstance(args[0], Seq):
        rows = [list(r.items) if isinstance(r, Seq) else [r] for r in args[0].items]
        return sp.ImmutableMatrix(rows)
    raise Unparsable("Matrix takes one list of rows")


def _finite_set(*args):
    return sp.FiniteSet(*args)


def _tuple(*args):
    return Seq(tuple(args), True)


def _symbol(name):
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,20}", name):
        return sp.Symbol(name)
    raise Unparsable("bad symbol name")


def _rational(p, q=1):
    return sp.Rational(p, q)


def _log(x, base=None):
    return sp.log(x) if base is None else sp.log(x, base)


def _root(x, n, k=0):
    return sp.root(x, n, k)


def _relational(op):
    def make(a, b):
        return op(a, b)

    return make


_FUNCS = {
    "sqrt": sp.sqrt,
    "cbrt": sp.cbrt,
    "root": _root,
    "exp": sp.exp,
    "log": _log,
    "ln": sp.log,
    "sin": sp.sin,
    "cos": sp.cos,
    "tan": sp.tan,
    "cot": sp.cot,
    "sec": sp.sec,
    "csc": sp.csc,
    "asin": sp.asin,
    "acos": sp.acos,
    "atan": sp.atan,
    "acot": sp.acot,
    "atan2": sp.atan2,
    "sinh": sp.sinh,
    "cosh": sp.cosh,
    "tanh": sp.tanh,
    "Abs": sp.Abs,
    "abs": sp.Abs,
    "sign": sp.sign,
    "re": sp.re,
    "im": sp.im,
    "conjugate": sp.conjugate,
    "arg": sp.arg,
    "factorial": sp.factorial,
    "binomial": sp.binomial,
    "floor": sp.floor,
    "ceiling": sp.ceiling,
    "gcd": sp.gcd,
    "lcm": sp.lcm,
    "Mod": sp.Mod,
    "Max": sp.Max,
    "Min": sp.Min,
    "Rational": _rational,
    "Fraction": _rational,  # fractions.Fraction(3, 4)
    "Integer": sp.Integer,
    "Float": sp.Float,
    "Symbol": _symbol,
    "Interval": sp.Interval,
    "FiniteSet": _finite_set,
    "Union": sp.Union,
    "Intersection": sp.Intersection,
    "Complement": sp.Complement,
    "Tuple": _tuple,
    "Matrix": _matrix,
    "ImmutableMatrix": _matrix,
    "MutableDenseMatrix": _matrix,
    "ImmutableDenseMatrix": _matrix,
    "Eq": _relational(sp.Eq),
    "Lt": _relational(sp.Lt),
    "Le": _relational(sp.Le),
    "Gt": _relational(sp.Gt),
    "Ge": _relational(sp.Ge),
    "And": sp.And,
    "Or": sp.Or,
    "set": lambda *a: sp.FiniteSet(*(a[0].items if a and isinstance(a[0], Seq) else ())),
    "frozenset": lambda *a: sp.FiniteSet(*(a[0].items if a and isinstance(a[0], Seq) else ())),
}

# an integer power with more bits than this stays unevaluated (9**9**9**9)
_MAX_POW_BITS = 200_000
_MAX_NODES = 2_000


def _num(v):
    if isinstance(v, bool):
        return sp.true if v else sp.false
    if isinstance(v, int):
        return sp.Integer(v)
    if isinstance(v, float):
        if math.isnan(v):
            return sp.nan
        if math.isinf(v):
            return sp.oo if v > 0 else -sp.oo
        return sp.Float(repr(v), 17)
    if isinstance(v, complex):
        return _num(v.real) + _num(v.imag) * sp.I
    raise Unparsable(f"constant {type(v).__name__}")


def _pow(a, b):
    if isinstance(a, sp.Basic) and isinstance(b, sp.Basic) and a.is_Number and b.is_Integer:
        if abs(int(b)) > 1 and abs(a) > 1:
            if a.is_Integer and abs(int(b)) * max(1, int(abs(a)).bit_length()) > _MAX_POW_BITS:
                return sp.Pow(a, b, evaluate=False)
    return a**b


class _Builder:
    def __init__(self) -> None:
        self.nodes = 0

    def __call__(self, node: ast.AST):
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise Unparsable("too long")
        meth = getattr(self, "_" + type(node).__name__, None)
        if meth is None:
            raise Unparsable(f"{type(node).__name__} is not allowed")
        return meth(node)

    def _Expression(self, node):
        return self(node.body)

    def _Constant(self, node):
        if isinstance(node.value, str):
            raise Unparsable("string")
        return _num(node.value)

    def _Name(self, node):
        name = node.id
        if name in _CONSTS:
            return _CONSTS[name]
        if name in _FUNCS or name.startswith("_"):
            raise Unparsable(f"bare name {name}")
        return sp.Symbol(name)

    def _Attribute(self, node):
        if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in _ATTRS:
            return _ATTRS[(node.value.id, node.attr)]
        raise Unparsable("attribute")

    def _UnaryOp(self, node):
        v = self(node.operand)
        if isinstance(node.op, ast.USub):
            return -v
        if isinstance(node.op, ast.UAdd):
            return v
        raise Unparsable("unary operator")

    def _BinOp(self, node):
        a, b = self(node.left), self(node.right)
        if isinstance(a, Seq) or isinstance(b, Seq):
            raise Unparsable("arithmetic on a list")
        op = node.op
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div):
            return a / b
        if isinstance(op, ast.Pow):
            return _pow(a, b)
        if isinstance(op, ast.Mod):
            return sp.Mod(a, b)
        if isinstance(op, ast.FloorDiv):
            return sp.floor(a / b)
        if isinstance(op, ast.BitOr):  # sympy prints unions of sets and Or this way
            return sp.Union(a, b) if isinstance(a, sp.Set) else sp.Or(a, b)
        if isinstance(op, ast.BitAnd):
            return sp.Intersection(a, b) if isinstance(a, sp.Set) else sp.And(a, b)
        raise Unparsable("operator")

    def _Compare(self, node):
        if len(node.ops) != 1:
            raise Unparsable("chained comparison")
        a, b = self(node.left), self(node.comparators[0])
        ops = {ast.Eq: sp.Eq, ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge}
        op = ops.get(type(node.ops[0]))
        if op is None:
            raise Unparsable("comparison")
        return op(a, b)

    def _Call(self, node):
        if node.keywords:
            raise Unparsable("keyword arguments")
        args = [self(a) for a in node.args]
        if isinstance(node.func, ast.Name):
            f = _FUNCS.get(node.func.id)
        elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            f = _ATTRS.get((node.func.value.id, node.func.attr))
            if f is not None and not callable(f):
                f = None
        else:
            f = None
        if f is None and isinstance(node.func, ast.Name) and re.fullmatch(r"[a-zA-Z]", node.func.id):
            f = sp.Function(node.func.id)  # f(1) < f(4): an unknown one-letter function
        if f is None:
            raise Unparsable("function")
        return f(*args)

    def _Tuple(self, node):
        return Seq(tuple(self(e) for e in node.elts), True)

    def _List(self, node):
        return Seq(tuple(self(e) for e in node.elts), False)

    def _Set(self, node):
        return sp.FiniteSet(*(self(e) for e in node.elts))

    def _Dict(self, node):
        # solve(..., dict=True) prints {x: 2}; a dict's values are the answer
        if not node.keys:
            return sp.S.EmptySet
        vals = tuple(self(v) for v in node.values)
        return vals[0] if len(vals) == 1 else Seq(vals, True)


_SPACED_NUMBERS_RE = re.compile(r"^\s*-?\d+(?:\.\d+)?(?:\s+-?\d+(?:\.\d+)?)+\s*$")
_NUMPY_ROW_RE = re.compile(r"(?<=[\d.])\s+(?=[-\d])")


def _parenthesised(s: str) -> bool:
    """Whether the whole of ``s`` is one ( ... ) group."""
    if not (s.startswith("(") and s.endswith(")")):
        return False
    depth = 0
    for i, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def parse_printed(text: str):
    """The sympy object (or :class:`Seq`) a program's printed answer stands for.

    Raises :class:`Unparsable` when the text is not whitelisted Python/sympy
    syntax (then the caller may try LaTeX).
    """
    s = text.strip()
    if not s or "\\" in s or "__" in s or len(s) > 2000:
        raise Unparsable("not program syntax")
    if _SPACED_NUMBERS_RE.match(s):  # print(a, b) -> "3 -1": two numbers, not 3 - 1
        return Seq(tuple(_num(float(t)) if "." in t else sp.Integer(t) for t in s.split()), False)
    if s.startswith("[") and re.search(r"[\d.]\s+-?[\d.]", s) and "," not in s:
        s = _NUMPY_ROW_RE.sub(", ", s)  # numpy prints arrays as [ 1  2 -3]
        s = re.sub(r"\]\s*\[", "], [", s)
        s = re.sub(r"\[\s+", "[", s)
    s = s.replace("^", "**")  # a printed x^2 is a power, never xor
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise Unparsable(str(exc)) from None
    try:
        obj = _Builder()(tree)
        if isinstance(obj, Seq) and obj.ordered and not _parenthesised(s):
            obj = Seq(obj.items, False)  # "1, 2": a bare list of answers, not a tuple
        return obj
    except Unparsable:
        raise
    except RecursionError:
        raise Unparsable("too deep") from None
    except (TypeError, ValueError, AttributeError, ZeroDivisionError, sp.SympifyError) as exc:
        raise Unparsable(str(exc)) from None
