"""Scale-out on Ray: `rstar run DATA --out DIR --ray [ADDRESS]`.

Problems are spread over Ray actors (:class:`SearchWorker`). Each actor opens
its components once (template, sandbox pool on its own node, policy, scorer and
the search: ``rstar.components.open_components``, the road a local run takes)
and searches the problems handed to it, several at a time. The driver
(:func:`run_on_ray`, its loop in :class:`_Dispatch`) keeps every actor fed with
a bounded number of problems, receives finished results and hands each to
``on_result`` exactly once, in the driver process, so the result file,
``--resume`` and the summary are those of a local run.

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
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rstar.errors import RstarError
from rstar.recipe import Recipe
from rstar.results import Problem

__all__ = ["RayUnavailable", "SearchWorker", "run_on_ray", "init_ray", "import_ray", "INSTALL_HINT"]

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

    def __init__(self, recipe: Recipe, run_id: str = "", cwd: str | None = None) -> None:
        from rstar.components import open_components

        if cwd and os.path.isdir(cwd):  # relative paths in the recipe are the driver's (see init_ray)
            os.chdir(cwd)
        self.incarnation = uuid.uuid4().hex
        self._stack = contextlib.ExitStack()
        self._cond = threading.Condition()
        self._inbox: deque = deque()
        self._outbox: list[dict] = []
        self._error: str | None = None
        self._closing = False
        try:
            # one warm container per CPU that Ray gave this actor (not per CPU of the host)
            comps = open_components(recipe, self._stack, run_id=run_id, cpus=self._assigned().get("CPU", 1.0))
        except BaseException:
            self._stack.close()
            raise
        self._search = comps.search
        self._info = {**self._describe(), "concurrency": comps.recipe.search.concurrent_problems}
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


def worker_resources(recipe: Recipe, cpus_per_worker: float | None = None,
                     gpus_per_worker: float | None = None, cluster_gpus: float = 0.0) -> dict:
    """What one actor asks Ray for: ``{"num_cpus": float, "num_gpus": float}``.

    CPUs: ``cpus_per_worker``, else the recipe's sandbox pool size (``sandbox.size``), else 1.
    GPUs: ``gpus_per_worker``, else, for a GPU policy (a ``vllm:`` model, llama.cpp
    with ``n_gpu_layers``, transformers with a ``cuda`` device), its
    ``tensor_parallel_size`` or 1, as long as the cluster has GPUs at all (a
    ``vllm:`` model on a cluster without GPUs is taken to be vLLM's CPU build).
    """
    opts = recipe.backend_options
    if cpus_per_worker is None:
        cpus_per_worker = recipe.sandbox.get("size") or 1
    if gpus_per_worker is None:
        gpu = recipe.model.startswith("vllm:") and cluster_gpus > 0
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


def init_ray(address: str | None = None, **kwargs) -> None:
    """``ray.init`` for rstar's workers; start Ray yourself with this before calling
    :func:`run_on_ray` (or let it start Ray).

    Ray puts the driver's working directory first on every worker's Python path
    unless the job has a working directory of its own: started in a checkout of
    rstar's sources, the workers would import ``./rstar``, which has no compiled
    core. The job gets an empty one (uploaded once, a few bytes), so workers import
    the rstar that is installed (or on ``PYTHONPATH``); each worker then moves to
    the driver's directory (:class:`SearchWorker`), so relative paths in a recipe
    mean what they mean to the driver.
    """
    ray = import_ray()
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    with tempfile.TemporaryDirectory(prefix="rstar-ray-job-") as empty:
        runtime_env.setdefault("working_dir", empty)
        ray.init(address=address, runtime_env=runtime_env, **kwargs)


def _connect(ray, address: str | None) -> bool:
    """Attach to (or start) a cluster; True when this call started Ray and must shut it down."""
    if ray.is_initialized():
        return False
    kwargs = dict(log_to_driver=False, logging_level="ERROR", namespace="rstar")
    try:
        if address in (None, ""):
            init_ray(include_dashboard=False, **kwargs)
        else:
            init_ray(address, **kwargs)
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
    """Workers that found a source tree without the compiled core: Ray was started by the caller
    (not with :func:`init_ray`) in a checkout of rstar's sources."""
    if not any("rstar._core" in c for c in causes):
        return ""
    here = Path.cwd()
    if (here / "rstar" / "__init__.py").is_file():
        return (f" (Ray put the driver's working directory, {here}, first on the workers' Python path, and "
                f"{here / 'rstar'} is a source tree without the compiled core: start Ray with "
                "rstar.distributed.init_ray, which gives the job a working directory of its own)")
    return ""


def run_on_ray(problems: list[Problem], recipe: Recipe, address: str | None,
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
    actor at a time (default: twice the problems its search keeps in flight).
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
    run = _Dispatch(ray, list(problems), on_result, progress, in_flight=in_flight, max_attempts=max_attempts,
                    stall_timeout=stall_timeout)
    started_ray = _connect(ray, address)
    try:
        cluster = _cluster(ray)
        res = worker_resources(recipe, cpus_per_worker, gpus_per_worker, cluster["resources"].get("GPU", 0.0))
        run.start(recipe, run_id, _worker_count(cluster, res, workers, len(run.problems)), res)
        run.emit("workers", workers=len(run.actors), resources=res, nodes=len(cluster["nodes"]))
        run.until_done()
        description = _cluster(ray)
        description.update({"address": address if address not in (None, "") else "local",
                            "worker_resources": res, **run.describe()})
        return description
    finally:
        _shutdown(ray, run.actors, started_ray)


def _worker_count(cluster: dict, res: dict, workers: int | None, problems: int) -> int:
    """Actors to start: ``workers``, else as many as the cluster can host; never more than
    problems. One line when the cluster cannot host a single one."""
    total = cluster["resources"]
    if workers is None:
        workers = int(total.get("CPU", 0) // res["num_cpus"])
        if res["num_gpus"] > 0:
            workers = min(workers, int(total.get("GPU", 0) // res["num_gpus"]))
    workers = min(int(workers), max(1, problems))
    if workers < 1 or total.get("CPU", 0) < res["num_cpus"] or total.get("GPU", 0) < res["num_gpus"]:
        raise RayUnavailable(
            f"the Ray cluster ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs on "
            f"{len(cluster['nodes'])} node(s)) cannot host one worker needing {res['num_cpus']:g} CPUs and "
            f"{res['num_gpus']:g} GPUs; add nodes (`ray start --address=...`) or ask for less")
    return workers


class _Dispatch:
    """The driver's side of a run: the problems still owed, a queue of those not handed out,
    and one :class:`_Actor` per worker. :meth:`until_done` loops: wait for any actor's poll,
    take in its reply (results, a new incarnation, a loss), hand out the queue."""

    def __init__(self, ray, problems: list[Problem], on_result: Callable[[dict], None],
                 progress: Callable[[dict], None] | None, *, in_flight: int | None, max_attempts: int,
                 stall_timeout: float) -> None:
        from ray.exceptions import RayActorError, RayError, RayTaskError

        self.ray = ray
        self._errors = (RayActorError, RayError, RayTaskError)
        self.problems = problems
        self.on_result = on_result
        self.progress = progress
        self.in_flight = in_flight
        self.max_attempts = max_attempts
        self.stall_timeout = stall_timeout
        self.position = {p.id: i for i, p in enumerate(problems)}
        self.owed: dict[str, Problem] = {p.id: p for p in problems}
        self.queue: deque = deque(problems)
        self.attempts: dict[str, int] = {}
        self.stats = {"requeued": 0, "lost_workers": 0, "late_duplicates_dropped": 0, "results": 0}
        self.actors: list[_Actor] = []
        self.t_start = time.monotonic()
        self.res: dict = {}

    def emit(self, event: str, **data) -> None:
        if self.progress is not None:
            self.progress({"event": event, **data})

    def start(self, recipe: Recipe, run_id: str, workers: int, res: dict) -> None:
        self.res = res
        remote_cls = self.ray.remote(SearchWorker).options(
            num_cpus=res["num_cpus"], num_gpus=res["num_gpus"], max_restarts=-1, max_task_retries=0,
            max_concurrency=4, scheduling_strategy="SPREAD")
        for i in range(workers):
            self.actors.append(_Actor(index=i, handle=remote_cls.remote(recipe, run_id, os.getcwd())))

    def capacity(self, a: _Actor) -> int:
        """Problems handed to ``a`` at a time: ``in_flight``, else twice what its search keeps in flight."""
        return int(self.in_flight) if self.in_flight else 2 * int(a.info.get("concurrency") or 1)

    # -- the loop -----------------------------------------------------------------
    def until_done(self) -> None:
        for a in self.actors:
            self._poll(a)
        self.last_alive = time.monotonic()
        while self.owed:
            for a, ref in self._ready():
                self._answer(a, ref)
            self._hand_out()
            self._check_stalled()

    def _poll(self, a: _Actor) -> None:
        a.poll_ref = a.handle.poll.remote(1.0)

    def _ready(self) -> list[tuple[_Actor, Any]]:
        """The actors whose poll has answered (waiting up to half a second for one); polls
        that failed earlier are issued again once their back-off has passed."""
        now = time.monotonic()
        for a in self.actors:
            if a.poll_ref is None and a.dead_error is None and now >= a.retry_at:
                self._poll(a)
        refs = [a.poll_ref for a in self.actors if a.poll_ref is not None]
        if not refs and all(a.dead_error for a in self.actors):
            causes = sorted({a.dead_error for a in self.actors})
            raise RayUnavailable(f"every Ray worker failed to start: {'; '.join(causes)}"
                                 + _source_tree_hint(causes))
        if not refs:
            time.sleep(0.2)
            return []
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=0.5)
        if ready:  # and whatever else is ready now
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        ready_set = set(ready)
        out = []
        for a in self.actors:
            if a.poll_ref is not None and a.poll_ref in ready_set:
                out.append((a, a.poll_ref))
                a.poll_ref = None
        return out

    def _answer(self, a: _Actor, ref) -> None:
        """Take in one poll's reply, or the failure in its place."""
        RayActorError, RayError, RayTaskError = self._errors
        try:
            reply = self.ray.get(ref)
        except RayActorError as exc:
            if getattr(exc, "actor_init_failed", False) or "creation task" in str(exc):
                a.dead_error = _init_cause(exc)  # its constructor failed: Ray does not restart it
                self._give_back(a, a.dead_error)
            else:
                self._lost(a, exc)
            return
        except RayTaskError as exc:  # poll itself raised: a bug in the worker
            raise RstarError(f"a Ray worker failed: {_one_line(exc)}") from None
        except RayError as exc:  # the reply was lost with its node, or the like
            self._lost(a, exc)
            return
        a.backoff = 0.5
        self.last_alive = time.monotonic()
        if reply["incarnation"] != a.incarnation:
            if a.incarnation is not None:  # it died and came back between two polls
                self._give_back(a, "the worker was restarted")
            a.incarnation = reply["incarnation"]
            a.incarnations += 1
            if a.ready_s is None:
                a.ready_s = round(time.monotonic() - self.t_start, 3)
            a.info = dict(reply.get("info") or {})
        for result in reply["results"]:
            self._result(a, result)
        if reply.get("error"):
            raise RstarError(f"the search failed on Ray worker {a.index} ({a.info.get('host')}): {reply['error']}")
        self._poll(a)

    def _lost(self, a: _Actor, failure: BaseException) -> None:
        """Its process or node is gone; Ray restarts it where there is room: ask again later."""
        a.failures += 1
        if a.incarnation is not None:
            self._give_back(a, _one_line(failure))
        a.retry_at = time.monotonic() + a.backoff
        a.backoff = min(a.backoff * 2, 10.0)

    def _result(self, a: _Actor, result: dict) -> None:
        """Pass a result on if its problem is still owed (a late answer from an actor presumed
        lost is dropped: nothing is written twice)."""
        pid = result.get("id")
        holder = a.held.pop(pid, None)
        if pid not in self.owed:
            self.stats["late_duplicates_dropped"] += 1
            return
        if holder is None:  # answered by an incarnation the driver had given up on
            for other in self.actors:
                other.held.pop(pid, None)
        problem = self.owed.pop(pid)
        idx = getattr(problem, "index", None)
        result["index"] = idx if isinstance(idx, int) else self.position[pid]
        self.on_result(result)
        self.stats["results"] += 1
        self.emit("result", id=pid, worker=a.index, node_id=a.info.get("node_id"), host=a.info.get("host"),
                  held=len(a.held), done=self.stats["results"], total=len(self.problems))

    def _give_back(self, a: _Actor, why: str) -> None:
        """Everything handed to ``a``'s current incarnation goes back to the front of the queue."""
        lost = [p for pid, p in a.held.items() if pid in self.owed]
        if a.incarnation is not None:
            self.stats["lost_workers"] += 1
        a.held = {}
        a.incarnation = None
        for p in lost:
            self.attempts[p.id] = self.attempts.get(p.id, 0) + 1
            if self.attempts[p.id] >= self.max_attempts:
                raise RstarError(
                    f"problem {p.id!r} was in flight on {self.attempts[p.id]} Ray workers that were all lost "
                    f"(last: {why}); the results so far are saved: fix the cause, then run again with --resume")
        self.queue.extendleft(reversed(lost))
        self.stats["requeued"] += len(lost)
        self.emit("lost", worker=a.index, why=why, requeued=len(lost), ids=[p.id for p in lost],
                  node_id=a.info.get("node_id"))

    def _hand_out(self) -> None:
        """The queue to the live actors, the least loaded first, each up to its capacity."""
        live = [a for a in self.actors if a.incarnation is not None and a.dead_error is None]
        if not live or not self.queue:
            return
        batches: dict[int, list] = {a.index: [] for a in live}

        def load(x: _Actor) -> int:
            return len(x.held) + len(batches[x.index])

        while self.queue:
            room = [x for x in live if load(x) < self.capacity(x)]
            if not room:
                break
            a = min(room, key=load)
            p = self.queue.popleft()
            if p.id in self.owed:
                batches[a.index].append(p)
        for a in live:
            batch = batches[a.index]
            if batch:
                for p in batch:
                    a.held[p.id] = p
                a.handle.submit.remote(batch, a.incarnation)

    def _check_stalled(self) -> None:
        if self.owed and not any(a.incarnation for a in self.actors):
            if time.monotonic() - self.last_alive > self.stall_timeout:
                state = _cluster(self.ray)
                raise RayUnavailable(
                    f"no Ray worker has answered for {self.stall_timeout:.0f}s with {len(self.owed)} problems left; "
                    f"the cluster has {len(state['nodes'])} node(s), {state['resources'].get('CPU', 0):g} CPUs, "
                    f"and each worker needs {self.res['num_cpus']:g} CPUs and {self.res['num_gpus']:g} GPUs")

    def describe(self) -> dict:
        known = [self.capacity(a) for a in self.actors if a.info]
        return {
            "in_flight_per_worker": max(known) if known else self.in_flight,
            "actors": [{"worker": a.index, "incarnations": a.incarnations, "ready_s": a.ready_s,
                        **{k: a.info.get(k) for k in ("node_id", "host", "pid")},
                        **({"failed": a.dead_error} if a.dead_error else {})} for a in self.actors],
            **self.stats,
        }


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
