"""Search settings, with rStar-Math's published values as presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class SearchConfig:
    """Every knob of one search. Field comments give rStar-Math's public value."""

    rollouts: int = 8                # terminal back-ups per problem (rStar: 48 data gen, 12 eval; paper round 1: 8)
    children: int = 4                # candidate steps sampled per expansion (rStar: 12 data gen, 32 eval)
    max_depth: int = 16              # steps per solution (rStar: 16)
    error_threshold: int = 1         # consecutive failing steps tolerated before a node is cut (rStar: 1 eval, 2 bootstrap)
    temperature: float = 0.7         # sampling temperature (rStar: 0.7 to 1.0)
    c: float = 2.0                   # UCT exploration constant (rStar: 2)
    first_play: float = math.inf     # value of an unvisited child (rStar's public code: 0)
    leaves_per_tree: int = 1         # leaves taken from one tree per model call, via virtual loss
    max_tokens: int = 256            # tokens per step
    max_rounds: int = 200            # model calls per problem at most: a search always ends
    answer_selection: str = "q"      # "q": best Q; "vote": majority; "qvote": Q-weighted vote
    concurrent_problems: int = 8     # trees in flight at once; their leaves share each model call
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("rollouts", "children", "max_depth", "error_threshold", "leaves_per_tree",
                    "max_tokens", "max_rounds", "concurrent_problems")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.answer_selection not in ("q", "vote", "qvote"):
            raise ValueError(f"answer_selection must be one of q, vote, qvote; got {self.answer_selection!r}")

    def replace(self, **changes) -> "SearchConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS: dict[str, SearchConfig] = {
    # rStar-Math public defaults for data generation (gold answers known).
    "rstar-generate": SearchConfig(rollouts=48, children=12, max_depth=16, error_threshold=2, temperature=0.8),
    # rStar-Math public defaults for evaluation.
    "rstar-eval": SearchConfig(rollouts=12, children=32, max_depth=16, error_threshold=1, temperature=0.7),
    # What 2 CPU cores and a 1.5B model can afford interactively.
    "cpu": SearchConfig(rollouts=4, children=3, max_depth=10, error_threshold=1, temperature=0.7, max_tokens=200),
    # Greedy chain of thought with the same template: one sample, temperature 0, code executed.
    "greedy": SearchConfig(rollouts=1, children=1, max_depth=16, error_threshold=1, temperature=0.0),
}


def preset(name: str) -> SearchConfig:
    try:
        return dataclasses.replace(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
