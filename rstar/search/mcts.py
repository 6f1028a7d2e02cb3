"""rStar-Math MCTS (docs/METHODS.md section 1): UCT over steps, c = 2.

Each round, for every tree in flight: select ``leaves_per_tree`` leaves (virtual
loss keeps them apart), expand each with ``children`` sampled steps through the
shared stages (rstar.search.base), and remove the virtual loss. A finished step
backs up its scorer value (gold: +1 / -1; a PPM: its score; none: 0), a cut path
backs up -1, and a new step the scorer values starts with that value as one
visit (rStar-Math initialises new nodes with the PPM's score). A tree is done
after ``rollouts`` finished or cut paths, when nothing is left to expand, or after
``max_rounds`` model calls.
"""

from __future__ import annotations

import numpy as np

from rstar.search.base import Request, Search, Tree
from rstar.tree import UCT


class MCTS(Search):
    algo = "mcts"
    rule = UCT

    def round(self, active: list[Tree]) -> None:
        cfg = self.config
        roots = np.fromiter((t.root for t in active), dtype=np.int64, count=len(active))
        leaves, owner = self.forest.select(roots, cfg.leaves_per_tree)
        got = {int(o) for o in owner}
        for k, tree in enumerate(active):
            if k not in got:  # nothing selectable: every leaf is dead
                tree.done = True
        if len(leaves) == 0:
            return
        try:
            self.expand([Request(active[int(o)], int(leaf), cfg.children, cfg.temperature)
                         for leaf, o in zip(leaves, owner)])
        finally:
            self.forest.cancel(leaves)

    def sequences_per_tree(self) -> int:
        return self.config.leaves_per_tree * self.config.children

    def tree_done(self, tree: Tree) -> bool:
        return tree.rollouts >= self.config.rollouts or super().tree_done(tree)
