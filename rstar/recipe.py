"""Recipes: a run's whole configuration as data, saved with every run and replayable.

A recipe names the algorithm, the scorer, the model (and its hash), the step
template, the seed, every search knob, the sandbox and the backend options.
``rstar run`` writes it to ``RUN_DIR/run.json``; ``rstar run --config FILE``
replays a saved ``run.json`` or a recipe file (YAML or JSON). Recipes for the
published settings of each method ship in ``rstar/recipes/``:
``rstar run DATA --out DIR --config rstar-eval`` names one by its stem.

Fields given on the command line override the recipe's. A recipe leaves some
things to the run (the scorer, the problems kept in flight): :meth:`Recipe.resolve`
fills them in, in this one place, and the run saves the resolved recipe.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstar.errors import DataError
from rstar.search.config import ALGORITHMS, SearchConfig

RECIPES_DIR = Path(__file__).parent / "recipes"

# An algorithm's own scorer, used when a recipe names none: MCTSr grades its answers itself;
# every other search then runs blind (no value: a vote). Gold rewards only when asked for.
OWN_SCORER = {"mctsr": "self"}


@dataclass
class Recipe:
    algo: str = "mcts"
    scorer: str | None = None                            # None: the algorithm's own (OWN_SCORER), else none
    model: str = "default"
    template: str = "default"
    search: SearchConfig = field(default_factory=SearchConfig)
    sandbox: dict = field(default_factory=dict)          # size, image, incremental
    backend_options: dict = field(default_factory=dict)  # passed to the policy backend
    model_sha256: str | None = None                      # filled in when the model is a local file

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise DataError(f"unknown algorithm {self.algo!r}; one of {', '.join(ALGORITHMS)}")
        if isinstance(self.search, dict):
            self.search = SearchConfig.from_dict(self.search)

    def resolve(self) -> "Recipe":
        """The recipe as it runs, every "the default" filled in (a copy; this one is left as
        it is): the scorer when none is named (the algorithm's own, else ``none``: a blind
        search). The problems kept in flight, when the recipe does not say, are sized by the
        search from the engine's ``capacity()`` (``rstar.components.open_components``)."""
        return dataclasses.replace(self, scorer=self.scorer or OWN_SCORER.get(self.algo, "none"), search=self.search,
                                   sandbox=dict(self.sandbox), backend_options=dict(self.backend_options))

    @property
    def seed(self) -> int:
        return self.search.seed

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["search"] = self.search.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "recipe") -> "Recipe":
        d = dict(d)
        if "recipe" in d and isinstance(d["recipe"], dict):  # a run.json: the recipe is nested
            d = dict(d["recipe"])
        preset_name = d.pop("preset", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DataError(f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(names))}, preset)")
        search = d.get("search") or {}
        try:
            if preset_name:
                from rstar.search.config import preset

                base = preset(preset_name).as_dict()
                base.update(search)
                search = base
            d["search"] = SearchConfig.from_dict(search)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{source}: {exc}") from None
        return cls(**d)

    def save(self, path: Path, extra: dict | None = None) -> None:
        out = {"recipe": self.to_dict()}
        out.update(extra or {})
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(out, indent=2, default=str))
        tmp.replace(path)


def shipped() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(spec: str) -> Recipe:
    """A recipe from a file (YAML or JSON, a recipe or a saved run.json) or a shipped name."""
    p = Path(spec).expanduser()
    if not p.exists():
        if p.is_dir() or (RECIPES_DIR / f"{spec}.yaml").is_file():
            p = RECIPES_DIR / f"{spec}.yaml"
        else:
            raise DataError(f"{spec}: no such recipe file or shipped recipe (shipped: {', '.join(shipped())})")
    if p.is_dir():
        p = p / "run.json"
    text = p.read_text(encoding="utf-8")
    data: Any
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - one line naming the file
        raise DataError(f"{p}: not a valid recipe ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: a recipe is a mapping of fields, got {type(data).__name__}")
    return Recipe.from_dict(data, source=str(p))
