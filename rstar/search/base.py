"""The stages every search algorithm shares, written once.

    prompts   the template renders question + the shown steps of each path
    generate  one batched policy call; each prompt has its own seed, derived from the
              run's seed, the problem id and the node's local id, so a problem's samples
              never depend on batching, concurrency, --resume or how a dataset is split
    parse     the template turns each completion into a step, or an invalid node with a reason
    execute   one sandbox batch: each new step runs after its path (incrementally where the
              pool keeps the parent's interpreter state); a failing step is cut
    score     one scorer call for the new nodes the scorer values
    back up   one core call: finished and cut paths, and scored new nodes, back up their value

An algorithm (a peer module in this package) subclasses :class:`Search` and
decides only what to expand each round (``round``) and when a tree is done
(``tree_done``). Two drivers run the rounds (``SearchConfig.driver``): ``async`` (the
default) gives each tree in flight its own thread running its rounds alone, its model
requests sent through ``policy.submit`` as soon as they are made, so the engine, the
sandbox and the scorer work for different trees at once (rstar.search.driver);
``lockstep`` runs one round over every tree in flight with one shared model call. The
trees are the same either way: a round of several trees is the rounds of each. The C++ core (``rstar.tree.Forest``) is the only holder of
visits, values and flags; this module holds each node's text, keyed by node id,
and forgets it (and releases the core's nodes and the sandbox's states) once the
problem's result is written out.

Results follow docs/TRACE_SCHEMA.md (schema 2).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from rstar import selection
from rstar.policy.base import NodeRef
from rstar.results import Problem
from rstar.scorers import NoScorer, ScoreItem, grade, stable_seed
from rstar.search import driver as _driver
from rstar.search.config import SearchConfig
from rstar.tree import EXHAUSTED, INVALID, MCTSR, TERMINAL, UCT, Forest

SCHEMA_VERSION = 2


class StepInfo:
    """The text side of one node. The numbers live in the core under the same id."""

    __slots__ = ("local", "text", "shown", "code", "output", "kind", "status", "reason", "answer",
                 "correct", "errors", "tokens", "logprob", "value", "finished", "prompt", "stdout")

    def __init__(self, local: int, text: str = "", kind: str = "root") -> None:
        self.local = local        # id within its tree, in creation order (root = 0)
        self.text = text          # the step as the model wrote it, stop string included
        self.shown = text         # what later prompts show for this step (text + output block)
        self.code = ""            # this step's contribution to the program of its path
        self.output = ""          # stdout of this step alone (the error line for a failed step)
        self.stdout = ""          # the whole program's stdout, for a final step
        self.kind = kind          # root | code | final | answer | whole | invalid
        self.status = "ok"        # ok | error | timeout | memory | output_limit | sandbox_error | parse_error | max_depth | no_answer
        self.reason = None        # why the node was cut, one line
        self.answer = None        # the answer of a finished solution
        self.correct = None       # three-valued grade against the gold answer
        self.errors = 0           # consecutive failing steps ending here
        self.tokens = 0
        self.logprob = None       # summed token log-probability of the step
        self.value = None         # the scorer's value when the node was created
        self.finished = False     # this step ended the solution (with or without an answer)
        self.prompt = None        # algorithm-specific prompt (MCTSr's whole answers)


@dataclass
class TimeSplit:
    model_s: float = 0.0
    sandbox_s: float = 0.0
    scorer_s: float = 0.0
    total_s: float = 0.0

    @property
    def other_s(self) -> float:
        return max(0.0, self.total_s - self.model_s - self.sandbox_s - self.scorer_s)

    def add(self, other: "TimeSplit", share: float = 1.0) -> None:
        self.model_s += other.model_s * share
        self.sandbox_s += other.sandbox_s * share
        self.scorer_s += other.scorer_s * share
        self.total_s += other.total_s * share

    def as_dict(self) -> dict:
        return {"model_s": round(self.model_s, 4), "sandbox_s": round(self.sandbox_s, 4),
                "scorer_s": round(self.scorer_s, 4), "other_s": round(self.other_s, 4),
                "total_s": round(self.total_s, 4)}


@dataclass
class Tree:
    problem: Problem
    index: int                      # position in the input, for ordering
    root: int
    key: str                        # the sandbox's key for this tree's interpreter states
    prompt: str = ""                # the exact prompt prefix before the first step
    rollouts: int = 0               # finished or cut paths so far
    rounds: int = 0                 # model calls that served this tree
    nodes: list = field(default_factory=list)      # every node id of the tree, root first
    terminals: list = field(default_factory=list)  # nodes that finished a solution with an answer
    tokens: int = 0
    time: TimeSplit = field(default_factory=TimeSplit)
    started: float = 0.0
    state: dict = field(default_factory=dict)      # the algorithm's own per-tree state
    done: bool = False


@dataclass
class Request:
    """Expand ``node`` of ``tree`` with ``n`` sampled steps."""

    tree: Tree
    node: int
    n: int
    temperature: float


@dataclass
class NewNode:
    node: int
    parent: int
    tree: Tree
    info: StepInfo
    parsed: object


class Search:
    """Base of every algorithm: the shared stages, the driver loop and the result.

    ``search(problems)`` yields one result dict per problem as soon as it finishes,
    keeping :meth:`in_flight` trees in flight so their requests share the engine.
    """

    algo = "base"
    rule = UCT
    default_selection = "auto"

    def __init__(self, policy, template, sandbox, config: SearchConfig | None = None, scorer=None,
                 provenance: dict | None = None) -> None:
        self.policy = policy
        self.template = template
        self.sandbox = sandbox
        self.config = config or SearchConfig()
        self.scorer = scorer if scorer is not None else NoScorer()
        self.provenance = dict(provenance or {})
        self.forest = Forest()
        self.info: dict[int, StepInfo] = {}
        self.time = TimeSplit()
        self.expansions = 0
        self._incremental = hasattr(sandbox, "release")
        self._local = threading.local()     # per thread: the round's time split, the async run
        self._lock = threading.Lock()       # shared counters (time, expansions)
        self._scorer_lock = threading.Lock()  # a scorer not marked thread_safe is called by one thread at a time
        self.direct_calls = Counter()        # direct generate calls: busy_s, decode_steps, sequences, tokens

    # ------------------------------------------------------------------ drivers
    def search(self, problems: Iterable[Problem]) -> Iterator[dict]:
        """One result per problem, as soon as its tree is done (in finishing order), with
        :meth:`in_flight` trees searched at once by the configured driver."""
        if self.config.driver == "lockstep":
            return self._search_lockstep(problems)
        return self._search_async(problems)

    def solve(self, problem: Problem) -> dict:
        return next(iter(self.search([problem])))

    def in_flight(self) -> int:
        """Trees searched at once: ``concurrent_problems`` when set, else sized to the engine
        (its ``capacity()`` over :meth:`sequences_per_tree`)."""
        return _driver.trees_in_flight(_driver.capacity_of(self.policy), self.sequences_per_tree(),
                                       self.config.concurrent_problems, self.config.driver)

    def sequences_per_tree(self) -> int:
        """Sequences one tree asks the engine for at once (an algorithm says how many)."""
        return 1

    def _search_lockstep(self, problems: Iterable[Problem]) -> Iterator[dict]:
        width = self.in_flight()
        pending = iter(enumerate(problems))
        active: list[Tree] = []
        exhausted = False
        while True:
            while not exhausted and len(active) < width:
                nxt = next(pending, None)
                if nxt is None:
                    exhausted = True
                    break
                active.append(self._new_tree(nxt[1], nxt[0]))
            if not active:
                return
            self._timed_round([t for t in active if not t.done])
            still = []
            for tree in active:
                if tree.done or self.tree_done(tree):
                    result = self.result(tree)
                    self._forget(tree)
                    yield result
                else:
                    still.append(tree)
            active = still

    def _search_async(self, problems: Iterable[Problem]) -> Iterator[dict]:
        width = self.in_flight()
        run = _driver.AsyncRun()
        pending = iter(enumerate(problems))  # read here only: the caller's iterator needs no lock
        live, exhausted, failed = 0, False, False
        try:
            while True:
                while not exhausted and live < width:
                    nxt = next(pending, None)
                    if nxt is None:
                        exhausted = True
                        break
                    t = threading.Thread(target=self._grow, args=(run, nxt[1], nxt[0]), daemon=True,
                                         name=f"rstar-tree-{nxt[0]}")
                    run.threads = [x for x in run.threads if x.is_alive()] + [t]
                    t.start()
                    live += 1
                if not live:
                    return
                kind, payload = run.next_event()
                live -= 1
                if kind == "error":
                    failed = True
                    problem, exc = payload
                    if hasattr(exc, "add_note"):
                        exc.add_note(f"(while searching problem {problem.id!r})")
                    raise exc
                if kind == "result":
                    yield payload
        finally:
            # an error, Ctrl-C or a caller that stopped reading: the other trees stop at their next wait
            run.shut(wait_s=10.0 if failed or live else 0.0)

    def _grow(self, run: "_driver.AsyncRun", problem: Problem, index: int) -> None:
        """One tree's thread: its rounds until it is done, then its result."""
        self._local.run = run
        tree = None
        try:
            tree = self._new_tree(problem, index)
            while True:
                self._timed_round_async(run, tree)
                if tree.done or self.tree_done(tree):
                    break
                if run.stop.is_set():
                    raise _driver.Stopped()
            result = self.result(tree)
            self._forget(tree)
            tree = None
            run.events.put(("result", result))
        except _driver.Stopped:
            run.events.put(("stopped", None))
        except BaseException as exc:  # noqa: BLE001 - the caller's thread raises it
            run.stop.set()
            run.events.put(("error", (problem, exc)))
        finally:
            if tree is not None:
                try:
                    self._forget(tree)
                except Exception:  # a selection still in flight after an error: leave it
                    pass
            self._local.run = None

    def _timed_round(self, active: list[Tree]) -> None:
        if not active:
            return
        start = time.perf_counter()
        self._round_split = split = TimeSplit()
        self._served = Counter()
        try:
            self.round(active)
        finally:
            self._round_split = None
        split.total_s = time.perf_counter() - start
        with self._lock:
            self.time.add(split)
        served = self._served or Counter({id(t): 1 for t in active})
        total = sum(served.values())
        for t in active:
            if served[id(t)]:
                t.time.add(split, served[id(t)] / total)

    def _timed_round_async(self, run: "_driver.AsyncRun", tree: Tree) -> None:
        """One round of one tree; its times scaled to the tree's share of the wall time."""
        s0 = run.clock.enter()
        start = time.perf_counter()
        self._round_split = split = TimeSplit()
        self._served = Counter()
        try:
            self.round([tree])
        finally:
            self._round_split = None
            share = run.clock.leave() - s0
            split.total_s = time.perf_counter() - start
            scaled = TimeSplit()
            if split.total_s > 0:
                scaled.add(split, share / split.total_s)
            tree.time.add(scaled)
            with self._lock:
                self.time.add(scaled)

    # per-thread round state: each tree's thread (async) times its own rounds
    @property
    def _round_split(self) -> TimeSplit | None:
        return getattr(self._local, "split", None)

    @_round_split.setter
    def _round_split(self, value: TimeSplit | None) -> None:
        self._local.split = value

    @property
    def _served(self) -> Counter:
        got = getattr(self._local, "served", None)
        if got is None:
            got = self._local.served = Counter()
        return got

    @_served.setter
    def _served(self, value: Counter) -> None:
        self._local.served = value

    # ------------------------------------------------------------------ hooks
    def init_tree(self, tree: Tree) -> None:
        """Called once a tree's root exists (MCTSr builds its first answers here)."""

    def round(self, active: list[Tree]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def tree_done(self, tree: Tree) -> bool:
        flags = int(self.forest.view("flags")[tree.root])
        return bool(flags & (TERMINAL | INVALID | EXHAUSTED)) or tree.rounds >= self.config.max_rounds

    def candidates(self, tree: Tree) -> list[selection.Candidate]:
        """Finished solutions with an answer, valued by the scorer (None: no value)."""
        return [selection.Candidate(self.info[n].answer, self.info[n].value, n)
                for n in tree.terminals if self.info[n].answer]

    def root_rule(self) -> dict:
        return {"rule": self.rule}

    # ------------------------------------------------------------------ shared stages
    def _new_tree(self, problem: Problem, index: int) -> Tree:
        kw = self.root_rule()
        cfg = self.config
        if cfg.c is not None:
            kw["c"] = cfg.c
        if cfg.first_play is not None:
            kw["first_play"] = cfg.first_play
        root = int(self.forest.create_roots(1, **kw)[0])
        self.info[root] = StepInfo(0, kind="root")
        run = self.provenance.get("run_id", "")
        tree = Tree(problem=problem, index=index, root=root, key=f"{run}/{index}/{problem.id}",
                    nodes=[root], started=time.perf_counter())
        tree.prompt = self.template.render(self.policy.format_chat, problem.question, [])
        self.init_tree(tree)
        return tree

    def seed_for(self, tree: Tree, node: int, purpose: str = "expand") -> int:
        return stable_seed(self.config.seed, tree.problem.id, self.info[node].local, purpose)

    def generate(self, prompts: list[str], seeds: list[int], n: int, temperature: float,
                 max_tokens: int | None = None, stop: Sequence[str] | None = None, trees: Sequence[Tree] = (),
                 nodes: Sequence[NodeRef] | None = None):
        """The model's completions of every prompt, timed, with one seed per prompt and one
        :class:`NodeRef` per prompt (``nodes``). On a tree's thread (async driver) each prompt is
        submitted to the engine on its own; otherwise one batched ``generate`` call."""
        t0 = time.perf_counter()
        stops = list(self.template.stop if stop is None else stop)
        max_tokens = max_tokens or self.config.max_tokens
        run = getattr(self._local, "run", None)
        if run is not None:
            futs = [self.policy.submit(p, n=n, stop=stops, max_tokens=max_tokens, temperature=temperature,
                                       seed=int(s), node=None if nodes is None else nodes[k])
                    for k, (p, s) in enumerate(zip(prompts, seeds))]
            out = [run.wait(f) for f in futs]
        else:
            kw = {} if nodes is None else {"nodes": list(nodes)}
            out = self.policy.generate(prompts, n=n, stop=stops, max_tokens=max_tokens,
                                       temperature=temperature, seed=list(seeds), **kw)
            with self._lock:  # the engine's use where the backend does not count it (engine_snapshot)
                c = self.direct_calls
                c["busy_s"] += time.perf_counter() - t0
                c["decode_steps"] += 1
                c["sequences_decoded"] += len(prompts) * n
                c["generated_tokens"] += sum(int(x.num_tokens or 0) for comps in out for x in comps)
        if self._round_split is not None:
            self._round_split.model_s += time.perf_counter() - t0
        for tr in trees:
            self._served[id(tr)] += 1
        return out

    def expand(self, requests: list[Request]) -> list[NewNode]:
        """Expand every requested node with its sampled steps: generate, parse, execute,
        classify, score and back up. Returns the new nodes (in request order)."""
        if not requests:
            return []
        t = self.template
        by_shape: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            by_shape.setdefault((r.n, r.temperature), []).append(i)
        completions: list = [None] * len(requests)
        for (n, temp), idx in by_shape.items():
            prompts = [self._prompt(requests[i].tree, requests[i].node) for i in idx]
            seeds = [self.seed_for(requests[i].tree, requests[i].node) for i in idx]
            refs = [self.node_ref(requests[i].tree, requests[i].node) for i in idx]
            got = self.generate(prompts, seeds, n, temp, trees=[requests[i].tree for i in idx], nodes=refs)
            for i, comps in zip(idx, got):
                completions[i] = comps
        for r in requests:
            r.tree.rounds += 1

        kept: list[list] = []
        for comps in completions:
            seen, uniq = set(), []
            for comp in comps:
                k = (comp.text, comp.stop)
                if k not in seen:
                    seen.add(k)
                    uniq.append(comp)
            kept.append(uniq)
        nodes = np.array([r.node for r in requests], dtype=np.int64)
        counts = np.array([len(k) for k in kept], dtype=np.int64)
        priors = np.array([_prior(c) for k in kept for c in k], dtype=np.float64)
        children = self._add_children(nodes, counts, priors)

        new: list[NewNode] = []
        pos = 0
        for r, comps in zip(requests, kept):
            tree = r.tree
            for comp in comps:
                child = int(children[pos])
                pos += 1
                info = StepInfo(len(tree.nodes), t.step_text(comp.text, comp.stop), kind="code")
                info.tokens = int(comp.num_tokens or 0)
                info.logprob = comp.logprob_sum
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
                new.append(NewNode(child, r.node, tree, info, parsed))
        with self._lock:
            self.expansions += len(new)
        self.execute(new)
        self._classify(new)
        return new

    def _add_children(self, nodes: np.ndarray, counts: np.ndarray, priors: np.ndarray) -> np.ndarray:
        return self.forest.expand(nodes, counts, priors)

    def node_ref(self, tree: Tree, node: int) -> NodeRef:
        """The engine's name for the request that expands ``node``: (tree key, its local id,
        its parent's local id or None for the root)."""
        parent = int(self.forest.view("parent")[node])
        return NodeRef(tree.key, self.info[node].local, None if parent < 0 else self.info[parent].local)

    def _prompt(self, tree: Tree, node: int) -> str:
        return tree.prompt + "".join(self.info[int(n)].shown for n in self.forest.path(node)[1:])

    def _state_parent(self, node: int) -> int | None:
        """The nearest node on the path whose interpreter state is the program of ``node``'s
        path (a node whose step failed adds no code: its state is its parent's)."""
        for n in reversed(self.forest.path(node)[1:]):
            info = self.info[int(n)]
            if info.code:
                return info.local
        return None

    def execute(self, new: list[NewNode]) -> None:
        """One sandbox batch for every new code step; results applied to the nodes."""
        to_run = [x for x in new if x.info.kind in ("code", "final")]
        if not to_run:
            return
        prefix = {p: self._code_path(p) for p in {x.parent for x in to_run}}
        paths = [prefix[x.parent] + [x.parsed.code] for x in to_run]
        keys = None
        if self._incremental:
            keys = [(x.tree.key, x.info.local, self._state_parent(x.parent)) for x in to_run]
        results = self.run_steps(paths, keys)
        for x, res in zip(to_run, results):
            self._apply_execution(x, res)

    def run_steps(self, paths: list[list[str]], keys: list[tuple] | None = None):
        """One timed sandbox batch; ``keys`` (tree, node, parent) let the pool reuse node states."""
        t0 = time.perf_counter()
        results = self.sandbox.run_steps(paths, nodes=keys) if keys else self.sandbox.run_steps(paths)
        if self._round_split is not None:
            self._round_split.sandbox_s += time.perf_counter() - t0
        return results

    def _apply_execution(self, x: NewNode, res) -> None:
        apply_execution(self.template, x.info, x.parsed, self.info[x.parent].errors, res,
                        self.config.error_threshold)

    def _classify(self, new: list[NewNode]) -> None:
        """The new nodes' fate: mark finished, cut and too-deep ones in the core; score; back up."""
        terminal, finished = self._mark(new)
        self._let_go(finished)
        self._score(new, terminal)
        self._back_up(new, finished)

    def _mark(self, new: list[NewNode]) -> tuple[list[NewNode], list[NewNode]]:
        """Invalid and terminal flags in the core. Returns the terminal nodes (an answer) and
        the finished ones (the path ends here: an answer, no answer, or the depth limit)."""
        cfg = self.config
        depth = self.forest.view("depth")
        invalid, terminal, finished = [], [], []
        for x in new:
            info = x.info
            if info.kind == "invalid":
                invalid.append(x)
            elif ends_solution(info, x.parsed):
                (invalid if info.kind == "invalid" else terminal).append(x)
                finished.append(x)
            elif int(depth[x.node]) >= cfg.max_depth:
                info.kind, info.status = "invalid", "max_depth"
                info.reason = f"reached the depth limit ({cfg.max_depth} steps) without an answer"
                invalid.append(x)
                finished.append(x)
        if invalid:
            self.forest.mark_invalid(np.array([x.node for x in invalid], dtype=np.int64))
        if terminal:
            self.forest.mark_terminal(np.array([x.node for x in terminal], dtype=np.int64))
            for x in terminal:
                x.tree.terminals.append(x.node)
        for x in terminal:
            if x.tree.problem.gold is not None:
                x.info.correct = grade(x.info.answer, x.tree.problem.gold)
        return terminal, finished

    def _let_go(self, finished: list[NewNode]) -> None:
        """A finished or cut path is never continued: its interpreter state can go now, and the
        engine may drop what it keeps for those nodes."""
        by_tree: dict[str, list[int]] = {}
        for x in finished:
            by_tree.setdefault(x.tree.key, []).append(x.info.local)
        for key, locals_ in by_tree.items():
            if self._incremental:
                try:
                    self.sandbox.release(key, locals_)
                except Exception:  # a dead container has nothing left to release
                    pass
            self.policy.forget(key, locals_)

    def _score(self, new: list[NewNode], terminal: list[NewNode]) -> None:
        """Scorer values: finished solutions always; partial ones when the scorer values them."""
        to_score = list(terminal)
        if getattr(self.scorer, "scores_partial", False):
            to_score += [x for x in new if x.info.kind == "code"]
        if to_score:
            values = self.score_items([self._score_item(x.tree, x.node) for x in to_score])
            for x, v in zip(to_score, values):
                x.info.value = None if v is None else max(-1.0, min(1.0, float(v)))

    def score_items(self, items: list[ScoreItem]) -> list:
        """One timed scorer call (one thread at a time for a scorer not marked ``thread_safe``)."""
        return self.call_scorer(self.scorer.score, items)

    def call_scorer(self, fn, *args):
        t0 = time.perf_counter()
        if getattr(self.scorer, "thread_safe", False):
            out = fn(*args)
        else:
            with self._scorer_lock:
                out = fn(*args)
        if self._round_split is not None:
            self._round_split.scorer_s += time.perf_counter() - t0
        return out

    def _back_up(self, new: list[NewNode], finished: list[NewNode]) -> None:
        """Finished and cut paths count as rollouts and back up their value (-1 when cut);
        scored partial nodes start with their value as one visit (rStar-Math's PPM initialisation)."""
        nodes, vals = [], []
        for x in finished:
            x.tree.rollouts += 1
            nodes.append(x.node)
            if x.info.kind == "invalid":
                vals.append(-1.0)
            else:
                vals.append(x.info.value if x.info.value is not None else 0.0)
        for x in new:
            if x.info.kind == "code" and x.info.value is not None:
                nodes.append(x.node)
                vals.append(x.info.value)
        if nodes:
            # new children were never selected, so no virtual loss to remove: `backup`
            self.forest.backup(np.array(nodes, dtype=np.int64), np.array(vals, dtype=np.float64))

    def _score_item(self, tree: Tree, node: int) -> ScoreItem:
        path = [self.info[int(n)] for n in self.forest.path(node)[1:]]
        steps = [i.shown for i in path]
        info = self.info[node]
        return ScoreItem(question=tree.problem.question, steps=steps, prompt=tree.prompt + "".join(steps),
                         finished=info.finished, answer=info.answer, gold=tree.problem.gold,
                         key=(tree.problem.id, info.local))

    def _code_path(self, node: int) -> list[str]:
        return [self.info[int(n)].code for n in self.forest.path(node)[1:] if self.info[int(n)].code]

    def _forget(self, tree: Tree) -> None:
        for n in tree.nodes:
            self.info.pop(n, None)
        if self._incremental:
            try:
                self.sandbox.release(tree.key)
            except Exception:  # a dead container has nothing left to release
                pass
        self.policy.forget(tree.key)
        self.forest.release(np.array([tree.root], dtype=np.int64))

    # ------------------------------------------------------------------ results
    def select_answer(self, tree: Tree) -> tuple[list[selection.Candidate], selection.Selection]:
        """The finished solutions and the selection among them (config, else the algorithm's default)."""
        cands = self.candidates(tree)
        method = self.config.answer_selection
        if method == "auto":
            method = self.default_selection
        return cands, selection.select(cands, method, k=self.config.top_k_vote)

    def result(self, tree: Tree) -> dict:
        cands, sel = self.select_answer(tree)
        chosen = cands[sel.index].node if sel.index is not None else None
        gold = tree.problem.gold
        correct = grade(sel.answer, gold) if (gold is not None and sel.answer is not None) else None
        if gold is not None and sel.answer is None:
            correct = False  # nothing answered: wrong, not unknown
        verdict = None if gold is None else ("unknown" if correct is None else ("equal" if correct else "not_equal"))
        answered = [self.info[n] for n in tree.terminals if self.info[n].answer]
        pass_at_k = any(i.correct is True for i in answered) if gold is not None else None
        solution = []
        if chosen is not None:
            for n in self.solution_path(chosen):
                i = self.info[int(n)]
                solution.append({"text": i.text, "code": i.code, "output": i.output, "kind": i.kind})
        times = tree.time.as_dict()
        times.update(kind="share", wall_s=round(time.perf_counter() - tree.started, 4))
        uses_gold = bool(getattr(self.scorer, "needs_gold", False) and gold is not None)
        out = {
            "schema": SCHEMA_VERSION,
            "id": tree.problem.id,
            "index": tree.index,
            "question": tree.problem.question,
            "gold": gold,
            "answer": sel.answer,
            "correct": correct,
            "grade": verdict,
            "selection": sel.as_dict(),
            "chosen": self.info[chosen].local if chosen is not None else None,
            "pass_at_k": pass_at_k,
            "num_terminal": len(answered),
            "num_correct_terminal": sum(1 for i in answered if i.correct is True),
            "num_unknown_terminal": sum(1 for i in answered if i.correct is None) if gold is not None else 0,
            "rollouts": tree.rollouts,
            "rounds": tree.rounds,
            "nodes": len(tree.nodes),
            "tokens": tree.tokens,
            "time": times,
            "algo": self.algo,
            "scorer": getattr(self.scorer, "name", "none"),
            "model": self.provenance.get("model", getattr(self.policy, "name", "")),
            "template": self.provenance.get("template", getattr(self.template, "name", "")),
            "seed": self.config.seed,
            "gold_rewards": uses_gold,
            "solution": solution,
            "prompt": tree.prompt,
            "tree": self.export(tree),
        }
        return out

    def solution_path(self, node: int) -> list[int]:
        """The nodes whose steps make up the solution ending at ``node`` (root excluded)."""
        return [int(n) for n in self.forest.path(node)[1:]]

    def export(self, tree: Tree) -> dict:
        """The whole tree, numbers from the core and text from here, with local ids (root = 0)."""
        arrays = self.forest.export_tree(tree.root)
        ids = [int(x) for x in arrays["node_ids"]]
        # export order is the core's; ids in the file are creation order (StepInfo.local)
        local_of = {gid: self.info[gid].local for gid in ids}
        rows: list[dict] = [None] * len(ids)  # type: ignore[list-item]
        for k, gid in enumerate(ids):
            i = self.info[gid]
            visits = int(arrays["visits"][k])
            flags = int(arrays["flags"][k])
            parent_k = int(arrays["parent"][k])
            kind = None
            if i.finished and i.answer and flags & TERMINAL:
                kind = "answer"
            elif flags & EXHAUSTED:
                kind = "exhausted"
            q = (float(arrays["value_sum"][k]) / visits) if visits else None
            if self.rule == MCTSR:  # MCTSr's Q is the backed-up quality (rewards in [-100, 100], shown / 100)
                qb = float(arrays["q_backed"][k])
                q = None if math.isnan(qb) else qb / 100.0
            row = {
                "id": i.local,
                "parent": local_of[ids[parent_k]] if parent_k >= 0 else -1,
                "depth": int(arrays["depth"][k]),
                "visits": visits,
                "q": q,
                "value": i.value,
                "prior": float(arrays["prior"][k]),
                "terminal": bool(flags & TERMINAL),
                "terminal_kind": kind,
                "kind": i.kind, "status": i.status, "reason": i.reason,
                "text": i.text, "shown": i.shown, "code": i.code, "output": i.output,
                "answer": i.answer, "correct": i.correct, "tokens": i.tokens, "logprob": i.logprob,
            }
            if i.prompt is not None:
                row["prompt"] = i.prompt
            rows[i.local] = row
        return {"nodes": [r for r in rows if r is not None]}


def apply_execution(template, info: StepInfo, parsed, parent_errors: int, res, error_threshold: int) -> None:
    """Write one step's sandbox result into its node (rStar-Math step semantics)."""
    if res.valid:
        info.code = parsed.code
        info.output = res.output
        info.status = "ok"
        if info.kind == "final":
            stdout = res.exec.stdout if res.exec is not None else res.output
            info.stdout = stdout
            if parsed.is_terminal:
                info.answer = parsed.answer or template.answer_from_output(stdout, parsed)
            else:
                info.shown = info.text + template.output_block(stdout)
        return
    info.status = res.status
    info.errors = parent_errors + 1
    if info.errors >= error_threshold or res.status == "sandbox_error":
        info.kind = "invalid"
        info.reason = res.error or res.status
    else:
        # Tolerated error (rStar's errors_threshold): the node survives and may be
        # expanded, but its failing code stays out of the program of the path; one more
        # failing step in a row reaches the threshold. A failed final step is not an ending.
        info.kind = "code"
        info.output = res.error or res.status


def ends_solution(info: StepInfo, parsed) -> bool:
    """Whether this step ends its solution (a final step or an answer); records an answer
    step's answer. A solution that ends without an answer makes the step invalid
    (``no_answer``). Shared by the step-tree algorithms and MCTSr's whole solutions."""
    if info.kind == "answer" and parsed is not None:
        info.answer = parsed.answer
    if not (info.kind in ("final", "answer") and parsed is not None and parsed.is_terminal):
        return False
    info.finished = True
    if not info.answer:
        info.status = "no_answer"
        info.reason = info.reason or "the solution ended without an answer"
        info.kind = "invalid"
    return True


def _prior(comp) -> float:
    """AlphaMath's prior: exp(mean token log-probability) of the step; 1 when unknown."""
    lp = getattr(comp, "logprob_sum", None)
    n = getattr(comp, "num_tokens", 0) or 0
    if lp is None or n <= 0 or not math.isfinite(lp):
        return 1.0
    return math.exp(lp / n)
