"""Scale-out on Ray: `rstar run DATA --out DIR --ray [ADDRESS]`.

Problems are spread over Ray actors (:class:`SearchWorker`). Each actor opens
its components once (policy, template, sandbox pool on its own node, scorer;
``rstar.runner.open_components``) and searches the problems handed to it with
the same search a local run uses (``rstar.runner.make_search``), several at a
time. The driver (:func:`run_on_ray`) keeps every actor fed with a bounded
number of problems, receives finished results and hands each to ``on_result``
exactly once, in the driver process, so the result file, ``--resume`` and the
summary are those of a local run.

Resources: an actor asks Ray for ``cpus_per_worker`` CPUs (its sandbox
containers and the search loop) and, for a GPU policy (``vllm:`` models, or
backend options that put layers on a GPU), ``gpus_per_worker`` GPUs, so Ray
places it on a node that has them. By default there is one actor per
``cpus_per_worker`` CPUs of the cluster (and per GPU for GPU policies).

Faults, with Ray's own mechanisms:

* actors are created with ``max_restarts=-1``: when an actor's process or its
  node dies, Ray restarts it (running the constructor again) wherever
  resources allow, on a node that is still there or one that joins later;
* the driver learns of the loss from its poll of that actor (``ray.wait`` on
  one outstanding ``poll`` call per actor): the poll fails with
  ``RayActorError``, or a later poll answers from a new incarnation of the
  actor (each incarnation draws a random id). Either way the problems given to
  the lost incarnation go back to the front of the queue and are given to the
  live actors; the restarted actor gets work again once it answers;
* work is handed over with the incarnation id the driver knows, and an actor
  refuses work addressed to an earlier incarnation, so a problem is never
  searched by an actor that the driver no longer counts on;
* a result is passed on only if its problem is still owed, so a late answer
  from an actor presumed lost cannot write a problem twice.

A killed driver takes its actors with it (they belong to its Ray job); the
results already written stay, and ``rstar run ... --resume`` continues.

Without Ray installed, :func:`run_on_ray` raises :class:`RayUnavailable`
saying how to install it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rstar.errors import RstarError

__all__ = ["RayUnavailable", "SearchWorker", "run_on_ray", "import_ray", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "rstar[ray]"'


class RayUnavailable(RstarError):
    """Ray is not installed, or the cluster cannot be reached or cannot host a worker."""


def import_ray():
    """The ``ray`` module, or :class:`RayUnavailable` with the install command."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"--ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


# ----------------------------------------------------------------------------- the actor


