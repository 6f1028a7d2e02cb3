"""The library entry point for a dataset run: read, search, write, resume.

The CLI (`rstar run`), `rstar evolve` and the Ray runner all go through here::

    from rstar.recipe import Recipe
    from rstar.runner import run_dataset
    summary = run_dataset("gsm8k.jsonl", "runs/a", Recipe(algo="beam", scorer="none"), limit=30)

Lower-level pieces, for workers that search problems handed to them:

    with ExitStack() as stack:
        comps = open_components(recipe, stack)   # template, sandbox pool, policy, scorer
        search = make_search(recipe, comps)
        for result in search.search(problems): ...

A run directory holds ``results.jsonl`` (docs/TRACE_SCHEMA.md) and ``run.json``
(the recipe, the data file, the model's hash, the cluster when run on Ray).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from rstar.errors import DataError, RstarError
from rstar.recipe import Recipe
from rstar.results import CONFIG_FILE, Problem, ResultWriter, read_problems, summarize


@dataclass
class Components:
    template: object
    sandbox: object
    policy: object
    scorer: object


def open_components(recipe: Recipe, stack: ExitStack, sandbox=None, policy=None) -> Components:
    """Template, sandbox pool, policy and scorer for ``recipe``, in the order that fails
    fastest; everything opened is closed by ``stack``. Pass ``sandbox``/``policy`` to reuse
    ones already open."""
    from rstar.scorers import load_scorer
    from rstar.templates import get_template

    try:
        template = get_template(recipe.template)
    except ValueError as exc:
        raise RstarError(str(exc)) from None
    if sandbox is None:
        from rstar.sandbox import SandboxConfig, SandboxPool

        opts = dict(recipe.sandbox)
        size = opts.pop("size", None)
        try:
            config = SandboxConfig(**opts)
        except TypeError as exc:
            raise RstarError(f"sandbox options: {exc}") from None
        sandbox = stack.enter_context(SandboxPool(size=size, config=config))
    if policy is None:
        policy = load_model(recipe)
        stack.callback(policy.close)
    scorer = load_scorer(recipe.scorer, policy=policy, template=template, seed=recipe.seed)
    stack.callback(scorer.close)
    return Components(template=template, sandbox=sandbox, policy=policy, scorer=scorer)


def load_model(recipe: Recipe):
    from rstar.policy import load_policy

    print(f"loading model {recipe.model} ...", file=sys.stderr)
    if recipe.backend_options:
        return load_policy(recipe.model, options=dict(recipe.backend_options))
    return load_policy(recipe.model)


def make_search(recipe: Recipe, comps: Components, run_id: str = ""):
    from rstar.search import make_search as _make

    provenance = {"model": recipe.model, "template": recipe.template, "run_id": run_id}
    cfg = recipe.search
    if recipe.algo == "greedy":  # greedy is greedy whatever the preset says
        cfg = cfg.replace(rollouts=1, children=1, temperature=0.0, leaves_per_tree=1)
    try:
        return _make(recipe.algo, comps.policy, comps.template, comps.sandbox, cfg, scorer=comps.scorer,
                     provenance=provenance)
    except ValueError as exc:
        raise RstarError(str(exc)) from None


def check_problems(recipe: Recipe, problems: Sequence[Problem], source: str = "the data") -> None:
    """A scorer that needs gold answers refuses problems without one, in one line."""
    if recipe.scorer == "gold":
        missing = [p.id for p in problems if p.gold is None]
        if missing:
            raise DataError(
                f"--scorer gold needs a gold answer for every problem, but {len(missing)} of {len(problems)} in "
                f"{source} have none (first: {', '.join(missing[:3])}); use --scorer none, self or ppm:PATH")


def model_hash(spec: str) -> str | None:
    """sha256 of the model file where it is one (the built-in model's is known)."""
    if spec == "default":
        from rstar.models import DEFAULT_MODEL

        return DEFAULT_MODEL.sha256
    p = Path(spec.split(":", 1)[1] if spec.startswith(("llamacpp:", "gguf:", "hf:", "vllm:")) else spec).expanduser()
    if p.is_file():
        from rstar.models import sha256_file

        return sha256_file(p)
    return None


def _load_saved(out: Path) -> dict | None:
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


# Settings that change how fast a run goes, never what it finds.
_SPEED_ONLY = {("search", "concurrent_problems"), ("sandbox", "size"), ("sandbox", "incremental")}


def _result_changing_diff(a: dict, b: dict) -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            for kk in sorted(set(va) | set(vb)):
                if (k, kk) not in _SPEED_ONLY and va.get(kk) != vb.get(kk):
                    diffs.append(f"{k}.{kk}: {va.get(kk)!r} -> {vb.get(kk)!r}")
        elif va != vb and k != "model_sha256":
            diffs.append(f"{k}: {va!r} -> {vb!r}")
    return diffs


def run_dataset(data: str | Path | Iterable[Problem], out: str | Path, recipe: Recipe, *, resume: bool = False,
                limit: int | None = None, progress: bool = True, ray: str | None = None,
                on_result: Callable[[dict], None] | None = None, source: str | None = None) -> dict:
    """Search every problem of ``data`` (a JSONL file or problems), appending each result to
    ``out/results.jsonl`` as it finishes; ``resume`` continues a stopped run (the saved
    recipe must match on everything that changes results). ``ray``: an address, ``"auto"``,
    or ``""`` for a local cluster (rstar.distributed). Returns the run's summary; a
    KeyboardInterrupt is re-raised after everything finished is saved."""
    bad: list = []
    if isinstance(data, (str, Path)):
        source = str(data)
        problems = list(read_problems(Path(data), bad))
    else:
        source, problems = source or "problems", list(data)
    if limit is not None:
        problems = problems[:limit]
    if not problems:
        raise DataError(f"{source}: no problems to search")
    check_problems(recipe, problems, source)
    out = Path(out)
    saved = _load_saved(out) if resume else None
    if saved is not None and "recipe" in saved:
        diffs = _result_changing_diff(saved["recipe"], recipe.to_dict())
        if diffs:
            raise DataError(f"{out} was run with other settings ({'; '.join(diffs[:4])}); resume with the same "
                            f"settings, e.g. --config {out / CONFIG_FILE}")
    writer = ResultWriter(out, resume=resume)
    todo = [p for p in problems if p.id not in writer.done]
    if writer.done:
        print(f"resuming: {len(problems) - len(todo)} of {len(problems)} problems already done", file=sys.stderr)
    run_id = (saved or {}).get("run_id") or uuid.uuid4().hex[:12]
    meta = {"run_id": run_id, "data": source, "problems": len(problems),
            "started": (saved or {}).get("started") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if recipe.model_sha256 is None:
        recipe.model_sha256 = model_hash(recipe.model)
    if bad:
        meta["skipped_lines"] = [str(b) for b in bad]

    bar = _progress(len(problems), len(problems) - len(todo), not progress)
    state = {"done": list(writer.done.values()), "new": [], "start": time.perf_counter(), "search": None}

    def accept(result: dict) -> None:
        if result["id"] in writer.done:  # a second guard against duplicates (e.g. a retried worker)
            return
        writer.write(result)
        state["done"].append(result)
        state["new"].append(result)
        bar.update(1)
        bar.set_postfix_str(_postfix(state))
        if on_result is not None:
            on_result(result)

    try:
        with ExitStack() as stack:
            stack.callback(writer.close)
            stack.callback(bar.close)
            if todo and ray is not None:
                try:
                    from rstar.distributed import run_on_ray
                except ModuleNotFoundError as exc:
                    raise RstarError(f"--ray needs Ray: pip install \"rstar[ray]\" ({exc})") from None
                recipe.save(out / CONFIG_FILE, meta)
                def ray_event(ev: dict) -> None:
                    if ev.get("event") == "lost":
                        bar.write(f"ray: lost worker {ev.get('worker')} ({ev.get('why')}); "
                                  f"{ev.get('requeued')} problems re-queued")
                cluster = run_on_ray(todo, recipe, ray or None, accept, progress=ray_event, run_id=run_id)
                meta["cluster"] = cluster
                recipe.save(out / CONFIG_FILE, meta)
            elif todo:
                comps = open_components(recipe, stack)
                if recipe.search.concurrent_problems is None and comps.policy.preferred_concurrency:
                    recipe.search = recipe.search.replace(concurrent_problems=comps.policy.preferred_concurrency)
                recipe.save(out / CONFIG_FILE, meta)
                search = make_search(recipe, comps, run_id)
                state["search"] = search
                for result in search.search(todo):
                    accept(result)
    finally:
        if bad:
            print(f"skipped {len(bad)} malformed line(s) of {source}: " + "; ".join(map(str, bad[:5])),
                  file=sys.stderr)
    return summarize(writer.done.values())


def _progress(total: int, initial: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="problem", disable=disable, dynamic_ncols=True, file=sys.stderr)


def _postfix(state: dict) -> str:
    graded = [r for r in state["done"] if r.get("gold") is not None]
    parts = []
    if graded:
        parts.append(f"acc {100 * sum(r.get('correct') is True for r in graded) / len(graded):.0f}%")
    elapsed = time.perf_counter() - state["start"]
    rollouts = sum(r.get("rollouts", 0) for r in state["new"])
    parts.append(f"{rollouts / max(elapsed, 1e-9):.2f} rollouts/s")
    search = state["search"]
    t = getattr(search, "time", None)
    if t is not None and t.total_s > 0:
        parts.append(f"model {100 * t.model_s / t.total_s:.0f}% sandbox {100 * t.sandbox_s / t.total_s:.0f}% "
                     f"other {100 * t.other_s / t.total_s:.0f}%")
    return " | ".join(parts)
