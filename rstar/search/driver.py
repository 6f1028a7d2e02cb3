"""The asynchronous driver's machinery, and what a run reports about the engine.

The lockstep driver (``Search._search_lockstep``) runs one round over every tree in
flight: one model call whose slowest sequence holds up every tree, then the sandbox,
then the scorer, while the model waits. The asynchronous driver (``Search._search_async``)
gives each tree in flight its own thread that runs the algorithm's rounds on that tree
alone; its model requests go through ``policy.submit`` as soon as they are made, so the
engine batches whatever the trees have asked for while other trees execute, score and
back up. A tree's rounds are the ones the lockstep driver runs for it (per-node seeds),
so both drivers grow the same trees from the same seeds with a deterministic engine.

Time: the wall time of a run is shared among the trees in flight at each moment (a
tree alone gets all of it, one of four gets a quarter), so the per-problem time
splits still add up to the run's time, as with the lockstep driver.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout

POLL_S = 0.1   # how often a waiting thread looks at the stop flag


class Stopped(Exception):
    """The run stopped (another tree failed, Ctrl-C, the caller stopped reading): leave quietly."""


class ShareClock:
    """``S(t) = integral of dt / trees in flight``: a tree's share of the wall time between
    two readings is the difference of S (fair sharing of the run's time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = time.perf_counter()
        self._s = 0.0
        self._n = 0

    def _advance(self) -> None:
        now = time.perf_counter()
        if self._n:
            self._s += (now - self._last) / self._n
        self._last = now

    def enter(self) -> float:
        with self._lock:
            self._advance()
            self._n += 1
            return self._s

    def leave(self) -> float:
        with self._lock:
            self._advance()
            self._n -= 1
            return self._s


class AsyncRun:
    """One asynchronous ``search()`` call: the stop flag, the results queue, the share clock."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.events: queue.Queue = queue.Queue()
        self.clock = ShareClock()
        self.threads: list[threading.Thread] = []

    def wait(self, fut: Future):
        """The future's result; raises :class:`Stopped` once the run stops."""
        while True:
            if self.stop.is_set():
                fut.cancel()
                raise Stopped()
            try:
                return fut.result(timeout=POLL_S)
            except FutureTimeout:
                continue

    def next_event(self) -> tuple:
        """The next (kind, payload) from a tree's thread; short waits so Ctrl-C gets through."""
        while True:
            try:
                return self.events.get(timeout=POLL_S)
            except queue.Empty:
                continue

    def shut(self, wait_s: float) -> None:
        """Stop every tree's thread and give them ``wait_s`` seconds to leave."""
        self.stop.set()
        deadline = time.monotonic() + wait_s
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))


# ------------------------------------------------------------------ sizing

ASYNC_HEADROOM = 1.5
"""Trees in flight per batch of the engine's capacity with the asynchronous driver: while
some trees run the sandbox or the scorer, the others' requests keep the batch full."""


def trees_in_flight(capacity: int, per_tree: int, cap: int | None, driver: str) -> int:
    """Trees to keep in flight: ``cap`` when the user set one, else enough trees that their
    requests fill the engine's batch (``capacity`` sequences, ``per_tree`` sequences asked
    for by one tree at once), with headroom for the asynchronous driver on a batching engine.
    An engine that decodes one sequence at a time gets one tree (a second would only make a
    single-sequence cache switch between problems)."""
    if cap:
        return int(cap)
    capacity, per_tree = max(1, int(capacity)), max(1, int(per_tree))
    n = math.ceil(capacity / per_tree)
    if driver == "async" and capacity > 1:
        n = math.ceil(n * ASYNC_HEADROOM)
    return max(1, n)


def capacity_of(policy) -> int:
    try:
        return max(1, int(policy.capacity()))
    except Exception:  # a policy outside the contract: one at a time
        return max(1, int(getattr(policy, "preferred_concurrency", None) or 1))


# ------------------------------------------------------------------ engine usage

_COUNTERS = ("busy_s", "decode_steps", "sequences_decoded", "prompt_tokens", "prompt_tokens_computed",
             "generated_tokens")


def engine_snapshot(search) -> dict:
    """The engine's counters now: ``policy.stats()`` where the backend keeps its own; else what
    the default submit batcher counted plus the search's own direct ``generate`` calls (the
    lockstep driver's), each call one engine step."""
    from rstar.policy.base import Policy

    policy = search.policy
    stats = getattr(policy, "stats", None)
    # the backend's own counters: a method overriding Policy.stats, or a callable kept on the
    # instance (the llama.cpp backends keep a dict of counters that is also callable)
    native = callable(stats) and getattr(stats, "__func__", None) is not Policy.stats
    try:
        got = stats() if native else (Policy.stats(policy) if isinstance(policy, Policy) else None)
    except Exception:
        got = None
    got = dict(got) if isinstance(got, dict) else {}
    if not native:
        for k, v in search.direct_calls.items():
            got[k] = (got.get(k) or 0) + v
    return got


def engine_usage(before: dict, after: dict, wall_s: float, earlier: dict | None = None, **extra) -> dict:
    """What the engine did between two snapshots over ``wall_s`` seconds (added to ``earlier``,
    a resumed run's saved usage): the counters, ``model_busy`` (busy seconds / wall) and
    ``batch_occupancy`` (sequences decoded per engine step). A counter the backend does not
    keep stays None."""
    out: dict = {"wall_s": float(wall_s)}
    for k in _COUNTERS:
        a, b = after.get(k), before.get(k, 0) or 0
        out[k] = None if a is None else a - b
    if earlier:
        out["wall_s"] += float(earlier.get("wall_s") or 0.0)
        for k in _COUNTERS:
            if out[k] is not None and earlier.get(k) is not None:
                out[k] += earlier[k]
    out["model_busy"] = (out["busy_s"] / out["wall_s"]) if out["busy_s"] is not None and out["wall_s"] > 0 else None
    steps, seqs = out["decode_steps"], out["sequences_decoded"]
    out["batch_occupancy"] = (seqs / steps) if steps and seqs is not None else None
    for k in ("wall_s", "busy_s", "model_busy", "batch_occupancy"):
        if out.get(k) is not None:
            out[k] = round(float(out[k]), 4)
    out.update(extra)
    return out


def format_engine(usage: dict) -> str:
    """One line for a run's summary: model busy fraction, batch occupancy, tokens."""
    parts = []
    if usage.get("model_busy") is not None:
        parts.append(f"model busy {100 * usage['model_busy']:.0f}% of {usage['wall_s']:.1f}s")
    if usage.get("batch_occupancy") is not None:
        parts.append(f"batch occupancy {usage['batch_occupancy']:.1f} sequences/step")
    if usage.get("generated_tokens") is not None and usage.get("wall_s"):
        parts.append(f"{usage['generated_tokens'] / usage['wall_s']:.1f} generated tokens/s")
    if usage.get("prompt_tokens") is not None and usage.get("prompt_tokens_computed") is not None:
        parts.append(f"prompt tokens {usage['prompt_tokens_computed']} computed of {usage['prompt_tokens']}")
    where = [f"{k} {usage[k]}" for k in ("driver", "in_flight") if usage.get(k) is not None]
    return "engine: " + (", ".join(parts) or "no counters from this backend") + (f" ({', '.join(where)})"
                                                                               if where else "")


def saved_engine(out) -> dict | None:
    """The engine usage a run saved in its run.json (None when it has none)."""
    import json
    from pathlib import Path

    try:
        got = json.loads((Path(out) / "run.json").read_text()).get("engine")
    except (OSError, ValueError, AttributeError):
        return None
    return got if isinstance(got, dict) else None
