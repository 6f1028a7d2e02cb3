"""Answer extraction and equivalence, time-guarded.

Public API::

    extract_answer(text) -> str | None        # last \\boxed{...}, else "The answer is X", else last number
    normalize_gold(dataset_answer) -> str     # GSM8K "... #### 1,234" -> "1234"
    answers_equal(pred, gold, timeout=2.0) -> bool
    majority_vote(answers, weights=None) -> str | None

How ``answers_equal`` decides:

1. Cheap normalisation of both sides: outer ``$``/``\\(``/``\\[`` delimiters,
   ``\\boxed{}``, ``\\text{}``/``\\mathrm{}`` wrappers, ``\\left``/``\\right``,
   ``\\!``, ``^\\circ``, ``\\$`` and ``$`` signs, trailing full stops, a leading
   ``x =`` / ``x \\in``.  Equal strings are equal.
2. Numeric fast path (no sympy): if both sides read as one number (integers,
   decimals, thousands separators ``1,000``, ``a/b``, ``\\frac{a}{b}``, a
   percent sign, a trailing unit word such as ``18 dollars``), they are
   compared with relative tolerance 1e-6.  A side with a percent sign also
   matches its value / 100 (``10%`` equals ``10`` and ``0.1``).  When both are
   numbers this answer is final.
3. Otherwise math-verify (``math_verify.parse`` of ``\\boxed{...}`` of each
   side, then ``math_verify.verify(gold, pred)``) decides: fractions, roots,
   tuples, intervals, sets, ``\\pi``...  It runs in a small reusable worker
   *process* (``python grader.py --worker``) that is killed and restarted when
   a comparison exceeds ``timeout`` seconds.  A process, not a signal, is the
   guard because (a) ``signal.alarm`` only works in the main thread and the
   search calls the grader from worker threads, and (b) sympy can spend
   minutes inside one C call (``9^9^9^9``) that no Python-level signal
   interrupts.  Inputs longer than ``MAX_CHARS`` skip math-verify altogether.
   A timed-out or failed comparison is ``False``.  Results are cached.

Module-level helpers are thread-safe; up to ``MAX_WORKERS`` comparisons run
in parallel worker processes.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Iterable, Sequence

__all__ = [
    "extract_answer",
    "normalize_gold",
    "answers_equal",
    "majority_vote",
    "shutdown",
    "MAX_CHARS",
]

MAX_CHARS = 1000  # longer answers never reach sympy
MAX_WORKERS = 2
REL_TOL = 1e-6
ABS_TOL = 1e-9
_WORKER_START_TIMEOUT = 120.0  # importing sympy + math_verify on a loaded 2-core box


# ----------------------------------------------------------------------------
# extraction
# ----------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS_RE = re.compile(
    r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*(.+?)(?:\.\s|\.$|\n|$)",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+")


def _balanced_group(text: str, open_idx: int) -> tuple[str, int] | None:
    """Content of the brace group whose ``{`` is at ``open_idx`` and the index after it."""
    depth = 0
    for i in range(open_idx, len(text)):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            continue  # escaped brace: skip (the next char is handled below)
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i], i + 1
    return None


def _last_boxed(text: str) -> str | None:
    last = None
    for m in _BOXED_RE.finditer(text):
        g = _balanced_group(text, m.end() - 1)
        if g is not None:
            last = g[0]
    return last


def extract_answer(text: str | None) -> str | None:
    """The final answer written in ``text``.

    The content of the last balanced ``\\boxed{...}`` (or ``\\fbox``); else the
    text after the last "The answer is" / "Answer:"; else the last number.
    ``None`` when there is nothing.  Never raises.
    """
    try:
        if not text:
            return None
        boxed = _last_boxed(text)
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
# normalisation + numeric fast path
# ----------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|textit|operatorname)\s*\{")
_UNIT_WORDS = r"[A-Za-z][A-Za-z\s\.\-/]*"


def _strip_wrappers(s: str) -> str:
    s = s.strip()
    # outer math delimiters
    for a, b in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a) : len(s) - len(b)].strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and s.count("$") == 2:
        s = s[1:-1].strip()
    boxed = _last_boxed(s) if "\\boxed" in s or "\\fbox" in s else None
    if boxed is not None:
        s = boxed.strip()
    # \text{...} and friends -> their content
    for _ in range(10):
        m = _TEXT_CMD_RE.search(s)
        if not m:
            break
        g = _balanced_group(s, m.end() - 1)
        if g is None:
            break
        s = s[: m.start()] + g[0] + s[g[1] :]
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", " ")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.strip().rstrip(".").strip()
    # leading "x =" / "x \in"
    m = re.match(r"^[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|\\in)\s*(.+)$", s)
    if m:
        s = m.group(1).strip()
    return s


_NUM_CORE = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_NUM_FULL_RE = re.compile(
    r"^(?P<num>" + _NUM_CORE + r")"
    r"(?:\s*/\s*(?P<den>" + _NUM_CORE + r"))?"
    r"\s*(?P<pct>\\?%|\s*percent)?"
    r"(?:\s+" + _UNIT_WORDS + r")?$"
)
_FRAC_RE = re.compile(r"^(?P<sign>-?)\s*\\frac\s*\{\s*(?P<num>" + _NUM_CORE + r")\s*\}\s*\{\s*(?P<den>" + _NUM_CORE + r")\s*\}$")
_FRAC_SHORT_RE = re.compile(r"^(?P<sign>-?)\s*\\frac\s*(?P<num>\d)(?P<den>\d)$")


def _to_float(tok: str) -> float:
    return float(tok.replace(",", ""))


def _to_number(s: str) -> tuple[float, bool] | None:
    """``(value, had_percent)`` when ``s`` (already unwrapped) is a single number."""
    s = s.strip()
    if not s or len(s) > 100:
        return None
    try:
        m = _NUM_FULL_RE.match(s)
        if m:
            v = _to_float(m.group("num"))
            if m.group("den") is not None:
                d = _to_float(m.group("den"))
                if d == 0:
                    return None
                v = v / d
            if not math.isfinite(v):
                return None
            return v, bool(m.group("pct"))
        m = _FRAC_RE.match(s) or _FRAC_SHORT_RE.match(s)
        if m:
            d = _to_float(m.group("den"))
            if d == 0:
                return None
            v = _to_float(m.group("num")) / d
            return (-v if m.group("sign") else v), False
    except (ValueError, OverflowError):
        return None
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


# ----------------------------------------------------------------------------
# math-verify in a guarded worker process
# ----------------------------------------------------------------------------


# Run this file as __main__ without putting rstar/ (or the cwd) on sys.path.
_WORKER_BOOT = (
    "import sys, runpy; sys.path = [p for p in sys.path if p not in ('', '.')]; "
    "path = sys.argv[1]; sys.argv = [path, '--worker']; runpy.run_path(path, run_name='__main__')"
)


class _Worker:
    """One ``python grader.py --worker`` process speaking JSON lines."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _WORKER_BOOT, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._buf = b""
        line = self._readline(_WORKER_START_TIMEOUT)
        if line is None or json.loads(line).get("ready") is not True:
            self.kill()
            raise RuntimeError("math-verify worker did not start")

    def _readline(self, timeout: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # worker died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def ask(self, pred: str, gold: str, timeout: float) -> bool | None:
        """True/False, or None when the worker timed out or died (it is then dead)."""
        try:
            msg = json.dumps({"pred": pred, "gold": gold, "timeout": timeout}) + "\n"
            self.proc.stdin.write(msg.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            return None
        line = self._readline(timeout)
        if line is None:
            self.kill()
            return None
        try:
            return bool(json.loads(line)["equal"])
        except Exception:
            self.kill()
            return None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass


class _WorkerPool:
    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                while self._idle:
                    w = self._idle.pop()
                    if w.alive:
                        return w
                    self._count -= 1
                if self._count < self.max_workers:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return _Worker()
        except Exception:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, w: _Worker) -> None:
        with self._cond:
            if w.alive:
                self._idle.append(w)
            else:
                self._count -= 1
            self._cond.notify()

    def ask(self, pred: str, gold: str, timeout: float) -> bool | None:
        w = self._acquire()
        try:
            return w.ask(pred, gold, timeout)
        finally:
            self._release(w)

    def shutdown(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for w in idle:
            w.kill()


_POOL = _WorkerPool()
_CACHE: "OrderedDict[tuple[str, str], bool]" = OrderedDict()
_CACHE_MAX = 50_000
_CACHE_LOCK = threading.Lock()


def shutdown() -> None:
    """Stop the idle math-verify worker processes (they restart on demand)."""
    _POOL.shutdown()


import atexit  # noqa: E402

atexit.register(shutdown)


def _math_verify_equal(pred: str, gold: str, timeout: float) -> bool:
    key = (pred, gold)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    try:
        res = _POOL.ask(pred, gold, timeout)
    except Exception:
        res = None
    if res is None:  # timed out / worker failure: not equal, and not cached as a fact
        return False
    with _CACHE_LOCK:
        _CACHE[key] = res
        if len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)
    return res


# ----------------------------------------------------------------------------
# public comparison
# ----------------------------------------------------------------------------


def answers_equal(pred: str | None, gold: str | None, timeout: float = 2.0) -> bool:
    """Whether the predicted answer equals the gold answer.  Never raises, never hangs
    longer than about ``timeout`` seconds (plus a one-time worker start)."""
    try:
        if pred is None or gold is None:
            return False
        pred, gold = str(pred), str(gold)
        if not pred.strip() or not gold.strip():
            return False
        if pred.strip() == gold.strip():
            return True
        if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:
            # too long for a safe string normalisation + sympy; exact match only
            return False
        p, g = _strip_wrappers(pred), _strip_wrappers(gold)
        if not p or not g:
            return False
        if p == g or p.replace(" ", "") == g.replace(" ", ""):
            return True
        pn, gn = _to_number(p), _to_number(g)
        if pn is not None and gn is not None:
            (pv, ppct), (gv, gpct) = pn, gn
            if _close(pv, gv):
                return True
            if ppct and _close(pv / 100.0, gv):
                return True
            if gpct and _close(pv, gv / 100.0):
                return True
            return False
        if timeout is None or timeout <= 0:
            return False
        return _math_verify_equal(p, g, float(timeout))
    except Exception:
        return False


def majority_vote(
    answers: Sequence[str | None] | Iterable[str | None],
    weights: Sequence[float] | None = None,
    timeout: float = 2.0,
) -> str | None:
    """The answer with the largest total weight, equivalent answers grouped together.

    ``weights`` default to 1 each (plain majority vote); pass Q values / PPM
    scores for a weighted vote.  ``None``/empty answers are skipped.  Ties go
    to the group seen first; a group is represented by its first member.
    ``None`` when no answer is usable.
    """
    answers = list(answers)
    if weights is None:
        weights = [1.0] * len(answers)
    else:
        weights = [float(w) for w in weights]
        if len(weights) != len(answers):
            raise ValueError("answers and weights differ in length")
    groups: list[list] = []  # [representative, total weight]
    for a, w in zip(answers, weights):
        if a is None or not str(a).strip():
            continue
        a = str(a)
        for grp in groups:
            if answers_equal(a, grp[0], timeout=timeout):
                grp[1] += w
                break
        else:
            groups.append([a, w])
    if not groups:
        return None
    best = groups[0]
    for grp in groups[1:]:
        if grp[1] > best[1]:
            best = grp
    return best[0]


# ----------------------------------------------------------------------------
# worker process main
# ----------------------------------------------------------------------------


def _worker_main() -> None:  # pragma: no cover - runs in the child process
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            t = max(1, int(math.ceil(float(req.get("timeout", 2.0)))))
            pred, gold = req["pred"], req["gold"]
            gp = parse("\\boxed{" + gold + "}", parsing_timeout=t)
            pp = parse("\\boxed{" + pred + "}", parsing_timeout=t)
            ok = bool(gp) and bool(pp) and bool(verify(gp, pp, timeout_seconds=t))
        except BaseException:
            ok = False
        out.write(json.dumps({"equal": ok}) + "\n")
        out.flush()


if __name__ == "__main__" and "--worker" in sys.argv[1:]:
    _worker_main()
