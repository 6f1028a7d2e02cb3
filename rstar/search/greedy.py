"""Greedy chain of thought: one sample per step at temperature 0, code executed.

Best-of-N with N = 1 and temperature 0 (``GREEDY``, whatever the preset says): the
baseline every search is compared to.
"""

from __future__ import annotations

from rstar.search.bon import BestOfN
from rstar.search.config import GREEDY


class Greedy(BestOfN):
    algo = "greedy"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.config = self.config.replace(**GREEDY)
