"""What the viewer shows, computed from a run directory (docs/TRACE_SCHEMA.md).

Reads schema 2 and schema 1 records (records without `schema`, rstar 0.1) and is
tolerant of missing fields: whatever is absent is shown as unknown. Every node
gets one display `state`; the run gets its headline figures and the data of its
charts. The browser side (assets/view.js) only draws what is computed here.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from rstar.errors import DataError
from rstar.results import CONFIG_FILE, RESULTS_FILE, load_results

SCHEMA = 2  # the newest trace schema this viewer reads

# Display states of a node, in legend order. The colours live in assets/view.css.
STATES = {
    "root": "root",
    "step": "valid step",
    "error": "failed execution",
    "parse_error": "parse error",
    "max_depth": "depth limit",
    "no_answer": "ended without an answer",
    "correct": "finished: correct",
    "wrong": "finished: wrong",
    "unknown": "finished: not graded",
}
EXEC_FAILURES = {"error", "timeout", "memory", "output_limit", "sandbox_error"}
CUT_STATES = {"error", "parse_error", "max_depth", "no_answer"}
NODE_TEXT_FIELDS = ("text", "shown", "code", "output", "reason", "answer", "prompt")
NODE_NUMBER_FIELDS = ("visits", "q", "value", "prior", "tokens", "logprob")


def load_run(run_dir: str | Path) -> tuple[list[dict], dict]:
    """The records of RUN_DIR/results.jsonl (torn last line dropped with a warning) and run.json."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DataError(f"{run_dir}: no such directory (give the --out directory of an `rstar run`)")
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a directory (give the --out directory of an `rstar run`, "
                        f"which holds {RESULTS_FILE})")
    try:
        records = load_results(run_dir)
    except (KeyError, TypeError):  # a line that is JSON but not a result object
        raise DataError(f"{run_dir / RESULTS_FILE}: a line is not a result object with an 'id'; "
                        f"the file is damaged or not an rstar results file") from None
    if not records:
        raise DataError(f"{run_dir / RESULTS_FILE}: empty, no problem has finished yet "
                        f"(wait for the run, or continue it with `rstar run ... --resume`)")
    for r in records:
        version = r.get("schema", 1)
        if not isinstance(version, int) or version > SCHEMA:
            raise DataError(f"{run_dir / RESULTS_FILE}: problem {r.get('id')!r} has trace schema {version!r}; "
                            f"this viewer reads schemas 1 to {SCHEMA} (upgrade rstar)")
    config = {}
    cfg_path = run_dir / CONFIG_FILE
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}  # run.json is provenance only; the results stand without it
        if not isinstance(config, dict):
            config = {}
    return records, config


def select_problem(records: list[dict], problem: str) -> list[dict]:
    """Only the record of problem id `problem`; a clear error naming some ids when it is not there."""
    found = [r for r in records if str(r.get("id")) == problem]
    if not found:
        ids = [str(r.get("id")) for r in records]
        shown = ", ".join(ids[:8]) + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "")
        raise DataError(f"problem {problem!r} is not in this run; its problem ids are: {shown}")
    return found


# ---------------------------------------------------------------------- nodes
def node_state(node: dict) -> str:
    """One display state per node (keys of STATES), from kind, status and grade."""
    kind = node.get("kind")
    status = node.get("status") or "ok"
    if kind == "root" or node.get("parent", -1) in (-1, None):
        return "root"
    if status == "parse_error":
        return "parse_error"
    if status == "max_depth":
        return "max_depth"
    if status in EXEC_FAILURES:
        return "error"
    if status == "no_answer":
        return "no_answer"
    finished = node.get("answer") is not None and (
        kind in ("final", "answer", "whole") or node.get("terminal_kind") == "answer" or node.get("terminal"))
    if finished:
        return {True: "correct", False: "wrong"}.get(node.get("correct"), "unknown")
    if kind == "invalid":  # cut for a reason the status does not name
        return "error"
    return "step"


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v if math.isfinite(v) else None


def _text(v):
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


