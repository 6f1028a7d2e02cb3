"""The library entry point for a dataset run: read, search, write, resume.

The CLI (`rstar run`), `rstar evolve` and the Ray runner all go through here::

    from rstar.recipe import Recipe
    from rstar.runner import run_dataset
    summary = run_dataset("gsm8k.jsonl", "runs/a", Recipe(algo="beam", scorer="none"), limit=30)

The search itself is opened by :mod:`rstar.components` (the same road a Ray worker
takes); this module reads the data, resumes, writes and keeps the progress bar.

A run directory holds ``results.jsonl`` (docs/TRACE_SCHEMA.md) and ``run.json``
(the recipe, the data file, the model's hash, the cluster when run on Ray).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable

from rstar.components import check_problems, open_components
from rstar.errors import DataError, RstarError
from rstar.recipe import Recipe
from rstar.results import CONFIG_FILE, Problem, ResultWriter, read_problems, summarize
from rstar.search.driver import engine_snapshot, engine_usage


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
_SPEED_ONLY = {("search", "concurrent_problems"), ("search", "driver"), ("sandbox", "size"),
               ("sandbox", "incremental")}


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
    source, problems = _read(data, limit, source, bad)
    recipe = recipe.resolve()
    check_problems(recipe, problems, source)
    out = Path(out)
    saved = _saved_run(out, recipe) if resume else {}
    writer = ResultWriter(out, resume=resume)
    todo = [p for p in problems if p.id not in writer.done]
    if writer.done:
        print(f"resuming: {len(problems) - len(todo)} of {len(problems)} problems already done", file=sys.stderr)
    meta = {"run_id": saved.get("run_id") or uuid.uuid4().hex[:12], "data": source, "problems": len(problems),
            "started": saved.get("started") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if recipe.model_sha256 is None:
        recipe.model_sha256 = model_hash(recipe.model)
    if bad:
        meta["skipped_lines"] = [str(b) for b in bad]
    sink = _Sink(writer, len(problems), not progress, on_result)
    try:
        with ExitStack() as stack:
            stack.callback(writer.close)
            stack.callback(sink.close)
            if todo and ray is not None:
                _search_on_ray(todo, recipe, ray, out, meta, sink)
            elif todo:
                _search_here(todo, recipe, out, meta, sink, stack, saved.get("engine"))
    finally:
        if bad:
            print(f"skipped {len(bad)} malformed line(s) of {source}: " + "; ".join(map(str, bad[:5])),
                  file=sys.stderr)
    summary = summarize(writer.done.values())
    if meta.get("engine") or saved.get("engine"):
        summary["engine"] = meta.get("engine") or saved["engine"]
    return summary


def _read(data: str | Path | Iterable[Problem], limit: int | None, source: str | None,
          bad: list) -> tuple[str, list[Problem]]:
    if isinstance(data, (str, Path)):
        source = str(data)
        problems = list(read_problems(Path(data), bad))
    else:
        source, problems = source or "problems", list(data)
    if limit is not None:
        problems = problems[:limit]
    if not problems:
        raise DataError(f"{source}: no problems to search")
    return source, problems


def _saved_run(out: Path, recipe: Recipe) -> dict:
    """The run.json of the run being resumed ({} if none); refused in one line when it was
    run with settings that change results."""
    saved = _load_saved(out) or {}
    if "recipe" in saved:
        diffs = _result_changing_diff(_resolved(saved["recipe"]), recipe.to_dict())
        if diffs:
            raise DataError(f"{out} was run with other settings ({'; '.join(diffs[:4])}); resume with the same "
                            f"settings, e.g. --config {out / CONFIG_FILE}")
    return saved


def _resolved(saved: dict) -> dict:
    """A saved recipe as a fresh run would resolve it (runs saved before resolution existed)."""
    try:
        return Recipe.from_dict(saved).resolve().to_dict()
    except (DataError, TypeError, ValueError):
        return saved


def _search_here(todo: list[Problem], recipe: Recipe, out: Path, meta: dict, sink: "_Sink", stack: ExitStack,
                 engine_before: dict | None) -> None:
    comps = open_components(recipe, stack, run_id=meta["run_id"])
    comps.recipe.save(out / CONFIG_FILE, meta)  # the recipe as it runs: concurrency resolved
    search = sink.search = comps.search
    before, t0 = engine_snapshot(search), time.perf_counter()
    results = search.search(todo)
    try:
        for result in results:
            sink.accept(result)
    finally:  # stop the trees still in flight; the engine's use, added up over resumes
        results.close()
        meta["engine"] = engine_usage(before, engine_snapshot(search), time.perf_counter() - t0, engine_before,
                                      driver=comps.recipe.search.driver,
                                      in_flight=comps.recipe.search.concurrent_problems)
        comps.recipe.save(out / CONFIG_FILE, meta)


def _search_on_ray(todo: list[Problem], recipe: Recipe, address: str, out: Path, meta: dict, sink: "_Sink") -> None:
    try:
        from rstar.distributed import run_on_ray
    except ModuleNotFoundError as exc:
        raise RstarError(f"--ray needs Ray: pip install \"rstar[ray]\" ({exc})") from None
    recipe.save(out / CONFIG_FILE, meta)

    def event(ev: dict) -> None:
        if ev.get("event") == "lost":
            sink.bar.write(f"ray: lost worker {ev.get('worker')} ({ev.get('why')}); "
                           f"{ev.get('requeued')} problems re-queued")
    meta["cluster"] = run_on_ray(todo, recipe, address or None, sink.accept, progress=event, run_id=meta["run_id"])
    recipe.save(out / CONFIG_FILE, meta)


class _Sink:
    """Where finished results go: the result file (each problem once), the progress bar and
    the caller's ``on_result``."""

    def __init__(self, writer: ResultWriter, total: int, quiet: bool,
                 on_result: Callable[[dict], None] | None) -> None:
        self.writer = writer
        self.on_result = on_result
        self.bar = _progress(total, len(writer.done), quiet)
        self.done = list(writer.done.values())
        self.new: list[dict] = []
        self.start = time.perf_counter()
        self.search = None

    def accept(self, result: dict) -> None:
        if result["id"] in self.writer.done:  # a second guard against duplicates (e.g. a retried worker)
            return
        self.writer.write(result)
        self.done.append(result)
        self.new.append(result)
        self.bar.update(1)
        self.bar.set_postfix_str(self.postfix())
        if self.on_result is not None:
            self.on_result(result)

    def close(self) -> None:
        self.bar.close()

    def postfix(self) -> str:
        graded = [r for r in self.done if r.get("gold") is not None]
        parts = []
        if graded:
            parts.append(f"acc {100 * sum(r.get('correct') is True for r in graded) / len(graded):.0f}%")
        elapsed = time.perf_counter() - self.start
        rollouts = sum(r.get("rollouts", 0) for r in self.new)
        parts.append(f"{rollouts / max(elapsed, 1e-9):.2f} rollouts/s")
        t = getattr(self.search, "time", None)
        if t is not None and t.total_s > 0:
            parts.append(f"model {100 * t.model_s / t.total_s:.0f}% sandbox {100 * t.sandbox_s / t.total_s:.0f}% "
                         f"other {100 * t.other_s / t.total_s:.0f}%")
        return " | ".join(parts)


def _progress(total: int, initial: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="problem", disable=disable, dynamic_ncols=True, file=sys.stderr)
