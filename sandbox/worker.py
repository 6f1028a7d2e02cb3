"""rstar sandbox worker: a fork server that runs untrusted Python programs.

Runs as the only long-lived process (PID 1) of a hardened container. It
imports sympy and numpy once, then serves requests forever:

    host -> worker   frame(request)     request = {"id", "chunks": [code, ...], "timeout"}
    worker -> host   frame(result)      exactly one per request, in order

A frame is ``b"RSW1" + 4-byte big-endian length + UTF-8 JSON``. The channel
is the container's stdin/stdout, which the worker moves to private file
descriptors at start-up; every child closes them before running user code, and
the worker is non-dumpable, so no program can reach them (not via
/proc/1/fd, ptrace or /proc/1/mem). Signals from inside the container cannot
kill PID 1 unless it installs a handler, and it installs none (it ignores
SIGINT and friends).

Two tiers. At start the worker also spawns a slim zygote: a fresh interpreter
(this file with ``--zygote``) without sympy and numpy, non-dumpable, talking to
the worker over pipes and sharing its output memfds. A program whose text does
not mention a heavy library (``HEAVY_RE``) is forked from the zygote (~0.5 ms
instead of ~3 ms for the 66 MB heavy process); the rest from the worker. Both
run the same ``_child`` with the same limits (the same absolute address-space
limit), so results do not depend on the tier; a slim program that imports sympy
anyway only pays for the import. A program can kill or stop the zygote (same
uid): the worker then adopts the program (orphans are re-parented to PID 1) or
takes the status the zygote recorded in its control memfd, reruns the program
in the heavy tier if it never started, and respawns the zygote once nothing of
the program is alive.

For each request the worker (or the zygote) forks one child, which: gets a new process
group; raises its own OOM score so the kernel kills it rather than the
worker; sets rlimits (CPU seconds, address space, file size, process count,
no core dumps, open files); points fd 0 at /dev/null and fds 1/2 at fresh
memfds; executes the chunks one after another in one namespace, recording
how much stdout each produced; and reports the outcome on fd 3. The worker
waits with the wall-clock timeout, kills what is left (every other process of
the container but the zygote, since anything else alive belongs to the
finished program; the /proc scan is skipped when the pids cgroup counts no
extra task), removes whatever the program left in /tmp, and answers.

Limits come from the command line (``--cpu-seconds`` ...), see ``main``.
"""

from __future__ import annotations

import os

# Single-threaded numerical libraries: threads count against the pids limit
# and a forked child must not inherit a half-initialised thread pool.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import builtins  # noqa: E402
import ctypes  # noqa: E402
import fcntl  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

# What programs commonly import; importing here makes `import x` free in a child.
import cmath  # noqa: E402,F401
import collections  # noqa: E402,F401
import decimal  # noqa: E402,F401
import fractions  # noqa: E402,F401
import functools  # noqa: E402,F401
import itertools  # noqa: E402,F401
import math  # noqa: E402,F401
import re  # noqa: E402,F401
import statistics  # noqa: E402,F401

# The slim zygote (``--zygote``, see ``Zygote``) must stay small: forking a process
# with sympy and numpy loaded costs ~3 ms, a bare interpreter ~0.5 ms.
ZYGOTE_MODE = __name__ == "__main__" and "--zygote" in sys.argv[1:]
numpy = sympy = None
if not ZYGOTE_MODE:
    try:
        import numpy  # noqa: F401
    except ImportError:  # the worker still works, programs just import slower / fail
        numpy = None
    try:
        import sympy
    except ImportError:
        sympy = None

PROTOCOL = 1
MAGIC = b"RSW1"
HEADER = struct.Struct(">4sI")
MAX_REQUEST = 64 * 1024 * 1024
REPORT_FD = 3
REPORT_CAP = 64 * 1024

# exit codes of the child wrapper (the program's own os._exit codes may collide;
# the report on fd 3 is what counts, the code is the fallback)
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_MEMORY = 3
EXIT_INTERNAL = 70

PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)
if ZYGOTE_MODE:  # nobody may ptrace the zygote or open its /proc files, from the start
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def _warm_up() -> None:
    """Run what first use of sympy would import lazily, once, in the worker."""
    if sympy is not None:
        x = sympy.Symbol("x")
        sympy.solve(x**2 - 3 * x + 2, x)
        sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
        sympy.Rational(3, 4) + sympy.sqrt(2)
        sympy.factorint(360)
        sympy.latex(x / 2)
    if numpy is not None:
        numpy.linalg.solve(numpy.eye(2), numpy.ones(2))


class Limits:
    def __init__(self, args: argparse.Namespace) -> None:
        self.cpu_seconds = max(1, int(args.cpu_seconds))
        self.address_space = int(args.program_memory_mb) * 1024 * 1024
        self.file_size = int(args.file_size_mb) * 1024 * 1024
        self.nproc = int(args.nproc)
        self.nofile = int(args.nofile)
        self.max_output = int(args.max_output_bytes)
        self.timeout = float(args.timeout)
        self.contained = bool(args.contained)


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


# ---------------------------------------------------------------- the child


def _child(chunks: list[str], out_fd: int, err_fd: int, rep_fd: int, limits: Limits, as_limit: int,
           streams: tuple) -> None:
    """Runs in the forked child; never returns (always os._exit)."""
    code = EXIT_INTERNAL
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGALRM, signal.SIGCHLD, signal.SIGXCPU):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        # The worker is non-dumpable (so nobody can ptrace it or open /proc/1/fd);
        # the child must be dumpable for a moment to write its own oom_score_adj.
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        try:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, b"1000")
            os.close(fd)
        except OSError:
            pass
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.dup2(rep_fd, REPORT_FD)
        os.closerange(REPORT_FD + 1, 1 << 16)  # the worker's private channel fds go here
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
        if limits.nproc > 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
        if as_limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        # Stream objects and random state were prepared by the worker while no child
        # was alive: allocating here would copy-on-write pages of the worker's heap.
        sys.stdin, sys.stdout, sys.stderr = streams
        sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin
        gc.enable()
    except BaseException:  # setup failed: report through the exit code only
        os._exit(EXIT_INTERNAL)

    offsets: list[int] = []
    report: dict = {"offsets": offsets}
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    code = EXIT_OK
    try:
        for i, chunk in enumerate(chunks):
            report["step"] = i
            exec(compile(chunk, f"<step {i + 1}>" if len(chunks) > 1 else "<program>", "exec"), namespace)
            sys.stdout.flush()
            offsets.append(os.lseek(1, 0, os.SEEK_CUR))
        report.pop("step", None)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            code = EXIT_ERROR
            _describe(report, exc)
        else:
            report.pop("step", None)
    except MemoryError as exc:
        code = EXIT_MEMORY
        report["memory"] = True
        try:
            _describe(report, exc)
        except BaseException:
            pass
    except BaseException as exc:  # noqa: BLE001 - the program's own error
        code = EXIT_ERROR
        try:
            _describe(report, exc)
        except BaseException:
            report["error_type"] = type(exc).__name__
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    try:
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        os.write(REPORT_FD, json.dumps(report).encode("utf-8", "replace")[:REPORT_CAP])
    except BaseException:
        pass
    os._exit(code)


def _describe(report: dict, exc: BaseException) -> None:
    report["error_type"] = type(exc).__name__
    report["error_message"] = str(exc)[:2000]
    lines = traceback.format_exception_only(type(exc), exc)
    report["error_line"] = lines[-1].strip()[:2000] if lines else type(exc).__name__
    # innermost frame that belongs to the program, as "<step 2>, line 3"
    tb = exc.__traceback__
    where = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<"):
            where = f"{tb.tb_frame.f_code.co_filename} line {tb.tb_lineno}"
        tb = tb.tb_next
    if where:
        report["error_where"] = where


# --------------------------------------------------------------- the worker


# Programs whose text mentions none of these run in the slim tier (forked from the
# zygote, ~0.5 ms); the rest are forked from this process, where sympy and numpy
# are loaded (~3 ms). Conservative: anything that may import a heavy library, or
# import dynamically, goes to the heavy tier. A slim program that imports sympy
# anyway still works, it only pays for the import.
HEAVY_RE = re.compile(r"sympy|numpy|scipy|mpmath|pandas|matplotlib|importlib|__import__|\bnp\b|\bsp\b")
# in the zygote: requests in, statuses out, the stdout/stderr/report memfds, and a
# control memfd where it records the pid of the program it forked
ZYGOTE_FDS = (3, 4, 5, 6, 7, 8)
INT = struct.Struct(">i")
CTL = struct.Struct(">iii")  # the zygote's control memfd: program pid, status known, wait status
FORK_FAILED = -1
_TIMEOUT = object()