def normalize_nodes(raw: list) -> list[dict]:
    """Nodes with the fields the viewer uses; ids renumbered to positions if the file's are not."""
    nodes = []
    for i, n in enumerate(raw):
        if not isinstance(n, dict):
            n = {}
        parent = n.get("parent", -1 if i == 0 else 0)
        if not isinstance(parent, int) or isinstance(parent, bool) or parent >= i or parent < -1 or (i and parent < 0):
            parent = -1 if i == 0 else 0  # schema says parents come first; keep the node visible under the root
        if i == 0:
            parent = -1
        out = {"id": i, "parent": parent, "state": node_state({**n, "parent": parent}),
               "kind": _text(n.get("kind")) or ("root" if i == 0 else "code"),
               "status": _text(n.get("status")) or "ok"}
        for f in NODE_NUMBER_FIELDS:
            v = _number(n.get(f))
            if v is not None:
                out[f] = v
        for f in NODE_TEXT_FIELDS:
            v = _text(n.get(f))
            if v:
                out[f] = v
        if out.get("shown") == out.get("text"):
            out.pop("shown", None)  # only kept where later prompts saw more than the step (an output block)
        if isinstance(n.get("correct"), bool):
            out["correct"] = n["correct"]
        if n.get("terminal"):
            out["terminal"] = True
        if n.get("terminal_kind"):
            out["terminal_kind"] = _text(n["terminal_kind"])
        nodes.append(out)
    depth = []
    for n in nodes:  # recomputed: parents come first, so one pass suffices
        depth.append(0 if n["parent"] < 0 else depth[n["parent"]] + 1)
        n["depth"] = depth[-1]
    return nodes


def chosen_path(record: dict, nodes: list[dict]) -> list[int]:
    """Node ids from the root to the chosen solution's last step; [] when there is none.

    Schema 2 names the node (`chosen`); schema 1 only has the solution's steps, so the
    path is the one whose step texts match them, level by level.
    """
    if not nodes:
        return []
    chosen = record.get("chosen")
    if isinstance(chosen, int) and not isinstance(chosen, bool) and 0 <= chosen < len(nodes):
        path = [chosen]
        while nodes[path[-1]]["parent"] >= 0:
            path.append(nodes[path[-1]]["parent"])
        return path[::-1]
    solution = record.get("solution") or []
    if "chosen" in record or not solution or not isinstance(solution, list):
        return []
    children: dict[int, list[int]] = {}
    for n in nodes[1:]:
        children.setdefault(n["parent"], []).append(n["id"])
    path, cur = [0], 0
    for k, step in enumerate(solution):
        if not isinstance(step, dict):
            return []
        cands = [c for c in children.get(cur, []) if nodes[c].get("text", "") == (step.get("text") or "")]
        if not cands:
            return []
        if len(cands) > 1:  # rare: identical texts; prefer the matching code, and at the end the answer
            last = k == len(solution) - 1
            cands.sort(key=lambda c: (nodes[c].get("code", "") != (step.get("code") or ""),
                                      last and nodes[c].get("answer") != record.get("answer"), c))
        cur = cands[0]
        path.append(cur)
    return path


# ---------------------------------------------------------------------- problems
def _grade(record: dict) -> str:
    """correct | wrong | unknown (gold known, grade undecided) | nogold."""
    if record.get("gold") is None:
        return "nogold"
    c = record.get("correct")
    if c is True:
        return "correct"
    if c is False:
        return "wrong"
    return "unknown"


def _time(record: dict) -> dict:
    t = record.get("time") if isinstance(record.get("time"), dict) else {}
    out = {k: _number(t.get(k)) or 0.0 for k in ("model_s", "sandbox_s", "scorer_s", "other_s", "total_s", "wall_s")}
    if not out["total_s"]:
        out["total_s"] = out["model_s"] + out["sandbox_s"] + out["scorer_s"] + out["other_s"]
    if not out["other_s"]:
        out["other_s"] = max(0.0, out["total_s"] - out["model_s"] - out["sandbox_s"] - out["scorer_s"])
    return out


def _selection(record: dict) -> str | None:
    """How the answer was chosen, in words: 'vote (1 of 2 finished)'."""
    s = record.get("selection")
    if not isinstance(s, dict):
        return _text(s)
    method = _text(s.get("method"))
    votes, finished = _number(s.get("votes")), _number(s.get("finished"))
    if method and votes is not None and finished:
        return f"{method} ({votes:g} of {finished:g} finished)"
    return method


