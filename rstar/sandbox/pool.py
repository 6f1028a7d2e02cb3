"""A pool of warm, hardened containers that execute Python programs.

Each container runs ``sandbox/worker.py`` as PID 1 (sympy and numpy already
imported; programs that do not mention them are forked from a slim zygote
process instead, see the worker's docstring); the host talks to it over the container's attach socket with
length-prefixed JSON frames (see the worker's docstring). One driver thread
per container keeps up to ``pipeline_depth`` requests in flight, so the
worker always has the next program waiting while the result of the previous
one travels back. No Docker API call is made per program.

Failure handling: a container whose socket closes (worker died), that sends
a malformed frame, or that does not answer within the program's timeout plus
a grace period is killed and replaced. The program it was running gets a
``sandbox_error`` result; programs queued behind it are given to another
container. Containers carry the labels ``rstar.sandbox=1``,
``rstar.pool=<uuid>`` and ``rstar.owner=<host>:<pid>:<start time>``; a new
pool removes containers whose owning process is gone, and the attach stream
is opened with ``stdin_once`` so that a worker whose host process died sees
end-of-input and exits (the container is then auto-removed).
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import socket
import struct
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field

from rstar.errors import SandboxUnavailable
from rstar.sandbox import engine

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "sandbox_error")

MAGIC = b"RSW1"
HEADER = struct.Struct(">4sI")
PROTOCOL = 1
WORKER_PATH = "/opt/rstar/worker.py"
LABEL = "rstar.sandbox"


@dataclass
class SandboxConfig:
    """Options of the containers and of the programs run in them (safe defaults)."""

    image: str = "rstar-sandbox:latest"
    timeout_s: float = 5.0           # wall clock per program (per run_steps path)
    cpu_seconds: int = 5             # RLIMIT_CPU per program
    memory_mb: int = 768             # container memory limit (worker + node states + program), no swap
    program_memory_mb: int = 256     # address space a program may add to the worker's (RLIMIT_AS)
    pids_limit: int = 64             # processes + threads per container (cgroup)
    nproc: int = 0                   # RLIMIT_NPROC per program; counts the uid host-wide, so off by default
    cpus: float = 1.0                # CPU quota per container
    tmpfs_mb: int = 64               # size of the writable /tmp
    file_size_mb: int = 16           # RLIMIT_FSIZE: files and the raw captured output
    max_output_bytes: int = 64 * 1024  # stdout/stderr kept; more gives status output_limit
    nofile: int = 256                # RLIMIT_NOFILE per program
    user: str = "65534:65534"        # nobody:nogroup
    incremental: bool = True         # run_steps with nodes: a step forks its parent step's live state
    max_states: int = 128            # node states kept per container (LRU); adds to the pids limit
    state_memory_mb: int = 256       # memory the states may take beyond the idle worker (LRU; measured:
                                     # ~1.4 MB a plain state, ~8 MB a sympy one): with the worker
                                     # (~80 MB) and one program (program_memory_mb) within memory_mb
    pipeline_depth: int = 4          # requests in flight per container
    grace_s: float = 5.0             # extra wait beyond the timeout before a container counts as stuck
    start_timeout_s: float = 60.0    # a container must answer its first ping within this
    extra_labels: dict = field(default_factory=dict)

    def worker_command(self) -> list[str]:
        return [
            "python3", "-I", WORKER_PATH, "--contained",
            "--timeout", repr(float(self.timeout_s)),
            "--cpu-seconds", str(int(self.cpu_seconds)),
            "--program-memory-mb", str(int(self.program_memory_mb)),
            "--file-size-mb", str(int(self.file_size_mb)),
            "--nproc", str(int(self.nproc)),
            "--nofile", str(int(self.nofile)),
            "--max-output-bytes", str(int(self.max_output_bytes)),
        ] + (["--incremental", "--max-states", str(int(self.max_states)),
              "--state-memory-mb", str(int(self.state_memory_mb))] if self.incremental else [])

    def container_pids_limit(self) -> int:
        """pids_limit is for the worker and the program; node states come on top."""
        return int(self.pids_limit) + (int(self.max_states) + 8 if self.incremental else 0)


@dataclass
class ExecResult:
    """The outcome of one program."""

    status: str                      # one of STATUSES
    stdout: str = ""                 # at most max_output_bytes (UTF-8, undecodable bytes replaced)
    stderr: str = ""
    error_type: str | None = None    # e.g. "ZeroDivisionError", "Timeout", "MemoryError"
    error_message: str | None = None
    error_line: str | None = None    # last traceback line, e.g. "ZeroDivisionError: division by zero"
    duration_s: float = 0.0          # time the program ran (fork to exit), measured in the container
    stdout_truncated: bool = False
    last_output: str | None = None   # for multi-chunk programs: stdout of the last chunk
    failed_step: int | None = None   # for multi-chunk programs: index of the chunk that failed
    reused_state: bool = False       # run_steps with nodes: only the last step ran, in a fork of its parent's state

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class StepResult:
    """The execution verdict on the last step of a search path."""

    valid: bool            # the program made of all steps so far ran
    status: str
    output: str            # stdout produced by the last step only
    error: str | None      # one line, for invalid steps
    exec: ExecResult


def _sandbox_error(message: str, duration: float = 0.0) -> ExecResult:
    return ExecResult(status="sandbox_error", error_type="SandboxError", error_message=message,
                      error_line=f"SandboxError: {message}", duration_s=duration)


def _result_from_frame(msg: dict) -> ExecResult:
    status = msg.get("status")
    if status not in STATUSES:
        return _sandbox_error(f"worker sent an unknown status {status!r}")
    out = msg.get("stdout") or ""
    return ExecResult(
        status=status,
        stdout=out,
        stderr=msg.get("stderr") or "",
        error_type=msg.get("error_type"),
        error_message=msg.get("error_message"),
        error_line=msg.get("error_line"),
        duration_s=float(msg.get("duration_s") or 0.0),
        stdout_truncated=int(msg.get("stdout_bytes") or 0) > len(out.encode("utf-8", "replace")),
        last_output=msg.get("last_output"),
        failed_step=msg.get("failed_step"),
        reused_state=bool(msg.get("reused_state")),
    )


# ------------------------------------------------------------------ jobs


class _Job:
    __slots__ = ("chunks", "timeout", "result", "done", "attempts", "id", "extra", "slot", "reply")

    def __init__(self, chunks: list[str], timeout: float, extra: dict | None = None, slot: int | None = None,
                 reply: bool = True) -> None:
        self.chunks = chunks
        self.timeout = timeout
        self.result: ExecResult | dict | None = None
        self.done = threading.Event()
        self.attempts = 0
        self.id = 0
        self.extra = extra      # more request fields: tree/node/parent, or a control op (ping, release)
        self.slot = slot        # the container that must run it (a tree's), or None: any
        self.reply = reply      # False: the worker answers nothing (release)

    def wait(self) -> None:
        """Wait in short slices: a Ctrl-C that another thread took is handled within 0.1 s."""
        while not self.done.wait(0.1):
            pass

    def finish(self, result: ExecResult) -> None:
        if self.result is None:
            self.result = result
            self.done.set()


class _Queue:
    """FIFO of jobs shared by the driver threads; failed containers put work back at the front."""

    def __init__(self) -> None:
        self._items: collections.deque[_Job] = collections.deque()
        self._own: dict[int, collections.deque[_Job]] = collections.defaultdict(collections.deque)
        self._cond = threading.Condition()
        self.closed = False

    def _deque(self, job: _Job) -> collections.deque:
        return self._items if job.slot is None else self._own[job.slot]

    def put_many(self, jobs) -> None:
        with self._cond:
            for job in jobs:
                self._deque(job).append(job)
            self._cond.notify_all()

    def put_front(self, jobs) -> None:
        with self._cond:
            for job in reversed(list(jobs)):
                self._deque(job).appendleft(job)
            self._cond.notify_all()

    def get(self, timeout: float | None, slot: int | None = None) -> _Job | None:
        """The next job for this slot: its own (a tree routed to it) first, then any."""
        with self._cond:
            own = self._own.get(slot) if slot is not None else None
            if not self._items and not own and timeout:
                self._cond.wait_for(lambda: self._items or self._own.get(slot) or self.closed, timeout)
                own = self._own.get(slot) if slot is not None else None
            for dq in (own, self._items):
                while dq:
                    job = dq.popleft()
                    if job.result is None:  # skip jobs already answered (cancelled)
                        return job
            return None

    def drain(self, slot: int | None = None) -> list[_Job]:
        """Take queued jobs: those any container may run, or (slot given) that slot's own."""
        with self._cond:
            dq = self._items if slot is None else self._own.get(slot, collections.deque())
            items = list(dq)
            dq.clear()
            return items

    def drain_all(self) -> list[_Job]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            for dq in self._own.values():
                items.extend(dq)
                dq.clear()
            return items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


