"""String-level normalisation of answers and the numeric fast path (no sympy).

Everything here runs on the host, on every comparison the search makes, so it
is plain ``re`` work: no parser, no sympy, nothing that can hang.

``normalize(s)`` turns either side of a comparison (a LaTeX gold answer, a
boxed model answer or whatever a program printed) into a canonical string:

* outer ``$``/``\\(``/``\\[`` delimiters and ``\\boxed{}`` go;
* ``\\text{}``/``\\mbox{}``/``\\mathrm{}``... around words next to a quantity
  are units and go (``864 \\mbox{ inches}^2`` -> ``864``); a wrapper that is
  the whole answer is unwrapped (``\\text{(C)}`` -> ``(C)``);
* ``^\\circ``, ``\\%`` (kept as ``%``: the numeric path reads it), ``\\$``,
  ``\\left``/``\\right``, thin spaces, ``\\dfrac``/``\\tfrac``,
  ``\\frac ab`` shorthand, thousands separators (``14{,}916``, ``13,\\!800``,
  ``1,234``), base subscripts (``10000_2``), trailing unit words
  (``18 dollars``), a leading ``x =`` or ``x \\in`` (also per item of
  ``x = 1 \\text{ or } x = 2``);
* "no solution" in its forms becomes ``\\emptyset``;
* ``a \\pm b`` becomes the set ``\\{a + b, a - b\\}``.

``as_number(s)`` reads a normalised string that is one real number
(``-3``, ``1.5e3``, ``3/4``, ``\\frac{3}{4}``, ``2\\frac{1}{2}``, ``25%``) and
``numbers_equal`` compares two of them, percent-aware.  ``as_words`` reads
answers that are only words or choice letters (``Saturday``, ``(C)``).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = [
    "normalize",
    "as_number",
    "numbers_equal",
    "as_words",
    "balanced_group",
    "last_boxed",
    "REL_TOL",
    "ABS_TOL",
]

# Floats that programs print carry binary noise (863.9999999999998) and float32
# answers carry ~1e-7; a rounded decimal such as 0.333 for 1/3 (1e-3) must not pass.
REL_TOL = 1e-6
ABS_TOL = 1e-9

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def balanced_group(text: str, open_idx: int) -> tuple[str, int] | None:
    """Content of the brace group whose ``{`` is at ``open_idx`` and the index after it."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            i += 2  # escaped char (\{, \}, \\): never a group brace
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i], i + 1
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` / ``\\fbox{...}``."""
    last = None
    for m in _BOXED_RE.finditer(text):
        g = balanced_group(text, m.end() - 1)
        if g is not None:
            last = g[0]
    return last


# ----------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|hbox|operatorname)\s*\{"
)
_WORDS_RE = re.compile(r"^\s*[A-Za-z][A-Za-z.\s-]*$")
_EMPTY_RE = re.compile(
    r"^(?:no\s+(?:real\s+|integer\s+|integral\s+)?solutions?|none|no\s+such\s+\w+|"
    r"\\emptyset|\\varnothing|\\O|\\\{\s*\\\}|\{\s*\}|set\(\)|emptyset)$",
    re.IGNORECASE,
)
# words that are names in answers, never units
_NOT_UNITS = {
    "pi", "oo", "sqrt", "e", "i", "inf", "infty", "infinity", "or", "and",
    "sin", "cos", "tan", "log", "ln", "exp",
}
_TRAILING_UNIT_RE = re.compile(r"^(?P<head>.*?[\d})\]])\s+(?P<unit>[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*)\s*(?:\^\s*\{?\d\}?)?$")
_LEADING_VAR_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))\s*(.+)$", re.DOTALL)
_THOUSANDS_RE = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])(?:\.\d+)?")
_BASE_RE = re.compile(r"^(-?[0-9A-Fa-f]+)_\{?\d+\}?$")
_FRAC_CMD_RE = re.compile(r"\\[dt]?frac(?![a-zA-Z])")


def _frac_arg(s: str, i: int) -> tuple[str, int] | None:
    """One argument of ``\\frac`` starting at ``i``: a brace group, a command or one char."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    if s[i] == "{":
        g = balanced_group(s, i)
        return g if g is not None else None
    if s[i] == "\\":
        m = re.match(r"\\[A-Za-z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
        return None
    return s[i], i + 1


def _fix_fracs(s: str) -> str:
    r"""``\dfrac``/``\tfrac`` -> ``\frac``; ``\frac ab`` / ``\frac \pi4`` -> ``\frac{a}{b}``."""
    if "frac" not in s:
        return s
    out = []
    pos = 0
    for m in _FRAC_CMD_RE.finditer(s):
        if m.start() < pos:
            continue
        a = _frac_arg(s, m.end())
        b = _frac_arg(s, a[1]) if a else None
        out.append(s[pos : m.start()])
        if a is None or b is None:
            out.append("\\frac")
            pos = m.end()
            continue
        out.append("\\frac{" + _fix_fracs(a[0]) + "}{" + _fix_fracs(b[0]) + "}")
        pos = b[1]
    out.append(s[pos:])
    return "".join(out)


def _unwrap_text(s: str) -> str:
    r"""``\text{...}`` and friends: units next to a quantity go, anything else is unwrapped."""
    for _ in range(20):
        m = _TEXT_CMD_RE.search(s)
        if not m:
            break
        g = balanced_group(s, m.end() - 1)
        if g is None:
            break
        inner, end = g
        rest = s[: m.start()] + s[end:]
        word = inner.strip()
        if word.lower() in ("or", "and", ","):
            s = s[: m.start()] + ", " + s[end:]
            continue
        if _WORDS_RE.match(inner) and re.search(r"[\d}\)\]]", s[: m.start()]) and rest.strip():
            # a unit after a quantity: drop it with a following ^2 / ^3
            tail = re.match(r"\s*\^\s*\{?\s*\d\s*\}?", s[end:])
            if tail:
                end += tail.end()
            s = s[: m.start()] + s[end:]
        else:
            s = s[: m.start()] + inner + s[end:]
    return s


def _strip_delims(s: str) -> str:
    s = s.strip()
    for a, b in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a) : len(s) - len(b)].strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and s.count("$") == 2:
        s = s[1:-1].strip()
    return s


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside (), [], {}."""
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _expand_pm(s: str) -> str:
    r"""``a \pm b`` (one ``\pm`` or ``\mp``) -> ``\{a + b, a - b\}``."""
    n = s.count("\\pm") + s.count("\\mp")
    if n != 1:
        return s
    if "\\mp" in s:
        plus, minus = s.replace("\\mp", "-"), s.replace("\\mp", "+")
    else:
        plus, minus = s.replace("\\pm", "+"), s.replace("\\pm", "-")
    return "\\{" + plus.strip() + ", " + minus.strip() + "\\}"


def normalize(s: str) -> str:
    """Canonical string form of an answer (see the module docstring)."""
    s = _strip_delims(str(s))
    if "\\boxed" in s or "\\fbox" in s:
        b = last_boxed(s)
        if b is not None:
            s = _strip_delims(b)
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\displaystyle", "")
    # thousands separators written with LaTeX spacing: 14{,}916, 13,\!800
    s = re.sub(r"(?<=\d)\{,\}(?=\d{3})", "", s)
    s = re.sub(r"(?<=\d),\\!\s*(?=\d{3})", "", s)
    s = re.sub(r"(?<!\\)\\!", "", s)
    s = re.sub(r"(?<!\\)\\(?:[,;: ]|q?quad(?![a-zA-Z]))|~", " ", s)
    s = _unwrap_text(s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree", "", s)
    s = s.replace("\\%", "%").replace("\\$", "").replace("$", "")
    s = _fix_fracs(s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    # "x = 1, x = 2" / "x = 1 or x = 2": a leading variable on each item goes
    if re.search(r"\s(?:or|and)\s", s):
        s = re.sub(r"\s+(?:or|and)\s+", ", ", s)
    if "=" in s or "\\in" in s:
        items = _split_top(s)
        stripped = []
        for it in items:
            m = _LEADING_VAR_RE.match(it.strip())
            stripped.append(m.group(1).strip() if m else it.strip())
        s = ", ".join(stripped)
    if _EMPTY_RE.match(s):
        return "\\emptyset"
    if "," in s and not re.search(r"\d,\s", s):
        s = _THOUSANDS_RE.sub(lambda m: m.group(0).replace(",", ""), s)
    m = _BASE_RE.match(s)
    if m:
        s = m.group(1)
    m = _TRAILING_UNIT_RE.match(s)
    if m and not (set(w.lower() for w in m.group("unit").split()) & _NOT_UNITS):
        s = m.group("head").strip()
    s = _expand_pm(s)
    return s


# ----------------------------------------------------------------------------
# numeric fast path
# ----------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PLAIN_RE = re.compile(r"^(?P<num>" + _NUM + r")(?:\s*/\s*(?P<den>" + _NUM + r"))?\s*(?P<pct>%|percent)?$")
_FRAC_RE = re.compile(
    r"^(?P<sign>[-+]?)\s*(?P<whole>\d+)?\s*\\frac\{\s*(?P<num>" + _NUM + r")\s*\}\{\s*(?P<den>" + _NUM + r")\s*\}\s*(?P<pct>%)?$"
)


def as_number(s: str) -> tuple[float, bool] | None:
    """``(value, had_percent)`` when the normalised ``s`` is one real number, else None."""
    if not s or len(s) > 80:
        return None
    try:
        m = _PLAIN_RE.match(s)
        if m:
            v = float(m.group("num"))
            if m.group("den") is not None:
                d = float(m.group("den"))
                if d == 0:
                    return None
                v /= d
        else:
            m = _FRAC_RE.match(s)
            if not m:
                return None
            d = float(m.group("den"))
            if d == 0:
                return None
            v = float(m.group("num")) / d
            if m.group("whole"):  # mixed number 2\frac{1}{2}
                if v < 0:
                    return None
                v += float(m.group("whole"))
            if m.group("sign") == "-":
                v = -v
        if not math.isfinite(v):
            return None
        return v, bool(m.group("pct"))
    except (ValueError, OverflowError):
        return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _exact(s: str) -> Fraction | None:
    """The exact value of an integer or a fraction of integers (no decimal point)."""
    m = _PLAIN_RE.match(s)
    if m and m.group("pct") is None and re.fullmatch(r"[-+]?\d+", m.group("num")):
        den = m.group("den")
        if den is None:
            return Fraction(int(m.group("num")))
        if re.fullmatch(r"[-+]?\d+", den) and int(den) != 0:
            return Fraction(int(m.group("num")), int(den))
        return None
    m = _FRAC_RE.match(s)
    if m and m.group("pct") is None and re.fullmatch(r"\d+", m.group("num")) and re.fullmatch(r"\d+", m.group("den")):
        if int(m.group("den")) == 0:
            return None
        v = Fraction(int(m.group("num")), int(m.group("den"))) + int(m.group("whole") or 0)
        return -v if m.group("sign") == "-" else v
    return None


def numbers_equal(p: str, g: str) -> bool | None:
    """Two normalised answers that are numbers: equal values, or equal once a percent
    sign is read as /100.  Integers and fractions of integers on both sides are
    compared exactly; a side with a decimal point within ``REL_TOL``.  None when
    either side is not a number."""
    pn, gn = as_number(p), as_number(g)
    if pn is None or gn is None:
        return None
    pe, ge = _exact(p), _exact(g)
    if pe is not None and ge is not None:
        return pe == ge
    (pv, ppct), (gv, gpct) = pn, gn
    if _close(pv, gv):
        return True
    if ppct and not gpct and _close(pv / 100.0, gv):
        return True
    if gpct and not ppct and _close(pv, gv / 100.0):
        return True
    return False


# names the worker reads as numbers or sets, never as words
_MATH_NAMES = {"pi", "oo", "inf", "infinity", "infty", "e", "i", "nan", "zoo", "emptyset", "reals", "true", "false"}
_CHOICE_RE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?$")
_CHOICES_RE = re.compile(r"^\(?[A-Za-z]\)?(?:\s*,\s*\(?[A-Za-z]\)?)+$")


def as_words(s: str) -> str | None:
    """Canonical form of an answer made only of words or choice letters, else None.

    ``(C)``, ``C`` and ``c`` read alike; ``Saturday`` and ``saturday`` too.
    Single letters that are not in parentheses stay as they are only if both
    sides are words (the caller checks both).
    """
    if not s or len(s) > 100:
        return None
    if s.strip().lower() in _MATH_NAMES:
        return None
    m = _CHOICE_RE.match(s)
    if m:
        return m.group(1).lower()
    if _CHOICES_RE.match(s):  # "C, E" / "(A), (D)": a set of choice letters
        return ",".join(sorted(set(re.findall(r"[A-Za-z]", s.lower()))))
    if re.fullmatch(r"[A-Za-z][A-Za-z\s'-]*", s):
        return " ".join(s.lower().split())
    return None