def problem_view(record: dict) -> dict:
    """One problem as the page needs it: headline fields, the tree's nodes, the chosen path."""
    tree = record.get("tree") if isinstance(record.get("tree"), dict) else {}
    raw = tree.get("nodes") if isinstance(tree.get("nodes"), list) else []
    nodes = normalize_nodes(raw)
    out = {
        "id": str(record.get("id")),
        "index": _number(record.get("index")),
        "schema": record.get("schema", 1),
        "question": _text(record.get("question")) or "",
        "gold": _text(record.get("gold")),
        "answer": _text(record.get("answer")),
        "grade": _grade(record),
        "pass_at_k": record.get("pass_at_k") if isinstance(record.get("pass_at_k"), bool) else None,
        "rollouts": _number(record.get("rollouts")) or 0,
        "rounds": _number(record.get("rounds")) or 0,
        "nodes": _number(record.get("nodes")) or len(nodes),
        "tokens": _number(record.get("tokens")) or sum(n.get("tokens", 0) for n in nodes),
        "num_terminal": _number(record.get("num_terminal")),
        "num_unknown_terminal": _number(record.get("num_unknown_terminal")) or 0,
        "time": _time(record),
        "selection": _selection(record),
        "algo": _text(record.get("algo")),
        "scorer": _text(record.get("scorer")),
        "gold_rewards": bool(record.get("gold_rewards")),
        "prompt": _text(record.get("prompt")),
        "solution": [s for s in (record.get("solution") or []) if isinstance(s, dict)],
        "tree": nodes,
        "chosen_path": chosen_path(record, nodes),
    }
    return out


# ---------------------------------------------------------------------- the run
def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion (95% by default); None without trials."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\b\d+(\.\d+)?\b")


def failure_reason(node: dict) -> str | None:
    """The reason a node failed, with names and numbers folded so that alike failures group."""
    if node["state"] not in CUT_STATES:
        return None
    reason = node.get("reason") or (node.get("output") if node["state"] == "error" else None) \
        or STATES[node["state"]]
    reason = reason.strip().splitlines()[0] if reason.strip() else STATES[node["state"]]
    reason = _NUMBER.sub("N", _QUOTED.sub("'…'", reason))
    return reason[:120]


def run_summary(problems: list[dict], config: dict) -> dict:
    """Headline figures and chart data over the problems shown."""
    graded = [p for p in problems if p["grade"] != "nogold"]
    correct = sum(1 for p in graded if p["grade"] == "correct")
    with_pass = [p for p in graded if p["pass_at_k"] is not None]
    states: Counter = Counter()
    depths: Counter = Counter()
    reasons: Counter = Counter()
    for p in problems:
        for n in p["tree"]:
            states[n["state"]] += 1
            depths[n["depth"]] += 1
            r = failure_reason(n)
            if r:
                reasons[r] += 1
    time = {k: sum(p["time"][k] for p in problems) for k in ("model_s", "sandbox_s", "scorer_s", "other_s", "total_s")}
    ci = wilson(correct, len(graded))
    return {
        "problems": len(problems),
        "graded": len(graded),
        "correct": correct,
        "accuracy": correct / len(graded) if graded else None,
        "accuracy_ci": list(ci) if ci else None,
        "pass_at_k": (sum(1 for p in with_pass if p["pass_at_k"]) / len(with_pass)) if with_pass else None,
        "pass_at_k_n": len(with_pass),
        "unknown": sum(1 for p in graded if p["grade"] == "unknown"),
        "unknown_terminal": sum(p["num_unknown_terminal"] for p in problems),
        "answered": sum(1 for p in problems if p["answer"] is not None),
        "tokens": sum(p["tokens"] for p in problems),
        "rollouts": sum(p["rollouts"] for p in problems),
        "nodes": sum(len(p["tree"]) for p in problems),
        "gold_rewards": any(p["gold_rewards"] for p in problems),
        "time": time,
        "states": {s: states.get(s, 0) for s in STATES},
        "depths": [depths.get(d, 0) for d in range(max(depths) + 1)] if depths else [],
        "reasons": reasons.most_common(10),
        "config": config,
    }
