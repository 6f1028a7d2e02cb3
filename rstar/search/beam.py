"""AlphaMath step-level beam search (docs/METHODS.md section 3).

Keep B1 (``beam_width``) partial solutions; each round every beam samples B2
(``beam_samples``) next steps; all new steps of a problem are ranked by the
scorer's value and the best B1 still unfinished are kept. A finished solution
leaves the beam and shrinks it (B1 - finished). Without a value signal (scorer
``none``) candidates are ranked by the step's prior, exp(mean token log-prob):
the model's own confidence, stated in the result's ``selection``.
"""

from __future__ import annotations

from rstar.search.base import Request, Search, Tree


class BeamSearch(Search):
    algo = "beam"

    def init_tree(self, tree: Tree) -> None:
        tree.state["beams"] = [tree.root]
        tree.state["width"] = self.config.beam_width

    def round(self, active: list[Tree]) -> None:
        cfg = self.config
        reqs = [Request(t, b, cfg.beam_samples, cfg.temperature) for t in active for b in t.state["beams"]]
        new = self.expand(reqs)
        prior = self.forest.view("prior")
        by_tree: dict[int, list] = {}
        for x in new:
            by_tree.setdefault(id(x.tree), []).append(x)
        for t in active:
            mine = by_tree.get(id(t), [])
            t.state["width"] -= sum(1 for x in mine if x.info.finished and x.info.kind != "invalid")
            live = [x for x in mine if x.info.kind == "code"]
            live.sort(key=lambda x: (-(x.info.value if x.info.value is not None else float(prior[x.node]) - 2.0),
                                     x.info.local))
            t.state["beams"] = [x.node for x in live[:max(0, t.state["width"])]]
            if not t.state["beams"]:
                t.done = True

    def sequences_per_tree(self) -> int:
        return self.config.beam_width * self.config.beam_samples

    def tree_done(self, tree: Tree) -> bool:
        return tree.done or tree.rounds >= self.config.max_rounds
