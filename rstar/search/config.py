"""Search settings: one dataclass, every algorithm's knobs, published values as presets.

Each field names the algorithms that read it. ``PRESETS`` hold the published
settings of each method (docs/METHODS.md) and what 2 CPU cores can afford; recipes
(``rstar/recipes/*.yaml``) name a preset and override fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from rstar.selection import METHODS as SELECTIONS

ALGORITHMS = ("mcts", "puct", "beam", "bon", "mctsr", "greedy")


@dataclass
class SearchConfig:
    """Every knob of one search. Comments give the published value and who reads it."""

    # all step-wise algorithms
    max_depth: int = 16              # steps per solution (rStar: 16)
    error_threshold: int = 1         # consecutive failing steps before a node is cut (rStar: 1 eval, 2 bootstrap)
    temperature: float = 0.7         # sampling temperature (rStar: 0.7 to 1.0; MCTSr 0.95)
    max_tokens: int = 256            # tokens per step
    max_rounds: int = 200            # model calls per problem at most: a search always ends
    answer_selection: str = "auto"   # auto | best | vote | weighted_vote | topk_vote (see rstar.selection)
    top_k_vote: int = 4              # k of topk_vote
    concurrent_problems: int | None = None  # trees in flight at once (their leaves share each model call);
                                            # None: what the backend prefers (1 for llama.cpp), else 8
    seed: int = 0
    # mcts (rStar-Math, UCT) and puct (AlphaMath)
    rollouts: int = 8                # finished or cut paths per problem (rStar: 48 data gen, 12 eval; paper round 1: 8)
    children: int = 4                # candidate steps sampled per expansion (rStar: 12 data gen, 32 eval)
    c: float | None = None           # exploration constant; None: the rule's default (UCT 2, PUCT 1.25, MCTSr 1.4)
    first_play: float | None = None  # value of an unvisited child; None: the rule's default (UCT +inf, PUCT 0)
    leaves_per_tree: int = 1         # leaves taken from one tree per model call, via virtual loss
    # beam (AlphaMath step-level beam search)
    beam_width: int = 3              # B1 beams kept (AlphaMath: 1 or 3)
    beam_samples: int = 5            # B2 samples per beam per step (AlphaMath: 5)
    # bon (best-of-N whole solutions)
    n: int = 8                       # independent whole solutions
    # mctsr (MCTSr over whole answers)
    mctsr_rollouts: int = 4          # critique + rewrite iterations (MCTSr: 1, 4 or 8)
    mctsr_max_children: int = 3      # children per node at most (MCTSr: 3)
    self_eval_samples: int = 3       # self-evaluation samples per answer
    critique_tokens: int = 256       # tokens of one critique / one self-evaluation

    def __post_init__(self) -> None:
        positive = ("rollouts", "children", "max_depth", "error_threshold", "leaves_per_tree", "max_tokens",
                    "max_rounds", "concurrent_problems", "beam_width", "beam_samples", "n", "mctsr_rollouts",
                    "mctsr_max_children", "self_eval_samples", "critique_tokens", "top_k_vote")
        for name in positive:
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.answer_selection not in SELECTIONS:
            raise ValueError(f"answer_selection must be one of {', '.join(SELECTIONS)}; got {self.answer_selection!r}")
        if self.c is not None and not (self.c >= 0 and math.isfinite(self.c)):
            raise ValueError(f"c must be a finite number >= 0, got {self.c}")

    def replace(self, **changes) -> "SearchConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown search setting(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**d)


PRESETS: dict[str, SearchConfig] = {
    # rStar-Math public defaults for data generation (gold answers known).
    "rstar-generate": SearchConfig(rollouts=48, children=12, max_depth=16, error_threshold=2, temperature=0.8),
    # rStar-Math public defaults for evaluation.
    "rstar-eval": SearchConfig(rollouts=12, children=32, max_depth=16, error_threshold=1, temperature=0.7),
    # AlphaMath: MCTS N=40 with PUCT c=1.25; step-level beam search B1=3, B2=5.
    "alphamath": SearchConfig(rollouts=40, children=5, max_depth=16, temperature=0.6, c=1.25,
                              beam_width=3, beam_samples=5),
    # MCTSr: 8 rollouts, 3 children a node, temperature 0.95.
    "mctsr": SearchConfig(mctsr_rollouts=8, mctsr_max_children=3, temperature=0.95, self_eval_samples=3),
    # What 2 CPU cores and a 1.5B model can afford interactively.
    "cpu": SearchConfig(rollouts=4, children=3, max_depth=10, error_threshold=1, temperature=0.7, max_tokens=200,
                        beam_width=2, beam_samples=3, n=4, mctsr_rollouts=2, self_eval_samples=2),
    # Greedy chain of thought with the same template: one sample, temperature 0, code executed.
    "greedy": SearchConfig(rollouts=1, children=1, max_depth=16, error_threshold=1, temperature=0.0),
}


def preset(name: str) -> SearchConfig:
    try:
        return dataclasses.replace(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