class SearchWorker:
    """One Ray actor: components opened once, a search thread fed from an inbox.

    ``submit(problems, incarnation)`` queues problems (refused when addressed to
    another incarnation); ``poll(timeout)`` waits up to ``timeout`` seconds for
    finished results and returns ``{"incarnation", "results", "error", "info"}``.
    Wrapped with ``ray.remote`` by :func:`run_on_ray`; it is a plain class so
    that its module path is what every worker imports.
    """

    def __init__(self, recipe: Any, run_id: str = "") -> None:
        from rstar import runner

        self.incarnation = uuid.uuid4().hex
        self._stack = contextlib.ExitStack()
        self._cond = threading.Condition()
        self._inbox: deque = deque()
        self._outbox: list[dict] = []
        self._error: str | None = None
        self._closing = False
        sandbox = dict(getattr(recipe, "sandbox", None) or {})
        if sandbox.get("size") is None and hasattr(recipe, "sandbox"):
            # one warm container per CPU that Ray gave this actor, not per CPU of the host
            cpus = self._assigned().get("CPU", 1.0)
            recipe.sandbox = {**sandbox, "size": max(1, int(round(cpus)))}
        try:
            components = runner.open_components(recipe, self._stack)
            search_cfg = getattr(recipe, "search", None)
            preferred = getattr(components.policy, "preferred_concurrency", None)
            if search_cfg is not None and getattr(search_cfg, "concurrent_problems", 0) is None and preferred:
                recipe.search = search_cfg.replace(concurrent_problems=preferred)  # as a local run does
            self._search = runner.make_search(recipe, components, run_id)
        except BaseException:
            self._stack.close()
            raise
        self._info = self._describe()
        self._info["concurrency"] = _concurrency(recipe)
        self._thread = threading.Thread(target=self._loop, name="rstar-ray-search", daemon=True)
        self._thread.start()

    @staticmethod
    def _node_id() -> str | None:
        try:
            import ray

            return ray.get_runtime_context().get_node_id()
        except Exception:
            return None

    @staticmethod
    def _assigned() -> dict:
        try:
            import ray

            return {k: float(v) for k, v in ray.get_runtime_context().get_assigned_resources().items()}
        except Exception:
            return {}

    def _describe(self) -> dict:
        return {"incarnation": self.incarnation, "node_id": self._node_id(), "host": socket.gethostname(),
                "pid": os.getpid(), "resources": self._assigned()}

    # -- called by the driver -------------------------------------------------
    def info(self) -> dict:
        return dict(self._info)

    def submit(self, problems: list, incarnation: str) -> bool:
        if incarnation != self.incarnation:
            return False  # meant for an earlier life of this actor: the driver has given it elsewhere
        with self._cond:
            self._inbox.extend(problems)
            self._cond.notify_all()
        return True

    def poll(self, timeout: float = 1.0) -> dict:
        with self._cond:
            self._cond.wait_for(lambda: self._outbox or self._error is not None, timeout=timeout)
            out, self._outbox = self._outbox, []
            return {"incarnation": self.incarnation, "results": out, "error": self._error, "info": self._info}

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._inbox.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self._stack.close()

    # -- the search thread ----------------------------------------------------
    def _take(self) -> Iterator:
        """Problems from the inbox until it is empty (the search then finishes its trees)."""
        while True:
            with self._cond:
                if not self._inbox or self._closing:
                    return
                problem = self._inbox.popleft()
            yield problem

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._inbox or self._closing)
                    if self._closing:
                        return
                for result in self._search.search(self._take()):
                    with self._cond:
                        self._outbox.append(result)
                        self._cond.notify_all()
        except BaseException as exc:  # reported to the driver by the next poll
            with self._cond:
                tb = traceback.format_exc(limit=-3).strip().splitlines()
                where = tb[-3].strip() if len(tb) >= 3 else ""
                self._error = f"{type(exc).__name__}: {exc} ({where})" if where else f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()


# ----------------------------------------------------------------------------- the driver


def _get(obj: Any, *names: str, default=None):
    """First attribute (or mapping key) among ``names`` that ``obj`` has and is not None."""
    for name in names:
        cur = obj
        for part in name.split("."):
            if cur is None:
                break
            cur = cur.get(part) if isinstance(cur, dict) else getattr(cur, part, None)
        if cur is not None:
            return cur
    return default


def worker_resources(recipe: Any, cpus_per_worker: float | None = None,
                     gpus_per_worker: float | None = None, cluster_gpus: float = 0.0) -> dict:
    """What one actor asks Ray for: ``{"num_cpus": float, "num_gpus": float}``.

    CPUs: ``cpus_per_worker``, else the recipe's sandbox pool size (``sandbox.size``), else 1.
    GPUs: ``gpus_per_worker``, else, for a GPU policy (a ``vllm:`` model, llama.cpp
    with ``n_gpu_layers``, transformers with a ``cuda`` device), its
    ``tensor_parallel_size`` or 1, as long as the cluster has GPUs at all (a
    ``vllm:`` model on a cluster without GPUs is taken to be vLLM's CPU build).
    """
    opts = dict(_get(recipe, "backend_options", default={}) or {})
    if cpus_per_worker is None:
        cpus_per_worker = _get(recipe, "sandbox.size", default=1)
    if gpus_per_worker is None:
        model = str(_get(recipe, "model", default="") or "")
        gpu = model.startswith("vllm:") and cluster_gpus > 0
        if opts.get("n_gpu_layers") not in (None, 0, "0"):
            gpu = True
        if "cuda" in str(opts.get("device") or ""):
            gpu = True
        gpus_per_worker = float(opts.get("tensor_parallel_size") or 1) if gpu else 0.0
    cpus = float(cpus_per_worker)
    if cpus <= 0 or float(gpus_per_worker) < 0:
        raise RstarError(f"a Ray worker needs a positive number of CPUs, got {cpus_per_worker} "
                         f"(and {gpus_per_worker} GPUs)")
    return {"num_cpus": cpus, "num_gpus": float(gpus_per_worker)}


def _concurrency(recipe: Any) -> int:
    """Problems one actor's search keeps in flight at once (the search's own default: 8)."""
    n = _get(recipe, "search.concurrent_problems", default=None)
    try:
        return max(1, int(n)) if n is not None else 8
    except (TypeError, ValueError):
        return 8