# ------------------------------------------------------------ containers


class _ContainerDead(Exception):
    """The container stopped answering properly; it must be replaced."""


def _process_start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it belongs to another host."""
    try:
        host, pid_s, start = owner.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != socket.gethostname():
        return None
    if not os.path.exists(f"/proc/{pid}"):
        return False
    return _process_start_time(pid) == start


def remove_leftovers(client, include_live: bool = False) -> int:
    """Remove sandbox containers whose owning process (on this host) is gone."""
    removed = 0
    try:
        containers = client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
    except Exception:  # noqa: BLE001 - best effort
        return 0
    for c in containers:
        owner = (c.get("Labels") or {}).get("rstar.owner", "")
        alive = _owner_alive(owner)
        if alive is False or (include_live and alive is not None):
            try:
                client.api.remove_container(c["Id"], force=True)
                removed += 1
            except Exception:  # noqa: BLE001 - already gone / removal in progress
                pass
    return removed


class _Slot(threading.Thread):
    """One container and the thread that drives it."""

    def __init__(self, pool: "SandboxPool", index: int) -> None:
        super().__init__(name=f"rstar-sandbox-{index}", daemon=True)
        self.pool = pool
        self.index = index
        self.api = None
        self.container_id: str | None = None
        self.sock: socket.socket | None = None
        self._sock_owner = None
        self.inflight: collections.deque[_Job] = collections.deque()
        self.head_since = 0.0
        self.raw = bytearray()       # docker-multiplexed bytes
        self.frames = bytearray()    # the worker's stdout stream
        self.errtail = bytearray()   # the worker's stderr stream (diagnostics)
        self.ready = threading.Event()
        self.start_error: BaseException | None = None
        self.next_id = 1

    # ------------------------------------------------------------ lifecycle
    def launch(self) -> None:
        cfg = self.pool.config
        if self.api is None:
            self.api = engine.connect().api
        host_config = self.api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={int(cfg.tmpfs_mb)}m,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            pids_limit=cfg.container_pids_limit(),
            mem_limit=f"{int(cfg.memory_mb)}m",
            memswap_limit=f"{int(cfg.memory_mb)}m",
            nano_cpus=int(float(cfg.cpus) * 1e9),
            ipc_mode="none",
            auto_remove=True,
            log_config={"Type": "none", "Config": {}},
            ulimits=[{"Name": "core", "Soft": 0, "Hard": 0}],
        )
        labels = {LABEL: "1", "rstar.pool": self.pool.pool_id, "rstar.owner": self.pool.owner}
        labels.update({str(k): str(v) for k, v in cfg.extra_labels.items()})
        env = {
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
            # glibc allocator for Python objects, backed by transparent huge pages:
            # far fewer page-table entries to copy on each fork and free on each exit.
            "PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
        }
        # stdin_open without detach also sets StdinOnce: when this process dies and its
        # attach connection closes, the worker reads end-of-input and exits.
        created = self.api.create_container(
            cfg.image, command=cfg.worker_command(), user=cfg.user, environment=env,
            labels=labels, stdin_open=True, tty=False,  # detach=False: StdinOnce working_dir="/tmp",
            hostname="sandbox", network_disabled=True, host_config=host_config,
        )
        self.container_id = created["Id"]
        self.pool._track(self.container_id)
        owner = self.api.attach_socket(self.container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self._sock_owner = owner
        self.sock = getattr(owner, "_sock", owner)
        self.api.start(self.container_id)
        self.raw.clear()
        self.frames.clear()
        self.errtail.clear()
        # first ping: the worker has imported everything and owns its channel
        ping_id = self._new_id()
        self._send({"id": ping_id, "ping": True})
        msg = self._recv_frame(time.monotonic() + cfg.start_timeout_s)
        if not msg.get("pong") or msg.get("id") != ping_id:
            raise _ContainerDead("worker did not answer the first ping")
        if msg.get("protocol") != PROTOCOL:
            raise SandboxUnavailable(
                f"the sandbox image {cfg.image!r} has worker protocol {msg.get('protocol')}, this rstar needs "
                f"{PROTOCOL}; rebuild it with: rstar sandbox build --force"
            )
        self.info = msg
        self.pool.stats["started"] += 1

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def discard(self) -> None:
        """Kill and forget the current container (removal happens in the background)."""
        cid, self.container_id = self.container_id, None
        try:
            if self.sock is not None:
                self.sock.close()
        except OSError:
            pass
        try:
            if self._sock_owner is not None and self._sock_owner is not self.sock:
                self._sock_owner.close()
        except Exception:  # noqa: BLE001
            pass
        self.sock = None
        self._sock_owner = None
        if cid is not None:
            self.pool._remove_async(cid, self.api)

    # ------------------------------------------------------------ framing
    def _send(self, obj: dict) -> None:
        body = json.dumps(obj).encode()
        try:
            self.sock.sendall(HEADER.pack(MAGIC, len(body)) + body)
        except OSError as exc:
            raise _ContainerDead(f"cannot write to the worker: {exc}") from None

    def _take_frame(self) -> dict | None:
        """A complete worker frame from the buffered stream, if there is one."""
        raw = self.raw
        while len(raw) >= 8:  # docker stream multiplexing: 1 byte stream, 3 zero, 4 bytes size
            size = int.from_bytes(raw[4:8], "big")
            if len(raw) < 8 + size:
                break
            stream = raw[0]
            if stream == 1:
                self.frames += raw[8:8 + size]
            elif stream == 2:
                self.errtail += raw[8:8 + size]
                del self.errtail[:-4096]
            else:
                raise _ContainerDead("malformed attach stream")
            del raw[:8 + size]
        buf = self.frames
        if len(buf) < HEADER.size:
            return None
        magic, n = HEADER.unpack_from(buf)
        if magic != MAGIC or n > self.pool.max_frame:
            raise _ContainerDead("the worker's framing is corrupt")
        if len(buf) < HEADER.size + n:
            return None
        body = bytes(buf[HEADER.size:HEADER.size + n])
        del buf[:HEADER.size + n]
        try:
            msg = json.loads(body)
        except ValueError:
            raise _ContainerDead("the worker sent a frame that is not JSON") from None
        if not isinstance(msg, dict):
            raise _ContainerDead("the worker sent a frame that is not an object")
        return msg

    def _recv_frame(self, deadline: float) -> dict:
        while True:
            msg = self._take_frame()
            if msg is not None:
                return msg
            self._recv_some(deadline)

    def _recv_some(self, deadline: float, poll: float | None = None) -> bool:
        """Read from the socket; False on a poll timeout; _ContainerDead past the deadline."""
        now = time.monotonic()
        if now >= deadline:
            raise _ContainerDead("the worker stopped answering")
        wait = deadline - now if poll is None else min(poll, deadline - now)
        self.sock.settimeout(max(wait, 0.0005))
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            if poll is not None and time.monotonic() < deadline:
                return False
            raise _ContainerDead("the worker stopped answering") from None
        except OSError as exc:
            raise _ContainerDead(f"lost the worker: {exc}") from None
        if not data:
            tail = bytes(self.errtail[-300:]).decode("utf-8", "replace").strip()
            raise _ContainerDead("the worker exited" + (f" ({tail.splitlines()[-1]})" if tail else ""))
        self.raw += data
        return True

    # ------------------------------------------------------------ main loop
    def run(self) -> None:
        pool = self.pool
        failures = 0
        while not pool._closing:
            if self.container_id is None:
                try:
                    self.launch()
                    failures = 0
                    self.ready.set()
                except BaseException as exc:  # noqa: BLE001
                    self.discard()
                    failures += 1
                    if not self.ready.is_set():
                        self.start_error = exc
                        self.ready.set()
                        return
                    # a replacement failed: answer what waits rather than hang, retry slowly
                    self._fail_waiting(f"cannot start a sandbox container: {exc}")
                    time.sleep(min(0.2 * failures, 2.0))
                    continue
            try:
                self._drive()
            except _ContainerDead as exc:
                self._container_failed(str(exc))
            except BaseException as exc:  # noqa: BLE001 - never let the thread die silently
                self._container_failed(f"host-side error: {type(exc).__name__}: {exc}")
        self.discard()

    def _fail_waiting(self, message: str) -> None:
        while self.inflight:
            self.inflight.popleft().finish(_sandbox_error(message))
        others = any(s.container_id for s in self.pool.slots if s is not self)
        own = self.pool.queue.drain(self.index)
        if others:  # this container's trees run elsewhere meanwhile (their states are gone anyway)
            for job in own:
                job.slot = None
            self.pool.queue.put_front([j for j in own if j.reply])
        else:
            for job in own + self.pool.queue.drain():
                job.finish(_sandbox_error(message))

    def _container_failed(self, reason: str) -> None:
        pool = self.pool
        pool.stats["replaced"] += 1
        inflight = list(self.inflight)
        self.inflight.clear()
        self.discard()
        if inflight:
            head, rest = inflight[0], inflight[1:]
            head.finish(_sandbox_error(f"container replaced: {reason}", time.monotonic() - self.head_since))
            for job in rest:  # innocent: never started; run them elsewhere
                job.attempts += 1
            retry = [j for j in rest if j.attempts <= 3]
            for job in rest:
                if job.attempts > 3:
                    job.finish(_sandbox_error(f"container replaced repeatedly: {reason}"))
            pool.queue.put_front(retry)

    def _drive(self) -> None:
        pool = self.pool
        depth = max(1, int(pool.config.pipeline_depth))
        while not pool._closing:
            # keep the pipeline full
            while len(self.inflight) < depth:
                job = pool.queue.get(timeout=None if self.inflight else 0.2, slot=self.index)
                if job is None:
                    break
                job.id = self._new_id()
                req = {"id": job.id, "chunks": job.chunks, "timeout": job.timeout}
                if job.extra:
                    req.update(job.extra)
                self._send(req)
                if not job.reply:  # a release: nothing comes back
                    job.finish({})
                    continue
                if not self.inflight:
                    self.head_since = time.monotonic()
                self.inflight.append(job)
            if not self.inflight:
                continue
            head = self.inflight[0]
            deadline = self.head_since + head.timeout + pool.config.grace_s
            msg = self._take_frame()
            if msg is None:
                # short polls so that new work joins the pipeline promptly
                self._recv_some(deadline, poll=0.05 if len(self.inflight) < depth else None)
                continue
            if msg.get("id") != head.id:
                raise _ContainerDead("the worker answered out of order")
            self.inflight.popleft()
            self.head_since = time.monotonic()
            if msg.get("pong"):
                self.info = msg
                head.finish(msg)
                continue
            res = _result_from_frame(msg)
            head.finish(res)
            pool.stats["executed"] += 1
            if head.extra and "node" in head.extra:
                pool.stats["state_reused" if res.reused_state else "state_replayed"] += 1


# ------------------------------------------------------------------ pool

_live_pools: "weakref.WeakSet[SandboxPool]" = weakref.WeakSet()


def _close_all_pools() -> None:
    for pool in list(_live_pools):
        try:
            pool.close()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_close_all_pools)


class SandboxPool:
    """N warm sandbox containers; ``run`` executes programs across them, results in order.

    Use as a context manager (or call ``close``). ``run`` and ``run_steps`` are
    thread-safe. Starting the pool raises :class:`SandboxUnavailable` when the
    engine or the image cannot be used.
    """

    def __init__(self, size: int | None = None, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.size = max(1, int(size or os.cpu_count() or 1))
        self.pool_id = uuid.uuid4().hex[:12]
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{_process_start_time(os.getpid())}"
        self.max_frame = 4 * int(self.config.max_output_bytes) * 4 + (1 << 20)
        self.stats = collections.Counter()
        self.queue = _Queue()
        self._closing = False
        self._closed = False
        self._lock = threading.Lock()
        self._containers: set[str] = set()
        self._removers: list[threading.Thread] = []
        self._tree_slot: dict = {}   # search tree key -> index of the container that holds its states

        self.client = engine.connect()
        engine.require_image(self.client, self.config.image)
        self.stats["leftovers_removed"] = remove_leftovers(self.client)
        _live_pools.add(self)
        self.slots = [_Slot(self, i) for i in range(self.size)]
        try:
            for slot in self.slots:
                slot.start()
            for slot in self.slots:
                while not slot.ready.wait(0.1):  # short slices: Ctrl-C is never held up
                    pass
            errors = [s.start_error for s in self.slots if s.start_error is not None]
            if errors:
                err = errors[0]
                if isinstance(err, SandboxUnavailable):
                    raise err
                raise SandboxUnavailable(
                    f"sandbox containers from image {self.config.image!r} did not start "
                    f"({type(err).__name__}: {engine._one_line(err)}); check it with: rstar sandbox check"
                )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ public
    def run(self, programs: list[str], timeout_s: float | None = None) -> list[ExecResult]:
        """Execute each program in a fresh process; one ExecResult per program, in order."""
        return self._run_chunks([[p] for p in programs], timeout_s)

    @property
    def incremental(self) -> bool:
        """Node states are in use: configured so, and every worker supports it."""
        return bool(self.config.incremental) and all(
            (getattr(s, "info", None) or {}).get("incremental", False) for s in self.slots)

    def run_steps(self, paths: list[list[str]], timeout_s: float | None = None,
                  nodes: list[tuple] | None = None) -> list[StepResult]:
        """For each search path (the code of its steps), run the steps in order in one
        process and judge the last step: valid if the whole program ran; output is what
        the last step printed (rStar-Math step semantics).

        ``nodes[i] = (tree, node, parent)`` (incremental mode): ``tree`` a hashable key of
        a search tree, ``node`` an int unique within it, ``parent`` the node whose state
        is the interpreter after ``paths[i][:-1]`` (None: nothing to reuse). When that
        state is alive, only the last step runs, in a fork of it; otherwise the whole path
        runs. Either way the result is the one re-running the path gives; a step that
        runs OK may be kept as ``(tree, node)``'s state until ``release``. All programs
        of one tree go to one container."""
        if nodes is not None and len(nodes) != len(paths):
            raise ValueError(f"run_steps: {len(paths)} paths but {len(nodes)} nodes")
        results = self._run_chunks([list(p) for p in paths], timeout_s,
                                   nodes=nodes if nodes is not None and self.incremental else None)
        out = []
        for path, res in zip(paths, results):
            if len(path) <= 1:
                output = res.stdout
            else:
                output = res.last_output if res.last_output is not None else ""
            out.append(StepResult(valid=res.ok, status=res.status, output=output,
                                  error=None if res.ok else (res.error_line or res.status), exec=res))
        return out

    def release(self, tree, nodes=None) -> None:
        """Drop the states of these nodes of ``tree`` (all of the tree's when ``nodes`` is
        None). Cheap (the container does it between programs) and safe for unknown keys."""
        if self._closing or not self.config.incremental:
            return
        with self._lock:
            slot = self._tree_slot.get(tree) if nodes is not None else self._tree_slot.pop(tree, None)
        if slot is None:
            return
        extra = {"op": "release", "tree": str(tree),
                 "nodes": None if nodes is None else [int(n) for n in nodes]}
        self.queue.put_many([_Job([], 0.0, extra=extra, slot=slot, reply=False)])

    def state_info(self) -> list[dict]:
        """Per container: what its worker reports (states, their pids, tasks, memory, counters)."""
        jobs = [_Job([], 10.0, extra={"ping": True}, slot=i) for i in range(len(self.slots))]
        self.queue.put_many(jobs)
        for job in jobs:
            job.wait()
        return [j.result if isinstance(j.result, dict) else {} for j in jobs]

    def _slot_for(self, tree) -> int:
        with self._lock:
            idx = self._tree_slot.get(tree)
            if idx is None:
                load = collections.Counter(self._tree_slot.values())
                idx = min(range(len(self.slots)), key=lambda i: (load[i], i))
                self._tree_slot[tree] = idx
            return idx

    def close(self, wait_s: float = 15.0) -> None:
        """Stop every container of this pool; safe to call more than once. Waits at most
        ``wait_s`` for the engine to remove them (a container left behind exits anyway once
        this process is gone: its worker reads end-of-input, and it is auto-removed)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._closing = True
        self.queue.close()
        for job in self.queue.drain_all():
            job.finish(_sandbox_error("the sandbox pool was closed"))
        for slot in getattr(self, "slots", []):
            for job in list(slot.inflight):
                job.finish(_sandbox_error("the sandbox pool was closed"))
        deadline = time.monotonic() + max(wait_s, 0.5)
        for slot in getattr(self, "slots", []):
            if slot.is_alive():
                slot.join(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
        # whatever is still tracked (thread stuck, never started): remove directly
        with self._lock:
            left = list(self._containers)
        for cid in left:
            self._remove_async(cid, self.client.api)
        for t in list(self._removers):
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        _live_pools.discard(self)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; atexit and __exit__ are the real paths
        try:
            if not self._closed and hasattr(self, "slots"):
                self.close()
        except Exception:  # noqa: BLE001
            pass

    @property
    def container_ids(self) -> list[str]:
        return [s.container_id for s in self.slots if s.container_id]

    # ------------------------------------------------------------ internals
    def _run_chunks(self, programs: list[list[str]], timeout_s: float | None,
                    nodes: list[tuple] | None = None) -> list[ExecResult]:
        if self._closing:
            raise SandboxUnavailable("the sandbox pool is closed")
        timeout = float(timeout_s if timeout_s is not None else self.config.timeout_s)
        unique: dict[tuple, _Job] = {}
        order: list[_Job] = []
        for i, chunks in enumerate(programs):
            if isinstance(chunks, str):
                chunks = [chunks]
            tree = nodes[i][0] if nodes is not None else None
            key = (tree, tuple(chunks))
            job = unique.get(key)
            if job is None:
                if nodes is not None and chunks:
                    _, node, parent = nodes[i]
                    extra = {"tree": str(tree), "node": int(node),
                             "parent": None if parent is None else int(parent)}
                    job = _Job(list(chunks), timeout, extra=extra, slot=self._slot_for(tree))
                else:
                    job = _Job(list(chunks), timeout)
                unique[key] = job
            order.append(job)
        self.stats["deduplicated"] += len(order) - len(unique)
        try:
            # Ctrl-C (KeyboardInterrupt) may land anywhere from here on: each wait is in
            # short slices, so even a SIGINT that one of the pool's threads took (the main
            # thread then sleeps on, not woken) is raised here within 0.1 s.
            self.queue.put_many(unique.values())
            for job in unique.values():
                job.wait()
        except BaseException:  # Ctrl-C while waiting: leave nothing behind, and be quick about it
            for job in unique.values():
                job.finish(_sandbox_error("interrupted"))
            self.close(wait_s=2.0)
            raise
        return [job.result for job in order]

    def _track(self, cid: str) -> None:
        with self._lock:
            self._containers.add(cid)

    def _remove_async(self, cid: str, api) -> None:
        def remove() -> None:
            try:
                api.remove_container(cid, force=True)
            except Exception:  # noqa: BLE001 - gone already (auto-remove) or being removed
                pass
            with self._lock:
                self._containers.discard(cid)

        t = threading.Thread(target=remove, name="rstar-sandbox-remove", daemon=True)
        t.start()
        with self._lock:
            self._removers = [r for r in self._removers if r.is_alive()] + [t]
