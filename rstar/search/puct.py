"""AlphaMath MCTS (docs/METHODS.md section 3): PUCT over steps, c_puct = 1.25.

``Q(s,a) + c_puct * P(s,a) * sqrt(N(s)) / (1 + N(s,a))`` with the prior
``P = exp(mean token log-prob of the step)`` (1 where a backend gives no
log-probabilities). Leaf evaluation comes from the scorer with no rollout: a
value head or PPM values every new step, finished steps get +1 / -1 against the
gold answer (data generation) or the scorer's value, cut paths -1. The loop is
rStar-Math's (rstar.search.mcts) with the PUCT rule.
"""

from __future__ import annotations

from rstar.search.mcts import MCTS
from rstar.tree import PUCT


class PUCTSearch(MCTS):
    algo = "puct"
    rule = PUCT
