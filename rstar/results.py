"""Datasets in, results out: JSONL reading, the resumable result file, metrics.

Every JSONL file rstar reads goes through :func:`jsonl_lines` (each non-blank line parsed,
with its number, its byte span and whether a kill cut it); what a bad line means is the
caller's: a dataset skips it with a warning (:func:`read_problems`), a results file drops a
torn last line (:func:`load_results`), training data stops at it (:func:`read_records`).

A run directory holds `results.jsonl`: one line per finished problem, written
and flushed (and fsync'd) as the problem finishes, with its whole search tree.
A killed run loses at most the problems in flight; a torn last line (a kill in
the middle of a write) is cut off when the run is resumed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from rstar.errors import DataError

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "run.json"


@dataclass
class Problem:
    """One dataset item: the question, and the gold answer when it is known."""

    id: str
    question: str
    gold: str | None = None


@dataclass
class BadLine:
    lineno: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.reason}"


@dataclass
class JsonLine:
    """One non-blank line of a JSONL file."""

    lineno: int              # 1-based
    record: Any              # the parsed JSON value (None where `error`)
    error: str | None        # why the line is not JSON, e.g. "not valid JSON (Expecting value, column 1)"
    start: int               # byte offset of the line
    end: int                 # byte offset just past it (and its newline)
    last: bool               # the file's last line
    complete: bool           # ends with a newline (a write cut by a kill does not)


def jsonl_lines(path: str | Path, missing: str = "") -> Iterator[JsonLine]:
    """Each non-blank line of a JSONL file, parsed, streamed. A missing file is a DataError
    (``missing`` says what to do); a line that is not UTF-8 or not JSON comes back with ``error``."""
    path = Path(path)
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file" + (f" ({missing})" if missing else "")) from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None
    with fh:
        pos, lineno, pending = 0, 0, None
        for raw in fh:
            lineno += 1
            start, pos = pos, pos + len(raw)
            if not raw.strip():
                continue
            if pending is not None:
                yield pending
            pending = _parse_line(raw, lineno, start, pos)
        if pending is not None:
            pending.last = True
            yield pending


def _parse_line(raw: bytes, lineno: int, start: int, end: int) -> JsonLine:
    record, error = None, None
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        error = f"not UTF-8 text (byte {exc.start + 1})"
    except json.JSONDecodeError as exc:
        error = f"not valid JSON ({exc.msg}, column {exc.colno})"
    return JsonLine(lineno, record, error, start, end, False, raw.endswith(b"\n"))


def read_records(path: str | Path, required: dict[str, type | tuple] | Iterable[str], what: str,
                 line_key: str | None = None) -> list[dict]:
    """The records of a JSONL file rstar wrote for training (``rstar export``), all or nothing: a
    line that is not a JSON object, or lacks a required field of the required type (``required``:
    field -> type, or field names that must be strings), is a DataError naming the file and line.
    ``line_key``: store each record's line number under this key."""
    if not isinstance(required, dict):
        required = {k: str for k in required}
    names = ", ".join(required)
    records = []
    for line in jsonl_lines(path, "write it with `rstar export RUN_DIR --out DIR`"):
        where = f"{path}:{line.lineno}"
        if line.error:
            raise DataError(f"{where}: {line.error}; fix or delete the line")
        rec = line.record
        if not isinstance(rec, dict):
            raise DataError(f"{where}: not a JSON object (a {what} record is one, with {names})")
        for k, t in required.items():
            v = rec.get(k)
            if not isinstance(v, t) or isinstance(v, bool):
                kind = t.__name__ if isinstance(t, type) else "number"
                raise DataError(f"{where}: field {k!r} is missing or not a {kind} "
                                f"(a {what} record needs {names}; written by `rstar export`)")
        if line_key:
            rec[line_key] = line.lineno
        records.append(rec)
    return records


def gold_from_record(record: dict) -> str | None:
    """The gold answer of a record: `answer`, with GSM8K's '#### 72' form reduced to '72'."""
    ans = record.get("answer")
    if ans is None:
        return None
    ans = str(ans)
    if "####" in ans:
        ans = ans.rsplit("####", 1)[1]
    ans = ans.strip()
    return ans or None