@dataclass
class _Actor:
    index: int
    handle: Any
    incarnation: str | None = None      # known once it has answered; None: not (yet, or again) usable
    info: dict = field(default_factory=dict)
    held: dict = field(default_factory=dict)  # problem id -> problem, handed to this incarnation
    poll_ref: Any = None
    retry_at: float = 0.0               # after a failed poll: when to ask again
    backoff: float = 0.5
    failures: int = 0
    dead_error: str | None = None       # permanently dead (its constructor failed)
    incarnations: int = 0
    ready_s: float | None = None        # from the start of the run to its first answer


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    tail = [t.strip() for t in text if t.strip()]
    msg = tail[-1] if tail else ""
    return f"{type(exc).__name__}: {msg}"[:400]


def _init_cause(exc: BaseException) -> str:
    """The constructor's own error inside a RayActorError, as one line."""
    cause = getattr(exc, "cause", None)
    inner = getattr(cause, "cause", None) if cause is not None else None
    if isinstance(inner, BaseException):
        return _one_line(inner)
    text = str(exc)
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and ("Error" in line or "error" in line) and not line.startswith(("File ", "Traceback")):
            return line[:400]
    return _one_line(exc)


def _connect(ray, address: str | None) -> bool:
    """Attach to (or start) a cluster; True when this call started Ray and must shut it down."""
    if ray.is_initialized():
        return False
    kwargs = dict(log_to_driver=False, logging_level="ERROR", namespace="rstar")
    try:
        if address in (None, ""):
            ray.init(include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray cluster" if address in (None, "") else f"the Ray cluster at {address!r}"
        raise RayUnavailable(
            f"cannot connect to {where}: {_one_line(exc)}; start one with `ray start --head` "
            "(and `ray start --address=HEAD:6379` on each other node), or give no address "
            "to start a local one") from None
    return True


def _cluster(ray) -> dict:
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive", n.get("alive", False)):
            continue
        nodes.append({"node_id": n.get("NodeID"), "host": n.get("NodeManagerHostname"),
                      "address": n.get("NodeManagerAddress"),
                      "resources": {k: float(v) for k, v in (n.get("Resources") or {}).items()
                                    if k in ("CPU", "GPU", "memory", "object_store_memory")}})
    return {"nodes": nodes, "resources": {k: float(v) for k, v in ray.cluster_resources().items()
                                          if k in ("CPU", "GPU", "memory", "object_store_memory")}}


def _source_tree_hint(causes) -> str:
    """Ray puts the driver's working directory first on every worker's Python path: started from
    rstar's source checkout, the workers import ./rstar, which has no compiled core."""
    if not any("rstar._core" in c for c in causes):
        return ""
    here = Path.cwd()
    if (here / "rstar" / "__init__.py").is_file():
        return (f" (Ray puts the driver's working directory, {here}, first on the workers' Python path, and "
                f"{here / 'rstar'} is a source tree without the compiled core: start the run from another "
                "directory)")
    return ""


def run_on_ray(problems: list, recipe: Any, address: str | None,
               on_result: Callable[[dict], None],
               progress: Callable[[dict], None] | None = None, *,
               workers: int | None = None, cpus_per_worker: float | None = None,
               gpus_per_worker: float | None = None, in_flight: int | None = None,
               max_attempts: int = 4, stall_timeout: float = 900.0, run_id: str = "") -> dict:
    """Search ``problems`` on a Ray cluster; ``on_result(result)`` once per problem, in this process.

    ``address``: ``None`` or ``""`` starts a local cluster, ``"auto"`` attaches
    to the one running on this machine, ``"HOST:PORT"`` to that head node. If
    Ray is already initialised in this process, that connection is used.
    ``workers``: number of actors (default: as many as the cluster's CPUs, and
    GPUs for a GPU policy, can host); ``in_flight``: problems handed to one
    actor at a time (default: twice the search's concurrent problems).
    ``progress(event)`` gets dicts ``{"event": "workers"|"lost"|"requeued"|
    "result", ...}`` for a progress display.

    A problem that was in flight on ``max_attempts`` actors that all died ends
    the run with an error naming it (results so far are kept; fix, then
    ``--resume``). With no actor answering for ``stall_timeout`` seconds while
    work remains, the run ends with an error describing the cluster.

    Returns the description of the cluster for ``run.json``: nodes, actors
    (node, host, pid of each incarnation), resources, and fault counters.
    """
    ray = import_ray()
    from ray.exceptions import RayActorError, RayError, RayTaskError

    problems = list(problems)
    position = {p.id: i for i, p in enumerate(problems)}
    owed: dict[str, Any] = {p.id: p for p in problems}
    queue: deque = deque(problems)
    attempts: dict[str, int] = {}
    stats = {"requeued": 0, "lost_workers": 0, "late_duplicates_dropped": 0, "results": 0}

    def emit(event: str, **data) -> None:
        if progress is not None:
            progress({"event": event, **data})

    started_ray = _connect(ray, address)
    t_start = time.monotonic()
    actors: list[_Actor] = []
    try:
        cluster = _cluster(ray)
        total = cluster["resources"]
        res = worker_resources(recipe, cpus_per_worker, gpus_per_worker, total.get("GPU", 0.0))
        if workers is None:
            fit = int(total.get("CPU", 0) // res["num_cpus"])
            if res["num_gpus"] > 0:
                fit = min(fit, int(total.get("GPU", 0) // res["num_gpus"]))
            workers = fit
        workers = min(int(workers), max(1, len(problems)))
        if workers < 1 or total.get("CPU", 0) < res["num_cpus"] or total.get("GPU", 0) < res["num_gpus"]:
            raise RayUnavailable(
                f"the Ray cluster ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs on "
                f"{len(cluster['nodes'])} node(s)) cannot host one worker needing {res['num_cpus']:g} CPUs and "
                f"{res['num_gpus']:g} GPUs; add nodes (`ray start --address=...`) or ask for less")
        default_capacity = int(in_flight) if in_flight else 2 * _concurrency(recipe)

        def capacity(a: _Actor) -> int:
            return int(in_flight) if in_flight else 2 * int(a.info.get("concurrency") or _concurrency(recipe))
        remote_cls = ray.remote(SearchWorker).options(
            num_cpus=res["num_cpus"], num_gpus=res["num_gpus"], max_restarts=-1, max_task_retries=0,
            max_concurrency=4, scheduling_strategy="SPREAD")
        for i in range(workers):
            actors.append(_Actor(index=i, handle=remote_cls.remote(recipe, run_id)))
        emit("workers", workers=workers, resources=res, nodes=len(cluster["nodes"]))

        def issue_poll(a: _Actor) -> None:
            a.poll_ref = a.handle.poll.remote(1.0)

        def give_back(a: _Actor, why: str) -> None:
            """Everything handed to ``a``'s current incarnation goes back to the front of the queue."""
            lost = [p for pid, p in a.held.items() if pid in owed]
            if a.incarnation is not None:
                stats["lost_workers"] += 1
            a.held = {}
            a.incarnation = None
            for p in lost:
                attempts[p.id] = attempts.get(p.id, 0) + 1
                if attempts[p.id] >= max_attempts:
                    raise RstarError(
                        f"problem {p.id!r} was in flight on {attempts[p.id]} Ray workers that were all lost "
                        f"(last: {why}); the results so far are saved: fix the cause, then run again with --resume")
            queue.extendleft(reversed(lost))
            stats["requeued"] += len(lost)
            emit("lost", worker=a.index, why=why, requeued=len(lost), ids=[p.id for p in lost],
                 node_id=a.info.get("node_id"))

        def hand_out() -> None:
            live = [a for a in actors if a.incarnation is not None and a.dead_error is None]
            if not live or not queue:
                return
            batches: dict[int, list] = {a.index: [] for a in live}
            def load(x: _Actor) -> int:
                return len(x.held) + len(batches[x.index])

            while queue:
                room = [x for x in live if load(x) < capacity(x)]
                if not room:
                    break
                a = min(room, key=load)
                p = queue.popleft()
                if p.id not in owed:
                    continue
                batches[a.index].append(p)
            for a in live:
                batch = batches[a.index]
                if batch:
                    for p in batch:
                        a.held[p.id] = p
                    a.handle.submit.remote(batch, a.incarnation)

        for a in actors:
            issue_poll(a)
        last_alive = time.monotonic()
        while owed:
            now = time.monotonic()
            for a in actors:
                if a.poll_ref is None and a.dead_error is None and now >= a.retry_at:
                    issue_poll(a)
            refs = [a.poll_ref for a in actors if a.poll_ref is not None]
            if not refs and all(a.dead_error for a in actors):
                causes = sorted({a.dead_error for a in actors})
                raise RayUnavailable(f"every Ray worker failed to start: {'; '.join(causes)}"
                                     + _source_tree_hint(causes))
            if refs:
                ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
                if ready:  # and whatever else is ready now
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            else:
                ready = []
                time.sleep(0.2)
            ready_set = set(ready)
            for a in actors:
                if a.poll_ref is None or a.poll_ref not in ready_set:
                    continue
                ref, a.poll_ref = a.poll_ref, None
                try:
                    reply = ray.get(ref)
                except RayActorError as exc:
                    if getattr(exc, "actor_init_failed", False) or "creation task" in str(exc):
                        a.dead_error = _init_cause(exc)  # its constructor failed: Ray does not restart it
                        give_back(a, a.dead_error)
                        continue
                    failure: BaseException | None = exc
                except RayTaskError as exc:  # poll itself raised: a bug in the worker
                    raise RstarError(f"a Ray worker failed: {_one_line(exc)}") from None
                except RayError as exc:  # the reply was lost with its node, or the like
                    failure = exc
                else:
                    failure = None
                if failure is not None:
                    # its process or node is gone; Ray restarts it where there is room
                    a.failures += 1
                    if a.incarnation is not None:
                        give_back(a, _one_line(failure))
                    a.retry_at = time.monotonic() + a.backoff
                    a.backoff = min(a.backoff * 2, 10.0)
                    continue
                a.backoff = 0.5
                last_alive = time.monotonic()
                if reply["incarnation"] != a.incarnation:
                    if a.incarnation is not None:  # it died and came back between two polls
                        give_back(a, "the worker was restarted")
                    a.incarnation = reply["incarnation"]
                    a.incarnations += 1
                    if a.ready_s is None:
                        a.ready_s = round(time.monotonic() - t_start, 3)
                    a.info = dict(reply.get("info") or {})
                for result in reply["results"]:
                    pid = result.get("id")
                    holder = a.held.pop(pid, None)
                    if pid not in owed:
                        stats["late_duplicates_dropped"] += 1
                        continue
                    if holder is None:  # answered by an incarnation the driver had given up on
                        for other in actors:
                            other.held.pop(pid, None)
                    problem = owed.pop(pid)
                    idx = getattr(problem, "index", None)
                    result["index"] = idx if isinstance(idx, int) else position[pid]
                    on_result(result)
                    stats["results"] += 1
                    emit("result", id=pid, worker=a.index, node_id=a.info.get("node_id"),
                         host=a.info.get("host"), held=len(a.held), done=stats["results"], total=len(problems))
                if reply.get("error"):
                    raise RstarError(f"the search failed on Ray worker {a.index} "
                                     f"({a.info.get('host')}): {reply['error']}")
                issue_poll(a)
            hand_out()
            if owed and not any(a.incarnation for a in actors):
                if time.monotonic() - last_alive > stall_timeout:
                    state = _cluster(ray)
                    raise RayUnavailable(
                        f"no Ray worker has answered for {stall_timeout:.0f}s with {len(owed)} problems left; "
                        f"the cluster has {len(state['nodes'])} node(s), {state['resources'].get('CPU', 0):g} CPUs, "
                        f"and each worker needs {res['num_cpus']:g} CPUs and {res['num_gpus']:g} GPUs")
        description = _cluster(ray)
        description.update({
            "address": address if address not in (None, "") else "local",
            "worker_resources": res,
            "in_flight_per_worker": max([capacity(a) for a in actors if a.info] or [default_capacity]),
            "actors": [{"worker": a.index, "incarnations": a.incarnations, "ready_s": a.ready_s,
                        **{k: a.info.get(k) for k in ("node_id", "host", "pid")},
                        **({"failed": a.dead_error} if a.dead_error else {})} for a in actors],
            **stats,
        })
        return description
    finally:
        _shutdown(ray, actors, started_ray)


def _shutdown(ray, actors: list[_Actor], started_ray: bool) -> None:
    """Close the actors (their sandbox containers go with them), then Ray if this run started it."""
    try:
        closing = [a.handle.close.remote() for a in actors if a.dead_error is None and a.incarnation]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=10)
    except Exception:
        pass
    for a in actors:
        try:
            ray.kill(a.handle, no_restart=True)
        except Exception:
            pass
    if started_ray:
        with contextlib.suppress(Exception):
            ray.shutdown()
