"""Greedy chain of thought: one sample per step at temperature 0, code executed.

Best-of-N with N = 1 and temperature 0: the baseline every search is compared to.
"""

from __future__ import annotations

from rstar.search.bon import BestOfN


class Greedy(BestOfN):
    algo = "greedy"

    def samples(self) -> int:
        return 1

    def temperature(self) -> float:
        return 0.0