def read_problems(path: str | Path, bad: list[BadLine] | None = None) -> Iterator[Problem]:
    """Yield the problems of a JSONL file. Malformed lines are reported into `bad` and skipped.

    Each line is an object with `question` (or `problem`), optional `answer`, optional `id`
    (the line number when absent).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (give a JSONL file with one {{\"question\": ...}} object per line)")
    seen: set[str] = set()
    for line in jsonl_lines(path):
        record, lineno = line.record, line.lineno
        if line.error:
            _report(bad, path, lineno, line.error)
            continue
        if not isinstance(record, dict):
            _report(bad, path, lineno, f"expected a JSON object, got {type(record).__name__}")
            continue
        question = record.get("question", record.get("problem"))
        if not isinstance(question, str) or not question.strip():
            _report(bad, path, lineno, "no 'question' string")
            continue
        pid = str(record.get("id", f"line-{lineno}"))
        if pid in seen:
            _report(bad, path, lineno, f"duplicate id {pid!r}")
            continue
        seen.add(pid)
        yield Problem(id=pid, question=question.strip(), gold=gold_from_record(record))


def _report(bad: list[BadLine] | None, path: Path, lineno: int, reason: str) -> None:
    item = BadLine(lineno, reason)
    if bad is not None:
        bad.append(item)
    print(f"rstar: warning: {path}:{item} (skipped)", file=sys.stderr)


class ResultWriter:
    """Appends one JSON line per finished problem to DIR/results.jsonl, durably."""

    def __init__(self, out_dir: str | Path, resume: bool = False) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / RESULTS_FILE
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict] = {}
        if self.path.exists():
            if not resume:
                raise DataError(
                    f"{self.path} already holds results; pass --resume to continue that run, "
                    f"or choose another --out directory")
            self.done = {r["id"]: r for r in load_results(self.dir, repair=True)}
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, result: dict) -> None:
        """Append one result, durably. A problem already in the file is not written again
        (every problem exactly once, whoever delivers it twice)."""
        if result["id"] in self.done:
            return
        self._fh.write(json.dumps(result, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done[result["id"]] = result

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_results(out_dir: str | Path, repair: bool = False) -> list[dict]:
    """Read DIR/results.jsonl. A torn last line is dropped (and cut from the file when `repair`)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: no results here (run `rstar run DATA.jsonl --out {out_dir}` first)")
    by_id: dict[str, dict] = {}
    good_end = None  # byte offset just past the last complete line, where a torn one follows it
    for line in jsonl_lines(path):
        if line.error:
            if line.last:  # the write a kill interrupted
                print(f"rstar: warning: {path}: dropping an incomplete last line "
                      f"(the run was stopped while writing it)", file=sys.stderr)
                good_end = line.start
                break
            raise DataError(f"{path}: line {line.lineno} is not valid JSON; the file is damaged") from None
        record = line.record
        if not isinstance(record, dict) or "id" not in record:
            raise DataError(f"{path}: line {line.lineno} is not a result record (a JSON object with an 'id'); "
                            f"the file is damaged")
        by_id[record["id"]] = record
    if repair:
        with path.open("r+b") as fh:
            if good_end is not None:
                fh.truncate(good_end)
            size = fh.seek(0, os.SEEK_END)
            if size:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
    return list(by_id.values())


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion; None when n == 0."""
    if n <= 0:
        return None
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(results: Iterable[dict]) -> dict:
    """Accuracy (with its 95% interval), pass@k, unknown grades, tokens and the time split.

    Grades are three-valued: a problem whose answer the grader could not decide counts in
    ``unknown`` and in the accuracy's denominator (it was not shown to be right), never as
    wrong in ``wrong``. Time: the ``*_s`` fields of every problem are its share of the
    rounds it was in, so they add up to the run's time; ``wall_s`` is each problem's own
    elapsed time, which overlaps when several problems are in flight.
    """
    results = list(results)
    n = len(results)
    graded = [r for r in results if r.get("gold") is not None]
    right = sum(1 for r in graded if r.get("correct") is True)
    unknown = sum(1 for r in graded if r.get("correct") is None and r.get("answer") is not None)
    ci = wilson_interval(right, len(graded))
    out = {
        "problems": n,
        "graded": len(graded),
        "correct": right,
        "wrong": sum(1 for r in graded if r.get("correct") is False),
        "unknown": unknown,
        "accuracy": (right / len(graded)) if graded else None,
        "accuracy_ci95": list(ci) if ci else None,
        "pass_at_k": (sum(1 for r in graded if r.get("pass_at_k")) / len(graded)) if graded else None,
        "answered": sum(1 for r in results if r.get("answer") is not None),
        "rollouts": sum(r.get("rollouts", 0) for r in results),
        "nodes": sum(r.get("nodes", 0) for r in results),
        "tokens": sum(r.get("tokens", 0) for r in results),
        "gold_rewards": any(r.get("gold_rewards") for r in results),
        "algos": sorted({r.get("algo", "mcts") for r in results}),
    }
    t = {"model_s": 0.0, "sandbox_s": 0.0, "scorer_s": 0.0, "other_s": 0.0, "total_s": 0.0}
    wall = 0.0
    for r in results:
        rt = r.get("time", {})
        for k in t:
            t[k] += float(rt.get(k, 0.0))
        wall = max(wall, float(rt.get("wall_s", 0.0)))
    out["time"] = {k: round(v, 3) for k, v in t.items()}
    out["time"]["longest_problem_wall_s"] = round(wall, 3)
    return out


def format_summary(s: dict) -> str:
    lines = [f"problems: {s['problems']}  answered: {s['answered']}"]
    if s["graded"]:
        lo, hi = s.get("accuracy_ci95") or (0.0, 0.0)
        acc = (f"accuracy: {100 * s['accuracy']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%, "
               f"{s.get('correct', 0)} right, {s.get('wrong', 0)} wrong, {s.get('unknown', 0)} ungradable of "
               f"{s['graded']})")
        if s.get("gold_rewards"):
            acc += " [search rewarded by gold answers: the selected answer is oracle-guided; use --scorer none for a blind figure]"
        lines.append(acc)
        lines.append(f"pass@k (any finished solution correct): {100 * s['pass_at_k']:.1f}%")
    lines.append(f"rollouts: {s['rollouts']}  nodes: {s['nodes']}  tokens: {s['tokens']}")
    t = s["time"]
    total = t["total_s"] or 1e-9
    lines.append(
        f"time: {t['total_s']:.1f}s  model {100 * t['model_s'] / total:.0f}%  "
        f"sandbox {100 * t['sandbox_s'] / total:.0f}%  scorer {100 * t.get('scorer_s', 0.0) / total:.0f}%  "
        f"other {100 * t['other_s'] / total:.0f}%")
    return "\n".join(lines)
