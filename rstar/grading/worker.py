"""The guarded worker processes that run sympy comparisons.

Parsing model output and asking sympy whether two answers are equal can take
unbounded time (``9^9^9^9``) or memory, inside C calls no Python signal
interrupts, and the search calls the grader from many threads (``signal.alarm``
works only in the main thread).  So every sympy comparison runs in a small,
reusable worker *process* speaking JSON lines on its stdin/stdout:

* request ``{"pred": str, "gold": str, "timeout": float, "reference": bool}``
  (``reference``: ``gold`` is a dataset answer, not another prediction);
* reply ``{"equal": true | false | null}`` (null: cannot decide).

The worker stops itself at ``timeout`` with an interval timer where Python can
be interrupted (and replies null); where it cannot, the host kills it after
``timeout + KILL_GRACE`` seconds and starts another on the next request.  The
worker's address space is capped (``MEMORY_LIMIT``) so a memory bomb fails
inside it.  Up to ``MAX_WORKERS`` comparisons run in parallel.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time

__all__ = ["WorkerPool", "main", "MAX_WORKERS", "KILL_GRACE"]

MAX_WORKERS = 2
KILL_GRACE = 0.5  # seconds past the timeout before the host kills a worker
START_TIMEOUT = 120.0  # importing sympy + math-verify on a loaded 2-core box
MEMORY_LIMIT = 2 << 30  # bytes of address space for a worker

# The parent of the rstar package goes first on the worker's sys.path, so the
# worker imports the same rstar as the host (source tree or installed).
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from rstar.grading.worker import main; main()"


class _Worker:
    """One worker process."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _BOOT, _PKG_PARENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._buf = b""
        line = self._readline(START_TIMEOUT)
        try:
            ok = line is not None and json.loads(line).get("ready") is True
        except ValueError:
            ok = False
        if not ok:
            self.kill()
            raise RuntimeError("grader worker did not start")

    def _readline(self, timeout: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # the worker died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def ask(self, pred: str, gold: str, timeout: float, reference: bool = True) -> bool | None:
        """True/False, or None: undecided, timed out or died (then it is killed)."""
        try:
            msg = json.dumps({"pred": pred, "gold": gold, "timeout": timeout, "reference": reference}) + "\n"
            self.proc.stdin.write(msg.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.kill()
            return None
        line = self._readline(timeout + KILL_GRACE)
        if line is None:
            self.kill()
            return None
        try:
            res = json.loads(line)["equal"]
        except (ValueError, KeyError, TypeError):
            self.kill()
            return None
        return res if isinstance(res, bool) else None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class WorkerPool:
    """Up to ``max_workers`` reusable worker processes shared by all threads."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()
        self.asks = 0  # comparisons sent to a worker (benchmarks read it)
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        """A forked child must not share its parent's workers (their pipes are the parent's)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._idle = []
            self._count = 0
            self._cond = threading.Condition()

    def _acquire(self) -> _Worker:
        self._after_fork()
        with self._cond:
            while True:
                while self._idle:
                    w = self._idle.pop()
                    if w.alive:
                        return w
                    self._count -= 1
                if self._count < self.max_workers:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return _Worker()
        except Exception:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, w: _Worker) -> None:
        with self._cond:
            if w.alive:
                self._idle.append(w)
            else:
                self._count -= 1
            self._cond.notify()

    def ask(self, pred: str, gold: str, timeout: float, reference: bool = True) -> bool | None:
        """The worker's verdict; None when no worker could start."""
        self.asks += 1
        try:
            w = self._acquire()
        except Exception:
            return None
        try:
            return w.ask(pred, gold, timeout, reference)
        finally:
            self._release(w)

    def shutdown(self) -> None:
        if self._pid != os.getpid():
            return  # the parent's workers are the parent's to stop
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for w in idle:
            w.kill()


# ----------------------------------------------------------------------------
# the worker process
# ----------------------------------------------------------------------------


class _Deadline(BaseException):
    """Raised by the interval timer inside the worker."""


def main() -> None:  # pragma: no cover - runs in the child process
    import logging
    import resource
    import signal
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ValueError, OSError):
        pass
    sys.setrecursionlimit(5000)

    def on_alarm(signum, frame):
        raise _Deadline()

    signal.signal(signal.SIGALRM, on_alarm)
    # the protocol owns the real stdout; anything a library prints goes to stderr (DEVNULL)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from rstar.grading import compare

    compare.read_latex("1")  # import math-verify and its parser before saying ready
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        res = None
        try:
            req = json.loads(line)
            signal.setitimer(signal.ITIMER_REAL, max(0.05, float(req.get("timeout", 2.0)) * 0.9))
            try:
                res = compare.judge(str(req["pred"]), str(req["gold"]), bool(req.get("reference", True)))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Deadline:
            res = None
        except MemoryError:
            res = None
        except Exception:
            res = None
        out.write(json.dumps({"equal": res}) + "\n")
        out.flush()
