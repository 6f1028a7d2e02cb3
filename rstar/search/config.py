"""Search settings: one dataclass, every algorithm's knobs, published values as presets.

Each field names the algorithms that read it. ``PRESETS`` hold the published
settings of each method (docs/METHODS.md) and what 2 CPU cores can afford; recipes
(``rstar/recipes/*.yaml``) name a preset and override fields.

**The budget values need to act.** A search is only guided by its values where
the selection rule consults them, and each rule ignores Q until some budget is spent:

* ``mcts`` (UCT, unvisited child = +inf): every child of a node is tried before that
  node's children are compared by Q. With a scorer that values only finished solutions
  (``gold``, ``self``) a child gets its first visit when a path below it ends, and one
  expansion can end up to ``children`` paths at once, so the first step's siblings
  compete by Q only after up to ``children ** 2`` rollouts (never before ``children``):
  the rule here is ``rollouts > children ** 2``. At ``cpu`` (4 rollouts of 3 children)
  gold-rewarded and unrewarded searches build the same trees (measured: 30 of 30, issue
  18): it is sampling plus a vote. Data generation therefore uses ``cpu-generate`` (16
  rollouts of 3; rStar-Math generates with 16 or more). ``rstar-generate`` (48 of 12)
  does not pass the rule either with +inf first play; ``first_play=0`` (the public
  rStar code scores an unvisited child 0) lets Q act after the first finished path.
  A scorer that values partial solutions (``ppm:PATH``, ``value:PATH``,
  ``gold+ppm:PATH``) gives each new step its value as one visit, so Q is consulted
  from the second round on, at any budget;
* ``puct`` (unvisited child = 0, prior-weighted): values act as soon as a child has one,
  i.e. with a partial-solution scorer at once, with a terminal-only one after the first
  finished path (``rollouts >= 2``);
* ``beam``: the scorer's values of partial solutions choose the kept beams at every step
  (``beam_samples > 1``); a terminal-only scorer only picks among the finished ones;
* ``bon``, ``greedy``: values never steer the samples, they only choose the answer;
* ``mctsr``: the self-grades steer from the first refinement (``mctsr_rollouts >= 1``);
  the refinement tree needs ``mctsr_rollouts > mctsr_max_children`` before a node's
  children compete by Q.

``values_steer(config, algo, scores_partial)`` says, in one line, whether a setting is
sure to give the values a say (a tree whose paths end early may let them act sooner).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from rstar.selection import METHODS as SELECTIONS

ALGORITHMS = ("mcts", "puct", "beam", "bon", "mctsr", "greedy")
DRIVERS = ("async", "lockstep")


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
    concurrent_problems: int | None = None  # trees in flight at once, at most; None: sized to the engine
                                            # (its capacity() over the sequences one tree asks for at once)
    driver: str = "async"            # async: each tree advances on its own as its completions return, so
                                     # model, sandbox and scorer overlap; lockstep: every tree in flight
                                     # waits for one shared model call per round (same trees either way)
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
        if self.driver not in DRIVERS:
            raise ValueError(f"driver must be one of {', '.join(DRIVERS)}; got {self.driver!r}")
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


# What makes a search greedy: one sample at temperature 0. The greedy search applies it
# whatever the preset says (rstar.search.greedy); the "greedy" preset starts from it.
GREEDY = {"n": 1, "temperature": 0.0}

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
    # What 2 CPU cores and a 1.5B model can afford interactively. At 4 rollouts of 3 children UCT tries
    # every child before consulting Q: gold or self rewards do not steer it (sampling plus a vote); a PPM
    # or value scorer does (new steps start with their value).
    "cpu": SearchConfig(rollouts=4, children=3, max_depth=10, error_threshold=1, temperature=0.7, max_tokens=200,
                        beam_width=2, beam_samples=3, n=4, mctsr_rollouts=2, self_eval_samples=2),
    # Data generation on 2 CPU cores: 16 rollouts of 3 children (rStar-Math generates with 16 or more), so
    # the gold rewards of finished paths steer which steps get explored (rollouts well past the branching).
    "cpu-generate": SearchConfig(rollouts=16, children=3, max_depth=10, error_threshold=1, temperature=0.7,
                                 max_tokens=200, beam_width=2, beam_samples=3, n=16, mctsr_rollouts=4,
                                 self_eval_samples=2),
    # Greedy chain of thought with the same template: one sample, temperature 0, code executed.
    "greedy": SearchConfig(rollouts=1, children=1, max_depth=16, error_threshold=1, **GREEDY),
}


def values_steer(config: SearchConfig, algo: str = "mcts", scores_partial: bool = False) -> tuple[bool, str]:
    """Whether ``algo`` at ``config`` gives a scorer's values a say in which steps are explored,
    and why (the module docstring's rules). ``scores_partial``: the scorer values unfinished
    solutions (a PPM or value head) rather than only finished ones (gold, self)."""
    if algo in ("bon", "greedy"):
        return False, f"{algo} samples independently of any value: values only choose the answer"
    if algo == "beam":
        if scores_partial:
            return True, "beam keeps the best-valued partial solutions at every step"
        return False, "beam with a terminal-only scorer keeps beams unvalued: values only choose the answer"
    if algo == "mctsr":
        ok = config.mctsr_rollouts > config.mctsr_max_children
        return ok, (f"mctsr_rollouts {config.mctsr_rollouts} " + (">" if ok else "<=")
                    + f" mctsr_max_children {config.mctsr_max_children}")
    if scores_partial:
        return True, "new steps start with their value as one visit: Q is consulted from the second round"
    if algo == "puct" or (config.first_play is not None and math.isfinite(config.first_play)):
        ok = config.rollouts >= 2
        return ok, (f"unvisited children have a finite value: Q is consulted after the first finished path "
                    f"({config.rollouts} rollouts)")
    need = config.children ** 2
    ok = config.rollouts > need
    return ok, (f"UCT tries all {config.children} children of a node before consulting Q: {config.rollouts} "
                f"rollouts {'exceed' if ok else 'do not exceed'} children^2 = {need}"
                + ("" if ok else "; terminal rewards cannot change the tree (data generation: cpu-generate)"))


def preset(name: str) -> SearchConfig:
    try:
        return dataclasses.replace(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
