"""Best-of-N: N independent whole solutions, each written step by step to its end with
its code executed, then one chosen by the scorer's values or by a vote.

The root is expanded with N samples; every unfinished solution then takes one
sampled step per round until it finishes, is cut, or reaches the depth limit.
Identical first steps are merged (the tree stores each distinct step once), so a
problem may end with fewer than N solutions; ``num_terminal`` says how many.
"""

from __future__ import annotations

from rstar.search.base import Request, Search, Tree


class BestOfN(Search):
    algo = "bon"

    def samples(self) -> int:
        return self.config.n

    def temperature(self) -> float:
        return self.config.temperature

    def init_tree(self, tree: Tree) -> None:
        tree.state["live"] = [tree.root]
        tree.state["first"] = True

    def round(self, active: list[Tree]) -> None:
        reqs = []
        for t in active:
            n = self.samples() if t.state["first"] else 1
            t.state["first"] = False
            reqs += [Request(t, node, n, self.temperature()) for node in t.state["live"]]
        new = self.expand(reqs)
        nxt: dict[int, list] = {id(t): [] for t in active}
        for x in new:
            if x.info.kind == "code":
                nxt[id(x.tree)].append(x.node)
        for t in active:
            t.state["live"] = nxt[id(t)]
            if not t.state["live"]:
                t.done = True

    def sequences_per_tree(self) -> int:
        return self.samples()

    def tree_done(self, tree: Tree) -> bool:
        return tree.done or tree.rounds >= self.config.max_rounds
