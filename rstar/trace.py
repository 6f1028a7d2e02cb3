"""Reading saved search trees: the trace schema of ``results.jsonl`` (docs/TRACE_SCHEMA.md).

Every consumer of saved trees (``rstar export``, the viewer, the evaluator) reads
records through ``load_trace``, which checks the schema version and upgrades a
schema-1 record (rstar 0.1) where its data allows. The tree helpers here are
pure functions of one record; node ids are the record's local ids (root = 0).

    rec = load_trace(json.loads(line))
    kids = children(rec)                      # kids[n]: child ids of n, in id order
    out = outcomes(rec)                       # out[n]: Outcome(correct, wrong) endings at or below n
    node_prompt(rec, n)                       # the exact prompt that produced node n
    path(rec, n)                              # ids from the root to n, root included

An *ending* is a node where a path of the search stopped: a finished solution
(``terminal_kind == "answer"``), graded correct or wrong, or a dead end (a step
whose code failed past the error threshold, a step that did not parse, a path
too deep, a solution with no answer). Dead ends count as wrong endings: the
search backed each one up as -1. A finished solution graded ``unknown`` (or
without gold) counts as neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rstar.errors import DataError
from rstar.results import jsonl_lines

SCHEMA_VERSION = 2

# node kinds and statuses (TRACE_SCHEMA.md, "Per node")
KIND_ROOT, KIND_CODE, KIND_FINAL, KIND_ANSWER, KIND_WHOLE, KIND_INVALID = (
    "root", "code", "final", "answer", "whole", "invalid")
TERMINAL_ANSWER, TERMINAL_EXHAUSTED = "answer", "exhausted"
STATUS_OK = "ok"


@dataclass(frozen=True)
class Outcome:
    """Endings at or below one node: finished solutions graded correct; wrong ones plus dead ends."""

    correct: int = 0
    wrong: int = 0

    @property
    def known(self) -> bool:
        return bool(self.correct or self.wrong)


# ---------------------------------------------------------------- loading

def load_trace(record: dict, where: str = "record") -> dict:
    """Check ``record``'s schema and return it in schema 2 (schema 1 is upgraded in a copy).

    ``where`` names the record in errors (``"results.jsonl:12"``). Raises ``DataError``
    (one line) for a record of another version or one without a tree.
    """
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object")
    version = record.get("schema", 1)
    if version == SCHEMA_VERSION:
        rec = record
    elif version == 1:
        rec = _upgrade_1(record, where)
    else:
        raise DataError(f"{where}: trace schema {version!r} is not readable by this rstar "
                        f"(it reads schemas 1 and {SCHEMA_VERSION}); upgrade rstar")
    tree = rec.get("tree")
    nodes = tree.get("nodes") if isinstance(tree, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise DataError(f"{where}: no search tree in the record (field tree.nodes)")
    for i, n in enumerate(nodes):
        if not isinstance(n, dict) or n.get("id") != i:
            raise DataError(f"{where}: tree.nodes[{i}] is malformed (each node needs id == its index)")
        p = n.get("parent")
        if (i == 0 and p != -1) or (i > 0 and not (isinstance(p, int) and 0 <= p < i)):
            raise DataError(f"{where}: tree.nodes[{i}] has parent {p!r} (a parent precedes its children; root's is -1)")
    return rec


def _upgrade_1(record: dict, where: str) -> dict:
    """Schema 1 (rstar 0.1) -> 2. What 0.1 did not save is filled where it can be derived:

    * ``shown``: 0.1 saved no shown text; its only template that showed output back
      (``rstar``) did so only after a non-terminal ``final`` step, so ``shown = text``
      is exact for every other node, and such nodes are marked ``shown_exact: false``;
    * ``terminal_kind``: ``answer`` for a terminal node with an answer, ``exhausted`` for
      another terminal non-invalid node;
    * ``prompt`` (the chat prefix) was not saved: it stays ``None`` and ``node_prompt``
      refuses such a record with one line.
    """
    rec = dict(record)
    rec["schema"] = SCHEMA_VERSION
    rec["upgraded_from"] = 1
    rec.setdefault("prompt", None)
    sel = rec.get("selection")
    if isinstance(sel, str) or sel is None:
        rec["selection"] = {"method": sel or "none", "votes": None, "finished": rec.get("num_terminal"), "value": None}
    tree = rec.get("tree")
    if isinstance(tree, dict) and isinstance(tree.get("nodes"), list):
        nodes = []
        for n in tree["nodes"]:
            if not isinstance(n, dict):
                nodes.append(n)
                continue
            m = dict(n)
            m.setdefault("shown", m.get("text", ""))
            if m.get("kind") == KIND_FINAL and not m.get("answer") and m.get("output"):
                m["shown_exact"] = False
            if "terminal_kind" not in m:
                if m.get("terminal") and m.get("answer"):
                    m["terminal_kind"] = TERMINAL_ANSWER
                elif m.get("terminal") and m.get("kind") != KIND_INVALID:
                    m["terminal_kind"] = TERMINAL_EXHAUSTED
                else:
                    m["terminal_kind"] = None
            m.setdefault("value", None)
            m.setdefault("logprob", None)
            nodes.append(m)
        rec["tree"] = {**tree, "nodes": nodes}
    return rec


def iter_results(run_dir: str | Path) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for each problem in ``run_dir/results.jsonl``, loaded with ``load_trace``.

    A line that is not JSON raises ``DataError`` naming the file and line (a results
    file is written by rstar: a broken line means a broken file, not a skippable input).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: no such run directory (give the --out directory of `rstar run`)")
    path = run / "results.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no results file; is {run} the --out directory of `rstar run`?")
    for line in jsonl_lines(path):
        where = f"{path}:{line.lineno}"
        if line.error:
            if not line.complete:
                continue  # the last line of a run killed mid-write: not a finished problem
            raise DataError(f"{where}: {line.error}")
        yield where, load_trace(line.record, where)


# ---------------------------------------------------------------- tree helpers

def nodes(record: dict) -> list[dict]:
    return record["tree"]["nodes"]


def children(record: dict) -> list[list[int]]:
    """``kids[n]``: the ids of ``n``'s children, in increasing id order."""
    ns = nodes(record)
    kids: list[list[int]] = [[] for _ in ns]
    for n in ns[1:]:
        kids[n["parent"]].append(n["id"])
    return kids


