"""Scorers: the one place a value comes from (DESIGN.md, "the search layer").

A scorer maps partial or finished solutions to values in [-1, 1], in batches:
one call per search round. ``None`` means "no value": selection then falls back
to a vote, and back-up adds nothing for that node.

    class Scorer(Protocol):
        name: str                    # as written in recipes and results ("gold", "ppm:/path", ...)
        needs_gold: bool             # refuses problems without a gold answer
        scores_partial: bool         # gives values for unfinished solutions (new nodes are initialised with them)
        def score(self, items: list[ScoreItem]) -> list[float | None]
        def close(self) -> None

``load_scorer(spec, policy=None, template=None)`` builds one from its CLI spec:
``gold``, ``none``, ``self``, ``ppm:PATH``, ``value:PATH``.  Model-based scorers
(``ppm:``/``value:``) live in ``rstar.ppm`` and are imported on demand.
"""
