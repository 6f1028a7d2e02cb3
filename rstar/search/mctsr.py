"""MCTSr (docs/METHODS.md section 2): MCTS over whole answers with self-refine.

A node is a whole solution: written step by step with the step template, every
step's code executed in the sandbox (the shared stages of rstar.search.base, with
no tree of steps kept). The tree's root is a placeholder whose two children are a
zero-shot solution and the dummy answer "I don't know". Each rollout:

1. select: the core's MCTSr rule, ``UCT(a) = Q(a) + c * sqrt(ln(N(parent) + 1) / (N(a) + eps))``
   (c = 1.4, eps = 1e-5), stopping at the first node that may still be expanded: fewer than
   ``mctsr_max_children`` children and none of them better than itself;
2. refine: the policy critiques that node's solution, then rewrites it given the
   critique; the rewrite (code executed) becomes a new child;
3. rate: the new answer is graded ``self_eval_samples`` times in [-100, 100] by the
   scorer (``self``: MCTSr's strict prompt, grades of 95 or more replaced by 50; any
   other scorer: its value x 100), ``Q(a) = (min R + mean R) / 2``;
4. back up: ``Q'(parent) = (Q(parent) + max child Q) / 2`` up the whole path (the core
   keeps it current), and one visit along the path.

The answer is the node with the highest own Q (pass@1 of the selected answer;
``pass_at_k`` still says whether any node was right). The placeholder root holds one
reward of -100, so it is never itself chosen for expansion once its children are rated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rstar.errors import RstarError
from rstar.policy.base import NodeRef
from rstar.scorers import ScoreItem, SelfEvalScorer, grade, stable_seed
from rstar.search.base import Search, StepInfo, Tree, apply_execution, ends_solution
from rstar.tree import MCTSR

DUMMY_ANSWER = "I don't know."

CRITIQUE_PROMPT = (
    "Question: {question}\n\nHere is a proposed solution, a Python program written step by step "
    "with its printed output:\n\n{solution}\n\nCriticise this solution strictly: point out every flaw, "
    "wrong assumption and calculation error, and say what should be done instead. Do not write a new solution."
)
REWRITE_QUESTION = (
    "{question}\n\nAn earlier attempt at this problem:\n\n{solution}\n\nA critique of that attempt:\n\n{critique}"
    "\n\nWrite a better solution that follows the critique."
)


@dataclass
class Whole:
    """A whole solution being written step by step."""

    prompt: str
    seed: int
    key: str = ""   # the engine's name for this solution's requests (step d: node d, parent d - 1)
    shown: list = field(default_factory=list)
    text: list = field(default_factory=list)
    codes: list = field(default_factory=list)
    output: str = ""
    answer: str | None = None
    status: str = "ok"
    reason: str | None = None
    tokens: int = 0
    logprob: float = 0.0
    errors: int = 0
    done: bool = False


class MCTSr(Search):
    algo = "mctsr"
    rule = MCTSR
    default_selection = "best"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        if not isinstance(self.scorer, SelfEvalScorer) and getattr(self.scorer, "name", "none") == "none":
            raise RstarError("mctsr needs a scorer that values answers: --scorer self (MCTSr's own), gold, "
                             "ppm:PATH or value:PATH")

    def root_rule(self) -> dict:
        return {"rule": MCTSR, "max_children": self.config.mctsr_max_children}

    def init_tree(self, tree: Tree) -> None:
        tree.state["iter"] = 0
        tree.state["ready"] = False
        tree.state["writes"] = 0

    def sequences_per_tree(self) -> int:
        return 1  # one whole solution written (or one critique) at a time

    # ------------------------------------------------------------------ rounds
    def round(self, active: list[Tree]) -> None:
        fresh = [t for t in active if not t.state["ready"]]
        if fresh:
            self._start(fresh)
        going = [t for t in active if t.state["ready"] and t not in fresh]
        if going:
            self._refine(going)

    def _start(self, trees: list[Tree]) -> None:
        wholes = self.write([(t, t.prompt, stable_seed(self.config.seed, t.problem.id, "zero-shot")) for t in trees])
        roots = np.array([t.root for t in trees], dtype=np.int64)
        kids = self.forest.expand(roots, np.full(len(trees), 2, dtype=np.int64),
                                  reserve=np.full(len(trees), 2, dtype=np.int64))
        rated = []
        for k, (t, w) in enumerate(zip(trees, wholes)):
            zs, dummy = int(kids[2 * k]), int(kids[2 * k + 1])
            self._whole_node(t, zs, w)
            d = StepInfo(len(t.nodes), DUMMY_ANSWER, kind="whole")
            d.prompt = None
            self.info[dummy] = d
            t.nodes.append(dummy)
            rated += [(t, zs), (t, dummy)]
            t.state["ready"] = True
        self.forest.add_rewards(roots, np.full(len(trees), -100.0))
        self._rate(rated)

    def _refine(self, trees: list[Tree]) -> None:
        cfg = self.config
        roots = np.array([t.root for t in trees], dtype=np.int64)
        leaves, owner = self.forest.select(roots, 1)
        got = {int(o) for o in owner}
        for k, t in enumerate(trees):
            if k not in got:
                t.done = True
        if len(leaves) == 0:
            return
        try:
            chosen = []
            for n, o in zip(leaves, owner):
                t = trees[int(o)]
                if int(n) == t.root:  # every answer graded -100: nothing is better than the placeholder
                    t.done = True
                else:
                    chosen.append((t, int(n)))
            if not chosen:
                return
            crit_prompts = [self.policy.format_chat([{"role": "user", "content": CRITIQUE_PROMPT.format(
                question=t.problem.question, solution=self._solution_text(n))}]) for t, n in chosen]
            seeds = [self.seed_for(t, n, "critique") for t, n in chosen]
            refs = [NodeRef(f"{t.key}/critique{t.state['iter']}", 0, None) for t, _ in chosen]
            crits = self.generate(crit_prompts, seeds, 1, cfg.temperature, max_tokens=cfg.critique_tokens,
                                  stop=[], trees=[t for t, _ in chosen], nodes=refs)
            for ref in refs:
                self.policy.forget(ref.tree)
            jobs = []
            for (t, n), cs in zip(chosen, crits):
                t.tokens += int(cs[0].num_tokens or 0)
                q2 = REWRITE_QUESTION.format(question=t.problem.question, solution=self._solution_text(n),
                                             critique=cs[0].text.strip())
                prompt = self.template.render(self.policy.format_chat, q2, [])
                jobs.append((t, prompt, self.seed_for(t, n, "rewrite")))
            wholes = self.write(jobs)
            kids = self.forest.add_children(np.array([n for _, n in chosen], dtype=np.int64),
                                            np.ones(len(chosen), dtype=np.int64))
            rated = []
            for (t, _), w, kid in zip(chosen, wholes, kids):
                self._whole_node(t, int(kid), w)
                rated.append((t, int(kid)))
                t.state["iter"] += 1
                t.rollouts += 1
            self._rate(rated)
        finally:
            self.forest.backprop(leaves, np.zeros(len(leaves)))

    def tree_done(self, tree: Tree) -> bool:
        return (tree.done or tree.state.get("iter", 0) >= self.config.mctsr_rollouts
                or tree.rounds >= self.config.max_rounds)

    # ------------------------------------------------------------------ whole solutions
    def write(self, jobs: list[tuple[Tree, str, int]]) -> list[Whole]:
        """Write one whole solution per job (tree, prompt, seed), step by step through the
        shared stages: generate (batched over jobs), parse, execute (one sandbox batch per step)."""
        cfg, t = self.config, self.template
        wholes = []
        for tr, p, s in jobs:
            tr.state["writes"] = tr.state.get("writes", 0) + 1
            wholes.append(Whole(prompt=p, seed=s, key=f"{tr.key}/whole{tr.state['writes']}"))
        trees = [tr for tr, _, _ in jobs]
        for depth in range(cfg.max_depth):
            live = [k for k, w in enumerate(wholes) if not w.done]
            if not live:
                break
            comps = self.generate([wholes[k].prompt + "".join(wholes[k].shown) for k in live],
                                  [stable_seed(wholes[k].seed, depth) for k in live], 1, cfg.temperature,
                                  trees=[trees[k] for k in live],
                                  nodes=[NodeRef(wholes[k].key, depth, depth - 1 if depth else None) for k in live])
            for tr in {id(trees[k]): trees[k] for k in live}.values():
                tr.rounds += 1
            run, runs = [], []
            for k, cs in zip(live, comps):
                w, c = wholes[k], cs[0]
                w.tokens += int(c.num_tokens or 0)
                trees[k].tokens += int(c.num_tokens or 0)
                if c.logprob_sum is not None:
                    w.logprob += c.logprob_sum
                info = StepInfo(0, t.step_text(c.text, c.stop), kind="code")
                parsed = t.parse(c.text, c.stop, c.finish_reason)
                if parsed.kind == "invalid":
                    w.done, w.status, w.reason = True, "parse_error", parsed.error or "malformed step"
                    w.text.append(info.text)
                    continue
                info.kind = parsed.kind
                if parsed.kind in ("code", "final"):
                    run.append((k, info, parsed))
                    runs.append(w.codes + [parsed.code])
                else:  # an answer step with no code
                    self._add_step(w, info, parsed)
            if runs:
                results = self.run_steps(runs)
                for (k, info, parsed), res in zip(run, results):
                    w = wholes[k]
                    apply_execution(t, info, parsed, w.errors, res, cfg.error_threshold)
                    w.errors = info.errors if info.status != "ok" else 0
                    self._add_step(w, info, parsed)
        for w in wholes:
            if not w.done:
                w.done, w.status = True, "max_depth"
                w.reason = f"reached the depth limit ({cfg.max_depth} steps) without an answer"
            self.policy.forget(w.key)
        return wholes

    @staticmethod
    def _add_step(w: Whole, info: StepInfo, parsed) -> None:
        w.text.append(info.text)
        w.shown.append(info.shown)
        if info.kind == "invalid":
            w.done, w.status, w.reason = True, info.status, info.reason
            return
        if info.code:
            w.codes.append(info.code)
        w.output = info.stdout or w.output
        if ends_solution(info, parsed):
            w.done = True
            w.answer = info.answer
            if not w.answer:
                w.status, w.reason = info.status, info.reason

    def _whole_node(self, tree: Tree, node: int, w: Whole) -> None:
        info = StepInfo(len(tree.nodes), "".join(w.text), kind="whole")
        info.shown = "".join(w.shown)
        info.code = "\n".join(w.codes)
        info.output = w.output
        info.answer = w.answer
        info.status, info.reason = w.status, w.reason
        info.tokens = w.tokens
        info.logprob = w.logprob
        info.prompt = w.prompt
        info.finished = w.answer is not None
        self.info[node] = info
        tree.nodes.append(node)
        if w.answer is not None:
            tree.terminals.append(node)
            if tree.problem.gold is not None:
                info.correct = grade(w.answer, tree.problem.gold)

    def _solution_text(self, node: int) -> str:
        info = self.info[node]
        if info.kind == "whole" and info.prompt is None:
            return DUMMY_ANSWER
        return info.shown + (f"\n(printed output: {info.output.strip()})" if info.output.strip() else "")

    def _rate(self, pairs: list[tuple[Tree, int]]) -> None:
        """Reward samples for each (tree, node), added to the core in one call."""
        if isinstance(self.scorer, SelfEvalScorer):
            grades = self.call_scorer(self.scorer.grades, [t.problem.question for t, _ in pairs],
                                      [self._solution_text(n) for _, n in pairs],
                                      [(t.problem.id, self.info[n].local) for t, n in pairs])
        else:
            items = [ScoreItem(question=t.problem.question, steps=[self.info[n].shown],
                               prompt=t.prompt + self.info[n].shown, finished=self.info[n].finished,
                               answer=self.info[n].answer, gold=t.problem.gold,
                               key=(t.problem.id, self.info[n].local)) for t, n in pairs]
            grades = [[] if v is None else [100.0 * v] for v in self.score_items(items)]
        nodes, rewards = [], []
        for (t, n), g in zip(pairs, grades):
            if g:
                self.info[n].value = 0.5 * (min(g) + sum(g) / len(g)) / 100.0
            nodes += [n] * len(g)
            rewards += list(g)
        if nodes:
            self.forest.add_rewards(np.array(nodes, dtype=np.int64), np.array(rewards, dtype=np.float64))

    def solution_path(self, node: int) -> list[int]:
        return [node]  # a node is a whole solution
