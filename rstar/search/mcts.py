"""rStar-Math MCTS over many problems at once (METHODS.md section 1).

One round of the loop, for every tree in flight together:

    select   one call to the C++ core: k leaves per tree, virtual loss on their paths
    prompt   the template renders question + steps along each leaf's path
    generate one batched policy call: `children` candidate steps per leaf
    parse    the template turns each completion into a step (or an invalid node, with a reason)
    execute  one sandbox batch: the program of each new path; a failing step is cut
    score    terminal answers: +1 / -1 against the gold answer, or 0 when none is known
    back up  one call to the core for all terminal values; virtual loss removed

The core holds the numbers (visits, values, flags); this module holds the text
of each node, keyed by node id, and frees it once the problem is written out.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from rstar import grader
from rstar.results import Problem
from rstar.search.config import SearchConfig
from rstar.tree import INVALID, TERMINAL, UCT, Forest


class StepInfo:
    """The text side of one node. The numbers live in the core under the same id."""

    __slots__ = ("text", "shown", "code", "output", "kind", "status", "reason",
                 "answer", "correct", "errors", "tokens")

    def __init__(self, text: str = "", kind: str = "root") -> None:
        self.text = text          # the step as the model wrote it, stop string included
        self.shown = text         # what later prompts show for this step (text + output block)
        self.code = ""            # this step's contribution to the program of its path
        self.output = ""          # stdout attributable to this step
        self.kind = kind          # root | code | final | answer | invalid
        self.status = "ok"        # ok | error | timeout | memory | output_limit | sandbox_error | parse_error | max_depth | no_answer
        self.reason = None        # why the node is invalid, one line
        self.answer = None        # final answer, for terminal nodes
        self.correct = None       # against the gold answer, when one is known
        self.errors = 0           # consecutive failing steps ending here
        self.tokens = 0


@dataclass
class TimeSplit:
    model_s: float = 0.0
    sandbox_s: float = 0.0
    total_s: float = 0.0

    @property
    def other_s(self) -> float:
        return max(0.0, self.total_s - self.model_s - self.sandbox_s)

    def add(self, other: "TimeSplit", share: float = 1.0) -> None:
        self.model_s += other.model_s * share
        self.sandbox_s += other.sandbox_s * share
        self.total_s += other.total_s * share

    def as_dict(self) -> dict:
        return {"model_s": round(self.model_s, 4), "sandbox_s": round(self.sandbox_s, 4),
                "other_s": round(self.other_s, 4), "total_s": round(self.total_s, 4)}


@dataclass
class _Tree:
    problem: Problem
    index: int                      # position in the input, for ordering
    root: int
    rollouts: int = 0               # terminal back-ups so far
    rounds: int = 0                 # model calls that served this tree
    nodes: list = field(default_factory=list)  # every node id of the tree, root first
    terminals: list = field(default_factory=list)
    tokens: int = 0
    time: TimeSplit = field(default_factory=TimeSplit)


class MCTS:
    """Runs the search for a stream of problems, `concurrent_problems` trees at a time.

    `policy`, `template` and `sandbox` follow the contracts in docs/ARCHITECTURE.md.
    `search(problems)` yields one result dict per problem as soon as it finishes.
    """

    def __init__(self, policy, template, sandbox, config: SearchConfig | None = None,
                 use_gold: bool = True) -> None:
        self.policy = policy
        self.template = template
        self.sandbox = sandbox
        self.config = config or SearchConfig()
        self.use_gold = use_gold
        self.forest = Forest()
        self.info: dict[int, StepInfo] = {}
        self.time = TimeSplit()
        self.expansions = 0
        self._round = 0

    # ------------------------------------------------------------------ driver
    def search(self, problems: Iterable[Problem]) -> Iterator[dict]:
        cfg = self.config
        pending = iter(enumerate(problems))
        active: list[_Tree] = []
        exhausted = False
        while True:
            while not exhausted and len(active) < cfg.concurrent_problems:
                nxt = next(pending, None)
                if nxt is None:
                    exhausted = True
                    break
                active.append(self._new_tree(nxt[1], nxt[0]))
            if not active:
                return
            self._step(active)
            still = []
            for tree in active:
                if self._finished(tree):
                    yield self._result(tree)
                    self._forget(tree)
                else:
                    still.append(tree)
            active = still

    def solve(self, problem: Problem) -> dict:
        return next(iter(self.search([problem])))

    # ------------------------------------------------------------------ one round
    def _step(self, active: list[_Tree]) -> None:
        cfg, t = self.config, self.template
        round_start = time.perf_counter()
        model_s = sandbox_s = 0.0
        roots = np.fromiter((tr.root for tr in active), dtype=np.int64, count=len(active))
        leaves, owner = self.forest.select(roots, cfg.leaves_per_tree)
        if len(leaves) == 0:
            for tr in active:  # nothing selectable: every leaf is in flight or dead
                tr.rounds = cfg.max_rounds
            return
        leaves = [int(x) for x in leaves]
        owners = [active[int(o)] for o in owner]
        served = {id(o): o for o in owners}
        for tr in served.values():
            tr.rounds += 1

        prompts = [t.render(self.policy.format_chat, owners[i].problem.question, self._shown_path(leaf))
                   for i, leaf in enumerate(leaves)]
        t0 = time.perf_counter()
        completions = self.policy.generate(
            prompts, n=cfg.children, stop=list(t.stop), max_tokens=cfg.max_tokens,
            temperature=cfg.temperature, seed=cfg.seed + self._round)
        model_s = time.perf_counter() - t0
        self._round += 1

        # Expand every leaf with its distinct candidate steps, in one call.
        kept: list[list] = []
        for comps in completions:
            seen, uniq = set(), []
            for comp in comps:
                key = (comp.text, comp.stop)
                if key not in seen:
                    seen.add(key)
                    uniq.append(comp)
            kept.append(uniq)
        counts = np.array([len(k) for k in kept], dtype=np.int64)
        priors = np.array([_prior(c) for k in kept for c in k], dtype=np.float64)
        children = self.forest.expand(np.array(leaves, dtype=np.int64), counts, priors)
        self.forest.cancel(np.array(leaves, dtype=np.int64))

        # Parse; collect the programs to run.
        new: list[tuple[int, int, _Tree, StepInfo, object]] = []  # (child, leaf, tree, info, parsed)
        pos = 0
        for i, leaf in enumerate(leaves):
            tree = owners[i]
            for comp in kept[i]:
                child = int(children[pos])
                pos += 1
                info = StepInfo(t.step_text(comp.text, comp.stop), kind="code")
                info.tokens = int(comp.num_tokens or 0)
                tree.tokens += info.tokens
                self.info[child] = info
                tree.nodes.append(child)
                try:
                    parsed = t.parse(comp.text, comp.stop, comp.finish_reason)
                except Exception as exc:  # a template bug must not end the run
                    parsed = None
                    info.kind, info.status, info.reason = "invalid", "parse_error", f"parser failed: {exc!r}"
                if parsed is not None and parsed.kind == "invalid":
                    info.kind, info.status, info.reason = "invalid", "parse_error", parsed.error or "malformed step"
                elif parsed is not None:
                    info.kind = parsed.kind
                new.append((child, leaf, tree, info, parsed))
        self.expansions += len(new)

        to_run = [item for item in new if item[3].kind in ("code", "final")]
        if to_run:
            prefix = {leaf: self._code_path(leaf) for leaf in {item[1] for item in to_run}}
            paths = [prefix[leaf] + [parsed.code] for _, leaf, _, _, parsed in to_run]
            t0 = time.perf_counter()
            results = self.sandbox.run_steps(paths)
            sandbox_s = time.perf_counter() - t0
            for (_, leaf, _, info, parsed), res in zip(to_run, results):
                self._apply_execution(leaf, info, parsed, res)

        # Terminal answers, dead ends and depth limits.
        invalid, terminal, values, ended_in = [], [], [], []
        depth = self.forest.view("depth")
        for child, _, tree, info, parsed in new:
            if info.kind == "invalid":
                invalid.append(child)
                continue
            is_terminal = bool(info.kind in ("final", "answer") and parsed.is_terminal)
            if info.kind == "answer" and parsed is not None:
                info.answer = parsed.answer
            if is_terminal:
                if not info.answer:
                    info.status, info.reason = "no_answer", info.reason or "the solution ended without an answer"
                terminal.append(child)
                ended_in.append(tree)
                values.append(self._score(info, tree.problem.gold))
            elif int(depth[child]) >= cfg.max_depth:
                info.kind, info.status = "invalid", "max_depth"
                info.reason = f"reached the depth limit ({cfg.max_depth} steps) without an answer"
                invalid.append(child)
                terminal.append(child)
                ended_in.append(tree)
                values.append(-1.0)
        if invalid:
            self.forest.mark_invalid(np.array(invalid, dtype=np.int64))
        if terminal:
            only_terminal = [n for n in terminal if self.info[n].kind != "invalid"]
            if only_terminal:
                self.forest.mark_terminal(np.array(only_terminal, dtype=np.int64))
            # New children were never selected, so no virtual loss to remove: `backup`, not `backprop`.
            self.forest.backup(np.array(terminal, dtype=np.int64), np.array(values, dtype=np.float64))
            for n, tree in zip(terminal, ended_in):
                tree.rollouts += 1
                if self.info[n].kind != "invalid":
                    tree.terminals.append(n)

        # Share the round's time among the trees it served, by leaves.
        total = time.perf_counter() - round_start
        split = TimeSplit(model_s, sandbox_s, total)
        self.time.add(split)
        per_tree = Counter(id(o) for o in owners)
        for tr in served.values():
            tr.time.add(split, per_tree[id(tr)] / len(leaves))

    def _apply_execution(self, leaf: int, info: StepInfo, parsed, res) -> None:
        t = self.template
        parent = self.info[leaf]
        if res.valid:
            info.code = parsed.code
            info.output = res.output
            info.status = "ok"
            if info.kind == "final":
                stdout = res.exec.stdout if res.exec is not None else res.output
                if parsed.is_terminal:
                    info.answer = parsed.answer or t.answer_from_output(stdout, parsed)
                else:
                    info.shown = info.text + t.output_block(stdout)
            return
        info.status = res.status
        info.errors = parent.errors + 1
        if info.errors >= self.config.error_threshold or res.status == "sandbox_error":
            info.kind = "invalid"
            info.reason = res.error or res.status
        else:
            # Tolerated error (rStar's errors_threshold): the node survives and may be
            # expanded, but its failing code stays out of the program of the path; one more
            # failing step in a row reaches the threshold. A failed final step is not an ending.
            info.kind = "code"
            info.output = res.error or res.status

    def _score(self, info: StepInfo, gold: str | None) -> float:
        """Terminal reward: +1/-1 against the gold answer; 0 when no gold is used; -1 for no answer."""
        if info.answer and gold is not None:
            info.correct = bool(grader.answers_equal(info.answer, gold))
        if not info.answer:
            return -1.0
        if self.use_gold and gold is not None:
            return 1.0 if info.correct else -1.0
        return 0.0

    # ------------------------------------------------------------------ helpers
    def _new_tree(self, problem: Problem, index: int) -> _Tree:
        cfg = self.config
        root = int(self.forest.create_roots(1, rule=UCT, c=cfg.c, first_play=cfg.first_play)[0])
        self.info[root] = StepInfo(kind="root")
        return _Tree(problem=problem, index=index, root=root, nodes=[root])

    def _path_infos(self, node: int) -> list[StepInfo]:
        return [self.info[int(n)] for n in self.forest.path(node)[1:]]

    def _shown_path(self, node: int) -> list[str]:
        return [i.shown for i in self._path_infos(node)]

    def _code_path(self, node: int) -> list[str]:
        return [i.code for i in self._path_infos(node) if i.code]

    def _finished(self, tree: _Tree) -> bool:
        flags = int(self.forest.view("flags")[tree.root])
        return (tree.rollouts >= self.config.rollouts or bool(flags & (TERMINAL | INVALID))
                or tree.rounds >= self.config.max_rounds)

    def _forget(self, tree: _Tree) -> None:
        for n in tree.nodes:
            self.info.pop(n, None)

    # ------------------------------------------------------------------ results
    def _select_answer(self, tree: _Tree) -> tuple[int | None, str | None]:
        answered = [n for n in tree.terminals if self.info[n].answer]
        if not answered:
            return None, None
        # every terminal was backed up when it was found, so Q = W/N is defined
        q = dict(zip(answered, self.forest.q(answered).tolist()))
        mode = self.config.answer_selection
        if mode == "q":
            best = max(answered, key=lambda n: (q[n], -n))
            return best, self.info[best].answer
        weights = None
        if mode == "qvote":
            weights = [(q[n] + 1.0) / 2.0 + 1e-6 for n in answered]
        answer = grader.majority_vote([self.info[n].answer for n in answered], weights)
        same = [n for n in answered if grader.answers_equal(self.info[n].answer, answer)]
        best = max(same or answered, key=lambda n: (q[n], -n))
        return best, answer

    def _result(self, tree: _Tree) -> dict:
        chosen, answer = self._select_answer(tree)
        gold = tree.problem.gold
        correct = None
        if gold is not None and answer is not None:
            correct = bool(grader.answers_equal(answer, gold))
        elif gold is not None:
            correct = False
        answered = [n for n in tree.terminals if self.info[n].answer]
        any_correct = any(self.info[n].correct for n in answered) if gold is not None else None
        solution = []
        if chosen is not None:
            for n in self.forest.path(chosen)[1:]:
                i = self.info[int(n)]
                solution.append({"text": i.text, "code": i.code, "output": i.output, "kind": i.kind})
        return {
            "id": tree.problem.id,
            "index": tree.index,
            "question": tree.problem.question,
            "gold": gold,
            "answer": answer,
            "correct": correct,
            "pass_at_k": any_correct,
            "num_terminal": len(answered),
            "num_correct_terminal": sum(1 for n in answered if self.info[n].correct),
            "rollouts": tree.rollouts,
            "rounds": tree.rounds,
            "nodes": len(tree.nodes),
            "tokens": tree.tokens,
            "time": tree.time.as_dict(),
            "selection": self.config.answer_selection,
            "gold_rewards": bool(self.use_gold and gold is not None),
            "solution": solution,
            "tree": self.export(tree),
        }

    def export(self, tree: _Tree) -> dict:
        """The whole tree, numbers from the core and text from here, with local ids (root = 0)."""
        arrays = self.forest.export_tree(tree.root)
        ids = [int(x) for x in arrays["node_ids"]]
        nodes = []
        for local, gid in enumerate(ids):
            i = self.info[gid]
            visits = int(arrays["visits"][local])
            nodes.append({
                "id": local,
                "parent": int(arrays["parent"][local]),
                "depth": int(arrays["depth"][local]),
                "visits": visits,
                "q": (float(arrays["value_sum"][local]) / visits) if visits else None,
                "prior": float(arrays["prior"][local]),
                "terminal": bool(int(arrays["flags"][local]) & TERMINAL),
                "kind": i.kind, "status": i.status, "reason": i.reason,
                "text": i.text, "code": i.code, "output": i.output,
                "answer": i.answer, "correct": i.correct, "tokens": i.tokens,
            })
        return {"nodes": nodes}


def _prior(comp) -> float:
    """AlphaMath's prior: exp(mean token log-probability) of the step; 1 when unknown."""
    lp = getattr(comp, "logprob_sum", None)
    n = getattr(comp, "num_tokens", 0) or 0
    if lp is None or n <= 0 or not math.isfinite(lp):
        return 1.0
    return math.exp(lp / n)
