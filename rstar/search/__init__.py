"""Search algorithms over step trees. One algorithm a module, one calling convention:
construct with (policy, template, sandbox, config), then `search(problems)` yields results.

Greedy chain of thought is the MCTS loop with the `greedy` preset: one sample per
step at temperature 0, code executed, one rollout.
"""

from rstar.search.config import PRESETS, SearchConfig, preset
from rstar.search.mcts import MCTS, Problem

__all__ = ["MCTS", "PRESETS", "Problem", "SearchConfig", "preset"]
