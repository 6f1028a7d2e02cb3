"""From a recipe to a running search: the one road every run takes.

A local run (:mod:`rstar.runner`), one question (``rstar solve``) and each Ray
worker (:mod:`rstar.distributed`) open their parts here, in the order that fails
fastest (template, sandbox pool, policy, scorer), resolve the recipe against the
policy (:meth:`rstar.recipe.Recipe.resolve`) and build the search from it::

    with ExitStack() as stack:
        comps = open_components(recipe, stack, run_id=run_id)
        comps.recipe                    # resolved: what runs, and what run.json records
        for result in comps.search.search(problems): ...
"""

from __future__ import annotations

import sys
import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Sequence

from rstar.errors import DataError, RstarError
from rstar.recipe import Recipe
from rstar.results import Problem
from rstar.scorers import split_spec


@dataclass
class Components:
    recipe: Recipe       # resolved against the policy
    template: Any
    sandbox: Any
    policy: Any
    scorer: Any
    search: Any


def open_components(recipe: Recipe, stack: ExitStack, *, run_id: str = "",
                    cpus: float | None = None) -> Components:
    """Everything ``recipe`` needs to search, closed by ``stack``. ``cpus``: the CPUs this
    process was given (a Ray worker): one warm container each when the recipe sets no
    sandbox size (else: one per CPU of the host)."""
    from rstar.scorers import load_scorer
    from rstar.search import make_search
    from rstar.templates import get_template

    try:
        template = get_template(recipe.template)
    except ValueError as exc:
        raise RstarError(str(exc)) from None
    sandbox = stack.enter_context(open_sandbox(recipe.sandbox, cpus))
    policy = load_policy(recipe)
    stack.callback(policy.close)
    recipe = recipe.resolve()
    cfg = recipe.search
    scorer = load_scorer(recipe.scorer, policy=policy, template=template, seed=recipe.seed,
                         samples=cfg.self_eval_samples, max_tokens=cfg.critique_tokens)
    stack.callback(scorer.close)
    provenance = {"model": recipe.model, "template": recipe.template, "run_id": run_id}
    try:
        search = make_search(recipe.algo, policy, template, sandbox, cfg, scorer=scorer, provenance=provenance)
    except ValueError as exc:
        raise RstarError(str(exc)) from None
    if cfg.concurrent_problems is None:  # sized to the engine by the search; recorded as it runs
        recipe = dataclasses.replace(recipe, search=cfg.replace(concurrent_problems=search.in_flight()))
    return Components(recipe=recipe, template=template, sandbox=sandbox, policy=policy, scorer=scorer,
                      search=search)


def open_sandbox(options: dict, cpus: float | None = None):
    """The sandbox pool of a recipe's ``sandbox`` options (size, image, incremental)."""
    from rstar.sandbox import SandboxConfig, SandboxPool

    opts = dict(options)
    size = opts.pop("size", None)
    if size is None and cpus is not None:
        size = max(1, int(round(cpus)))
    try:
        config = SandboxConfig(**opts)
    except TypeError as exc:
        raise RstarError(f"sandbox options: {exc}") from None
    return SandboxPool(size=size, config=config)


def load_policy(recipe: Recipe):
    from rstar.policy import load_policy as _load

    print(f"loading model {recipe.model} ...", file=sys.stderr)
    if recipe.backend_options:
        return _load(recipe.model, options=dict(recipe.backend_options))
    return _load(recipe.model)


def check_problems(recipe: Recipe, problems: Sequence[Problem], source: str = "the data") -> None:
    """A scorer that needs gold answers refuses problems without one, in one line, before
    anything is opened."""
    spec = recipe.resolve().scorer
    if "gold" in split_spec(spec):
        missing = [p.id for p in problems if p.gold is None]
        if missing:
            raise DataError(
                f"--scorer {spec} needs a gold answer for every problem, but {len(missing)} of {len(problems)} in "
                f"{source} have none (first: {', '.join(missing[:3])}); use --scorer none, self or ppm:PATH")