def path(record: dict, node: int) -> list[int]:
    """Ids from the root to ``node``, both included."""
    ns = nodes(record)
    out = [node]
    while ns[out[-1]]["parent"] >= 0:
        out.append(ns[out[-1]]["parent"])
    return out[::-1]


def is_answer(node: dict) -> bool:
    """A finished solution: the step that carries the solution's answer."""
    if node.get("terminal_kind") is not None:
        return node["terminal_kind"] == TERMINAL_ANSWER and node.get("answer") is not None
    return bool(node.get("terminal")) and node.get("answer") is not None


def is_dead_end(node: dict) -> bool:
    """A path that stopped without a finished solution: a cut step (invalid), or a
    terminal step with no answer."""
    if node.get("kind") == KIND_INVALID:
        return True
    return node.get("terminal_kind") == TERMINAL_ANSWER and node.get("answer") is None


def is_failed(node: dict) -> bool:
    """A step whose own code or parse failed (cut, or tolerated below the error threshold)."""
    return node.get("kind") == KIND_INVALID or node.get("status", STATUS_OK) != STATUS_OK


def ending(node: dict) -> bool | None:
    """True/False for a correct/wrong ending, None when ``node`` is no ending or its grade is unknown."""
    if is_answer(node):
        c = node.get("correct")
        return c if isinstance(c, bool) else None
    if is_dead_end(node):
        return False
    return None


def outcomes(record: dict, skip=None) -> list[Outcome]:
    """Per node, the correct and wrong endings at or below it (one pass, children after parents).
    ``skip(node)``: nodes whose own ending is not counted (the exporters' cut steps)."""
    ns = nodes(record)
    correct = [0] * len(ns)
    wrong = [0] * len(ns)
    for n in reversed(ns):
        i = n["id"]
        e = None if skip is not None and skip(n) else ending(n)
        if e is True:
            correct[i] += 1
        elif e is False:
            wrong[i] += 1
        p = n["parent"]
        if p >= 0:
            correct[p] += correct[i]
            wrong[p] += wrong[i]
    return [Outcome(c, w) for c, w in zip(correct, wrong)]


def correct_endings(record: dict) -> list[int]:
    """Ids of finished solutions graded correct."""
    return [n["id"] for n in nodes(record) if is_answer(n) and n.get("correct") is True]


def node_prompt(record: dict, node: int) -> str:
    """The exact prompt that produced ``node``: the record's prompt prefix + the ``shown``
    texts of its ancestors below the root, in order (a ``whole`` node's own ``prompt``)."""
    ns = nodes(record)
    own = ns[node].get("prompt")
    if own is not None:
        return own
    prefix = record.get("prompt")
    if prefix is None:
        raise DataError(f"problem {record.get('id')!r}: the record has no prompt prefix (a schema-1 trace "
                        f"from rstar 0.1 did not save it); re-run the search with this rstar to export it")
    return prefix + "".join(ns[i].get("shown", ns[i].get("text", "")) for i in path(record, node)[1:-1])


def path_text(record: dict, node: int) -> str:
    """The policy's view of the path ending at ``node``: ``node_prompt`` + ``node``'s own shown text.
    This is what a scorer reads for the partial solution ending at ``node``."""
    return node_prompt(record, node) + shown(nodes(record)[node])


def shown(node: dict) -> str:
    return node.get("shown", node.get("text", ""))