def _make_streams() -> tuple:
    """Fresh stdio objects for the next child, made before forking (cheap here; in the
    child every allocation copies pages of the shared heap)."""
    return (
        io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8"),
        io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False), 65536),
                         encoding="utf-8", errors="backslashreplace"),
        io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False), 8192),
                         encoding="utf-8", errors="backslashreplace"),
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        data = os.read(fd, n - len(buf))
        if not data:
            return None
        buf += data
    return buf


class Worker:
    def __init__(self, limits: Limits, in_fd: int, out_fd: int, argv: list[str] | None = None,
                 zygote: bool = True) -> None:
        self.limits = limits
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.buf = bytearray()
        # Whole-container cleanup (kill every other process, empty /tmp) only
        # where this is the container's init, never as root, and only when asked:
        # run on a host by hand, the worker must not touch anything but its own.
        self.contained = limits.contained and os.getpid() == 1 and os.getuid() != 0
        # a program's address space on top of what the worker already maps (the same
        # absolute limit in both tiers, so that a slim program may still import sympy)
        self.base_vm = _vm_size()
        self.as_limit = self.base_vm + limits.address_space if limits.address_space > 0 else 0
        self.oom_kills = _oom_kill_count() or 0
        # captured output: three memfds reused for every program (truncated before each)
        self.mfds = tuple(os.memfd_create(name, os.MFD_CLOEXEC) for name in ("stdout", "stderr", "report"))
        self.ctl_fd = os.memfd_create("zygote-ctl", os.MFD_CLOEXEC)
        self.argv = list(argv or [])
        self.zygote_wanted = zygote
        self.zygote: tuple[int, int, int] | None = None  # (pid, request fd, status fd)
        self.zygote_failures = 0
        self.zygote_starts = 0
        self.pids_current = "/sys/fs/cgroup/pids.current"
        if not os.path.exists(self.pids_current):
            self.pids_current = "/sys/fs/cgroup/pids/pids.current"  # cgroup v1
        self._start_zygote()
        tasks = self._tasks()
        # tasks in the container with no program around (this process's threads)
        self.base_tasks = None if tasks is None else tasks - (self.zygote is not None)
        self._prepare_next()

    def _oom_killed(self) -> bool:
        """Did the container's memory cgroup OOM-kill something since last asked?"""
        count = _oom_kill_count()
        if count is None:
            return True  # cannot tell: a SIGKILL we did not send is most likely the OOM killer
        seen, self.oom_kills = self.oom_kills, count
        return count > seen

    # framing ------------------------------------------------------------
    def read_frame(self) -> bytes | None:
        while True:
            if len(self.buf) >= HEADER.size:
                magic, n = HEADER.unpack_from(self.buf)
                if magic != MAGIC or n > MAX_REQUEST:
                    raise SystemExit("worker: bad frame from host")
                if len(self.buf) >= HEADER.size + n:
                    body = bytes(self.buf[HEADER.size:HEADER.size + n])
                    del self.buf[:HEADER.size + n]
                    return body
            data = os.read(self.in_fd, 1 << 20)
            if not data:
                return None
            self.buf += data

    def write_frame(self, obj: dict) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace")
        _write_all(self.out_fd, HEADER.pack(MAGIC, len(body)) + body)

    # the zygote -----------------------------------------------------------
    def _start_zygote(self) -> None:
        """Start the slim zygote (a fresh interpreter without sympy/numpy) and wait until
        it is ready and non-dumpable. Called only while no program is alive."""
        if not self.zygote_wanted or self.zygote_failures >= 3:
            return
        self.zygote_starts += 1
        req_rd, req_wr = os.pipe()
        st_rd, st_wr = os.pipe()
        # sources above any target, so that each dup2 in the child is a real one
        temps = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
                 for fd in (req_rd, st_wr) + self.mfds + (self.ctl_fd,)]
        os.close(req_rd)
        os.close(st_wr)
        pid = None
        try:
            argv = [sys.executable, "-I", os.path.abspath(__file__), "--zygote",
                    "--as-limit", str(self.as_limit)] + self.argv
            # Python's own small-object allocator: the malloc + huge pages setting that
            # suits the big heavy heap makes the small zygote's children slower
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONMALLOC", "GLIBC_TUNABLES")}
            pid = os.posix_spawn(sys.executable, argv, env,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, src, dst)
                                               for src, dst in zip(temps, ZYGOTE_FDS)])
            r, _, _ = select.select([st_rd], [], [], 30.0)
            if not r or os.read(st_rd, 1) != b"R":
                raise OSError("the zygote did not start")
        except OSError as exc:
            print(f"worker: slim zygote unavailable: {exc}", file=sys.stderr, flush=True)
            self.zygote_failures += 1
            os.close(req_wr)
            os.close(st_rd)
            if pid is not None:
                self._kill_zygote(pid)
            return
        finally:
            for fd in temps:
                os.close(fd)
        self.zygote_failures = 0
        self.zygote = (pid, req_wr, st_rd)

    def _kill_zygote(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def _zygote_lost(self) -> None:
        """Kill (if needed), reap and forget the zygote; its children become ours."""
        if self.zygote is None:
            return
        pid, req_wr, st_rd = self.zygote
        self.zygote = None
        os.close(req_wr)
        os.close(st_rd)
        self._kill_zygote(pid)

    def _zygote_status(self, deadline: float):
        """The wait status the zygote reports; None if it died; _TIMEOUT."""
        st_rd = self.zygote[2]
        wait = deadline - time.perf_counter()
        if wait <= 0:
            return _TIMEOUT
        r, _, _ = select.select([st_rd], [], [], wait)
        if not r:
            return _TIMEOUT
        data = _read_exact(st_rd, INT.size)  # written in one piece: never partial
        return None if data is None else INT.unpack(data)[0]

    # one program ----------------------------------------------------------
    def run(self, req: dict, body: bytes | None = None) -> dict:
        chunks = req.get("chunks")
        if chunks is None:
            chunks = [req.get("code", "")]
        if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
            raise ValueError("chunks must be a list of strings")
        timeout = float(req.get("timeout") or self.limits.timeout)
        for fd in self.mfds:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        outcome = None
        if self.zygote is not None and not any(HEAVY_RE.search(c) for c in chunks):
            if body is None or req.get("chunks") is None:
                body = json.dumps({"chunks": chunks}).encode()
            outcome = self._run_slim(body, timeout)
        if outcome is None:  # heavy tier, or the zygote failed before the program ran
            outcome = self._run_heavy(chunks, timeout)
        pid, status, timed_out, duration = outcome
        self._cleanup(pid)
        self._prepare_next()
        return self._result(req, chunks, status, timed_out, duration)

    def _run_heavy(self, chunks: list[str], timeout: float) -> tuple:
        out_fd, err_fd, rep_fd = self.mfds
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(chunks, out_fd, err_fd, rep_fd, self.limits, self.as_limit, self.streams)
            os._exit(EXIT_INTERNAL)  # not reached
        timed_out = False
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
        if pidfd is not None:
            try:
                r, _, _ = select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
            if not r:
                timed_out = True
                self._kill_program(pid)
            _, status = os.waitpid(pid, 0)
        else:  # very old kernel: poll
            deadline = t0 + timeout
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.perf_counter() > deadline:
                    timed_out = True
                    self._kill_program(pid)
                    _, status = os.waitpid(pid, 0)
                    break
                time.sleep(0.0005)
        return pid, status, timed_out, time.perf_counter() - t0

    def _run_slim(self, body: bytes, timeout: float) -> tuple | None:
        """Run in a child of the zygote; None when the program did not run (heavy reruns it)."""
        zpid, req_wr, _ = self.zygote
        os.pwrite(self.ctl_fd, bytes(CTL.size), 0)
        t0 = time.perf_counter()
        try:
            _write_all(req_wr, INT.pack(len(body)) + body)
        except OSError:
            self._zygote_lost()
            return None
        deadline = t0 + timeout
        status = self._zygote_status(deadline)
        timed_out = False
        pid = INT.unpack(os.pread(self.ctl_fd, INT.size, 0))[0]  # recorded by the zygote after fork
        if status is _TIMEOUT:
            timed_out = True
            if pid > 0:
                self._kill_program(pid)
            try:
                os.kill(zpid, signal.SIGCONT)  # a program may have stopped it
            except OSError:
                pass
            status = self._zygote_status(time.perf_counter() + 2.0)
        if status == FORK_FAILED:
            return None
        if status is None or status is _TIMEOUT:
            # The zygote died (or hangs) while the program ran, typically because the
            # program killed it. Once the zygote is reaped, the program is our child.
            self._zygote_lost()
            if pid <= 0:
                return None  # it never recorded a fork: run the program in the heavy tier
            status, late = self._adopt(pid, deadline)
            timed_out = timed_out or late
            if status is None:  # the zygote reaped it before dying: it recorded the status
                _, known, recorded = CTL.unpack(os.pread(self.ctl_fd, CTL.size, 0))
                status = recorded if known else None
            if status is None:
                raise RuntimeError("the slim zygote died and took the program's exit status with it")
        return pid, status, timed_out, time.perf_counter() - t0

    def _adopt(self, pid: int, deadline: float) -> tuple[int | None, bool]:
        timed_out = False
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None, timed_out
            if done:
                return status, timed_out
            if not timed_out and time.perf_counter() > deadline:
                timed_out = True
                self._kill_program(pid)
            time.sleep(0.001)

    def _prepare_next(self) -> None:
        """Fresh stdio objects and random state for the next heavy child."""
        self.streams = _make_streams()
        random.seed()
        if numpy is not None:
            numpy.random.seed(int.from_bytes(os.urandom(4), "little"))

    def _kill_program(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    def _tasks(self) -> int | None:
        """Tasks in the container's pids cgroup, if it can be read."""
        try:
            with open(self.pids_current, "rb", buffering=0) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def _reap(self) -> None:
        """Reap whatever children have exited (leftovers re-parented to us, the zygote)."""
        while True:
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not done:
                return
            if self.zygote is not None and done == self.zygote[0]:
                pid, req_wr, st_rd = self.zygote
                self.zygote = None
                os.close(req_wr)
                os.close(st_rd)

    def _cleanup(self, pid: int) -> None:
        """Leave nothing of the finished program behind: processes, /tmp files."""
        try:
            os.killpg(pid, signal.SIGKILL)  # its group, if anything is left in it
        except OSError:
            pass
        if not self.contained:  # not init (local testing): reap only what is ours
            self._reap()
            return
        if self.zygote is not None:
            try:
                os.kill(self.zygote[0], signal.SIGCONT)  # a program may have stopped it
            except OSError:
                pass
        self._reap()
        tasks = self._tasks()
        if tasks is None or self.base_tasks is None or tasks != self.base_tasks + (self.zygote is not None):
            self._kill_leftovers()
        if self.zygote is None:
            self._start_zygote()  # nothing of the program is alive now
        try:
            if os.listdir("/tmp"):
                _clean_dir("/tmp")
        except OSError:
            pass

    def _kill_leftovers(self) -> None:
        """Everything in this PID namespace besides us and the zygote is a leftover of
        the program (orphans are re-parented to PID 1), including processes that left
        its group with setsid()."""
        me = os.getpid()
        for attempt in range(10000):
            self._reap()
            if attempt == 500 and self.zygote is not None:
                self._zygote_lost()  # something keeps coming back: take the zygote down too
            keep = (me, self.zygote[0]) if self.zygote is not None else (me,)
            others = [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if p not in keep]
            if not others:
                return
            for p in others:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.0002)

    def _result(self, req: dict, chunks: list[str], status: int, timed_out: bool, duration: float) -> dict:
        out_fd, err_fd, rep_fd = self.mfds
        cap = self.limits.max_output
        out_size = os.fstat(out_fd).st_size
        err_size = os.fstat(err_fd).st_size
        stdout_b = os.pread(out_fd, min(out_size, cap), 0)
        stderr_b = os.pread(err_fd, min(err_size, cap), 0)
        report: dict = {}
        try:
            raw = os.pread(rep_fd, REPORT_CAP, 0)
            if raw:
                report = json.loads(raw.decode("utf-8", "replace"))
                if not isinstance(report, dict):
                    report = {}
        except (ValueError, OSError):
            report = {}
        res = {
            "id": req.get("id"),
            "stdout": stdout_b.decode("utf-8", "replace"),
            "stderr": stderr_b.decode("utf-8", "replace"),
            "stdout_bytes": out_size,
            "duration_s": duration,
            "error_type": None,
            "error_message": None,
            "error_line": None,
        }
        offsets = report.get("offsets")
        if isinstance(offsets, list) and all(isinstance(o, int) for o in offsets):
            res["offsets"] = offsets
        if isinstance(report.get("step"), int):
            res["failed_step"] = report["step"]
        for key in ("error_type", "error_message", "error_line", "error_where"):
            if isinstance(report.get(key), str):
                res[key] = report[key]

        if len(chunks) > 1:
            # what the last chunk printed: from the end of the one before it
            offs = res.get("offsets") or []
            if len(offs) >= len(chunks) - 1:
                start = min(max(offs[len(chunks) - 2], 0), len(stdout_b))
                res["last_output"] = stdout_b[start:].decode("utf-8", "replace")
            else:
                res["last_output"] = ""  # an earlier chunk failed; the last one never ran
        res.pop("offsets", None)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if out_size > cap or err_size > cap:
            res["status"] = "output_limit"
            res["error_type"] = "OutputLimitExceeded"
            res["error_message"] = f"output exceeded {cap} bytes"
            res["error_line"] = None
        elif timed_out or sig == signal.SIGXCPU:
            res["status"] = "timeout"
            res["error_type"] = "Timeout"
            res["error_message"] = (f"wall-clock limit of {float(req.get('timeout') or self.limits.timeout):g} s exceeded"
                                    if timed_out else f"CPU limit of {self.limits.cpu_seconds} s exceeded")
            res["error_line"] = None
        elif code == EXIT_MEMORY or report.get("memory") or (sig == signal.SIGKILL and self._oom_killed()):
            # SIGKILL we did not send, counted by the memory cgroup: its OOM killer
            res["status"] = "memory"
            res["error_type"] = res["error_type"] or "MemoryError"
            res["error_message"] = res["error_message"] or "memory limit exceeded"
        elif code == EXIT_OK and "error_type" not in report:
            res["status"] = "ok"
        else:
            res["status"] = "error"
            if not res["error_type"]:
                if sig is not None:
                    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
                    res["error_type"] = "Signal"
                    res["error_message"] = f"killed by {name}"
                else:
                    res["error_type"] = "SystemExit"
                    res["error_message"] = f"exit status {code}"
        if res["status"] != "ok" and not res["error_line"]:
            res["error_line"] = f"{res['error_type']}: {res['error_message']}"
        return res

    def serve(self) -> None:
        while True:
            body = self.read_frame()
            if body is None:
                return  # host went away: exit, and the container with us
            try:
                req = json.loads(body)
            except ValueError:
                raise SystemExit("worker: request is not JSON")
            if req.get("ping"):
                self.write_frame({"id": req.get("id"), "pong": True, "protocol": PROTOCOL,
                                  "pid": os.getpid(), "uid": os.getuid(),
                                  "python": sys.version.split()[0],
                                  "sympy": getattr(sympy, "__version__", None),
                                  "numpy": getattr(numpy, "__version__", None),
                                  "zygote": self.zygote[0] if self.zygote is not None else None,
                                  "zygote_starts": self.zygote_starts})
                continue
            try:
                res = self.run(req, body)
            except Exception as exc:  # noqa: BLE001 - the worker's own failure, keep serving
                res = {"id": req.get("id"), "status": "sandbox_error", "stdout": "", "stderr": "",
                       "error_type": type(exc).__name__, "error_message": str(exc),
                       "error_line": f"worker: {type(exc).__name__}: {exc}", "duration_s": 0.0}
            self.write_frame(res)
def _oom_kill_count() -> int | None:
    for path, key in (("/sys/fs/cgroup/memory.events", "oom_kill"),            # cgroup v2
                      ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill")):  # cgroup v1
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def _clean_dir(path: str) -> None:
    try:
        entries = os.listdir(path)
    except OSError:
        return
    for name in entries:
        _remove(os.path.join(path, name))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
        return
    except IsADirectoryError:
        pass
    except OSError:
        try:
            if not os.path.isdir(path) or os.path.islink(path):
                return
        except OSError:
            return
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    try:
        for name in os.listdir(path):
            _remove(os.path.join(path, name))
        os.rmdir(path)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=5.0, help="default wall-clock seconds per program")
    ap.add_argument("--cpu-seconds", type=float, default=5, help="RLIMIT_CPU per program")
    ap.add_argument("--program-memory-mb", type=int, default=256,
                    help="address space a program may add to the worker's (RLIMIT_AS); 0: no limit")
    ap.add_argument("--file-size-mb", type=int, default=16, help="RLIMIT_FSIZE (files and captured output)")
    ap.add_argument("--nproc", type=int, default=0, help="RLIMIT_NPROC (per uid, host-wide); 0: unset")
    ap.add_argument("--nofile", type=int, default=256, help="RLIMIT_NOFILE")
    ap.add_argument("--max-output-bytes", type=int, default=65536, help="captured stdout/stderr cap")
    ap.add_argument("--contained", action="store_true",
                    help="running as a container's PID 1: after each program kill all other "
                         "processes and empty /tmp (ignored unless PID 1 and not root)")
    ap.add_argument("--no-zygote", action="store_true",
                    help="fork every program from this process (no slim tier)")
    ap.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)  # internal: the slim tier
    ap.add_argument("--as-limit", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    limits = Limits(args)
    if args.zygote:
        zygote_main(limits, args.as_limit)
        return

    _warm_up()
    # The channel to the host moves to private fds; 0 and 1 become /dev/null.
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = sys.stderr
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTTIN,
                signal.SIGTTOU, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    gc.collect()
    gc.freeze()  # objects shared with every child stay untouched (no copy-on-write by the GC)
    gc.disable()  # the worker allocates little; children re-enable
    Worker(limits, in_fd, out_fd, argv=sys.argv[1:] if argv is None else list(argv),
           zygote=not args.no_zygote).serve()


def zygote_main(limits: Limits, as_limit: int) -> None:
    """The slim tier: a fresh interpreter (no sympy/numpy, small heap, cheap to fork)
    started by the worker with its pipes and memfds on ZYGOTE_FDS. For each request
    (4-byte length + the host's JSON request) it forks the program's child, records
    the child's pid in the control memfd, waits for it and writes its wait status."""
    req_fd, st_fd, out_fd, err_fd, rep_fd, ctl_fd = ZYGOTE_FDS
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTTIN,
                signal.SIGTTOU, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    sys.stdout = sys.stderr
    gc.collect()
    gc.freeze()
    gc.disable()
    streams = _make_streams()
    random.seed()
    os.write(st_fd, b"R")
    while True:
        head = _read_exact(req_fd, INT.size)
        if head is None:
            os._exit(0)  # the worker went away
        body = _read_exact(req_fd, INT.unpack(head)[0])
        if body is None:
            os._exit(0)
        chunks = json.loads(body)["chunks"]
        try:
            pid = os.fork()
        except OSError:
            os.write(st_fd, INT.pack(FORK_FAILED))
            continue
        if pid == 0:
            _child(chunks, out_fd, err_fd, rep_fd, limits, as_limit, streams)
            os._exit(EXIT_INTERNAL)  # not reached
        os.pwrite(ctl_fd, INT.pack(pid), 0)
        # Learn the status without reaping and record it where the worker finds it
        # should this process be killed before it can report (the program may kill
        # it: kill(-1) spares only the caller and PID 1), then reap and report.
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        if info.si_code == os.CLD_EXITED:
            status = (info.si_status & 0xFF) << 8
        else:  # killed or dumped
            status = (info.si_status & 0x7F) | (0x80 if info.si_code == os.CLD_DUMPED else 0)
        os.pwrite(ctl_fd, CTL.pack(pid, 1, status), 0)
        os.waitpid(pid, 0)
        os.write(st_fd, INT.pack(status))
        streams = _make_streams()
        random.seed()


if __name__ == "__main__":
    main()
