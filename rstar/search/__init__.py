"""Search algorithms over step trees, peers behind one calling convention.

Each algorithm is a module here, built from the same parts (policy, template,
sandbox, scorer, config) and sharing the stages of :mod:`rstar.search.base`:

    search = make_search("beam", policy, template, sandbox, config, scorer)
    for result in search.search(problems):   # one result dict per problem (docs/TRACE_SCHEMA.md)
        ...

=========  ==================================================================
``mcts``   rStar-Math MCTS (UCT, c = 2)                         mcts.py
``puct``   AlphaMath MCTS (PUCT, c = 1.25, log-prob priors)     puct.py
``beam``   AlphaMath step-level beam search (B1 beams, B2 each)  beam.py
``bon``    best-of-N whole solutions                            bon.py
``mctsr``  MCTSr: self-refine over whole answers                mctsr.py
``greedy`` one sample per step at temperature 0                 greedy.py
=========  ==================================================================
"""

from rstar.results import Problem
from rstar.search.base import Search
from rstar.search.beam import BeamSearch
from rstar.search.bon import BestOfN
from rstar.search.config import ALGORITHMS, PRESETS, SearchConfig, preset
from rstar.search.greedy import Greedy
from rstar.search.mcts import MCTS
from rstar.search.mctsr import MCTSr
from rstar.search.puct import PUCTSearch

REGISTRY = {"mcts": MCTS, "puct": PUCTSearch, "beam": BeamSearch, "bon": BestOfN, "mctsr": MCTSr,
            "greedy": Greedy}
assert tuple(REGISTRY) == ALGORITHMS


def make_search(algo: str, policy, template, sandbox, config=None, scorer=None, provenance=None) -> Search:
    try:
        cls = REGISTRY[algo]
    except KeyError:
        raise ValueError(f"unknown algorithm {algo!r}; one of {', '.join(ALGORITHMS)}") from None
    return cls(policy, template, sandbox, config, scorer=scorer, provenance=provenance)


__all__ = ["ALGORITHMS", "MCTS", "MCTSr", "PRESETS", "PUCTSearch", "Problem", "REGISTRY", "SearchConfig",
           "BeamSearch", "BestOfN", "Greedy", "Search", "make_search", "preset"]
