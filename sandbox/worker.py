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

Incremental mode (``--incremental``): a request may name its search-tree node
(``tree``, ``node``, ``parent``). A program that runs OK then stays alive as
that node's state, and the next step of a child node runs in a fork of it: only
the step's own code executes, with the state's variables, imports and caches
(see "node states" below). A state that is gone (evicted, killed, never made)
means the whole path runs instead, with the same result. Every program of an
incremental container runs under a seccomp filter that keeps it from
signalling, tracing or reading any process it did not fork (except its own
parent state), and is non-dumpable for good.

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
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
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
EXIT_SYSEXIT = -1  # internal: sys.exit(0) - ends the program OK (no state is kept)

PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
STATE_FD = 4                 # a node state's channel to the worker
STATE_MSG_MAX = 1 << 17      # largest request a state takes (bigger steps are re-run whole)
try:
    with open("/proc/sys/kernel/pid_max") as _f:
        PID_MAX = int(_f.read())
except (OSError, ValueError):
    PID_MAX = 4194304
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
        self.incremental = bool(getattr(args, "incremental", False))
        self.max_states = int(getattr(args, "max_states", 64))
        self.state_memory = int(getattr(args, "state_memory_mb", 128)) * 1024 * 1024


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


# ---------------------------------------------------------------- the child


def _child(chunks: list[str], out_fd: int, err_fd: int, rep_fd: int, limits: Limits, as_limit: int,
           streams: tuple, chan: int | None = None, guard: list[int] | None = None) -> None:
    """Runs in the forked child; never returns (always os._exit).

    With ``chan`` (incremental mode) the fd becomes the node-state channel (fd 4) and,
    if the program runs OK, the process stays alive as that node's state
    (``_become_state``). With ``guard`` (the pids to protect, incremental mode) the
    child is made non-dumpable for good and a seccomp filter confines its signals."""
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
        if chan is not None:
            os.dup2(chan, STATE_FD)
            os.closerange(STATE_FD + 1, 1 << 16)
        else:
            os.closerange(REPORT_FD + 1, 1 << 16)  # the worker's private channel fds go here
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
        if limits.nproc > 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
        if as_limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        if guard is not None:
            _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            _confine(guard, 0)  # its parent (worker, zygote) is protected like the rest
        # Stream objects and random state were prepared by the worker while no child
        # was alive: allocating here would copy-on-write pages of the worker's heap.
        sys.stdin, sys.stdout, sys.stderr = streams
        sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin
        gc.enable()
    except BaseException:  # setup failed: report through the exit code only
        os._exit(EXIT_INTERNAL)

    namespace = {"__name__": "__main__", "__builtins__": builtins}
    code = _execute(chunks, 0, len(chunks), namespace)
    if code == EXIT_OK and chan is not None:
        _become_state(namespace)
    os._exit(EXIT_OK if code == EXIT_SYSEXIT else code)


def _execute(chunks: list[str], first: int, total: int, namespace: dict) -> int:
    """Run chunks (steps ``first``... of a path of ``total``) in ``namespace``, write the
    report to fd 3; the exit code to use (EXIT_SYSEXIT: sys.exit(0), exit 0, keep no state)."""
    offsets: list[int] = []
    report: dict = {"offsets": offsets}
    code = EXIT_OK
    try:
        for i, chunk in enumerate(chunks, first):
            report["step"] = i
            exec(compile(chunk, f"<step {i + 1}>" if total > 1 else "<program>", "exec"), namespace)
            sys.stdout.flush()
            sys.stderr.flush()  # what a finished step wrote survives a later kill, in both modes
            offsets.append(os.lseek(1, 0, os.SEEK_CUR))
        report.pop("step", None)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            code = EXIT_ERROR
            _describe(report, exc)
        else:
            report.pop("step", None)
            code = EXIT_SYSEXIT
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
    return code


# ------------------------------------------------------------ node states
#
# Incremental mode: a program that ran OK stays alive, idle, as its node's state
# (the interpreter after the path so far). The worker asks a state to fork; the
# fork runs only the next step's code in a copy of that interpreter. A state holds
# only its own tree's output memfds and its channel (fd 4, a SOCK_SEQPACKET socket
# to the worker); it is non-dumpable and confined by the seccomp filter of every
# program on its path (``_confine``), so no program can ptrace, read or signal a
# state of another node or tree, or the worker. What runs in a state is the tree's
# own code, so whatever the tree's programs do to their interpreter only changes
# that tree's later results, exactly as it would when re-running the path.


def _set_name(name: bytes) -> None:
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def _become_state(namespace: dict) -> None:
    """Idle as a node state: serve fork / wait / reap requests from the worker."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        gc.freeze()  # what the path built is shared with every fork, untouched by their GC
        _set_name(b"rstar-state")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, STATE_FD)
        sock.send(b"K")
    except BaseException:
        os._exit(EXIT_INTERNAL)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, STATE_MSG_MAX, 1)
            if not msg:
                os._exit(0)  # the worker dropped this state
            req = json.loads(msg)
            op = req.get("op")
            if op == "fork":
                _sweep_children()
                # os.fork() reseeds the random module in the child (an at-fork hook): the
                # step must continue its path's generator, as it would in one process
                rstate = random.getstate()
                try:
                    pid = os.fork()
                except OSError:
                    pid = -1
                if pid == 0:
                    random.setstate(rstate)
                    sock.detach()
                    if fds:
                        os.dup2(fds[0], STATE_FD)
                        os.close(fds[0])
                    _state_child(namespace, req)
                for fd in fds:
                    os.close(fd)
                sock.send(json.dumps({"pid": pid}).encode())
            elif op == "wait":
                for fd in fds:
                    os.close(fd)
                try:
                    _, status = os.waitpid(int(req["pid"]), 0)
                except ChildProcessError:
                    status = None
                sock.send(json.dumps({"status": status}).encode())
            else:  # "reap": a child state was dropped
                for fd in fds:
                    os.close(fd)
                try:
                    os.waitpid(int(req.get("pid", -1)), 0)
                except (ChildProcessError, ValueError, TypeError):
                    pass
                _sweep_children()
        except SystemExit:
            raise
        except BaseException:  # noqa: BLE001 - a broken state just goes away
            os._exit(EXIT_INTERNAL)


def _sweep_children() -> None:
    while True:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not done:
            return


def _state_child(namespace: dict, req: dict) -> None:
    """A fork of a node state: run one step's code; never returns."""
    try:
        os.setpgid(0, 0)
        _set_name(b"python3")
        _confine(req.get("protected") or [], os.getppid())
    except BaseException:
        os._exit(EXIT_INTERNAL)
    step = int(req.get("step", 1))
    code = _execute([req.get("chunk", "")], step, step + 1, namespace)
    if code == EXIT_OK and req.get("keep", True):
        _become_state(namespace)
    os._exit(EXIT_OK if code == EXIT_SYSEXIT else code)


# seccomp: what a program may signal. Allowed targets: 0 (its own group), its parent
# node's state if it was forked from one (killing it costs a fallback), and pids in [own pid, next protected pid) - itself and what it forks
# (pids are handed out in increasing order; the bound stops at the next live state, so
# a wrapped pid counter cannot reach one). Other targets (kill(-1), siblings, other
# states, the worker) turn into no-ops that report success; ptrace,
# process_vm_readv/writev, pidfd_*, kcmp, making oneself dumpable again and
# F_SETOWN-style signal redirection fail with EPERM.
_SYSCALLS = {
    "x86_64": (0xC000003E, dict(kill=62, tkill=200, tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297,
                                ptrace=101, process_vm_readv=310, process_vm_writev=311, kcmp=312,
                                pidfd_open=434, pidfd_send_signal=424, pidfd_getfd=438, prctl=157, fcntl=72,
                                ioctl=16)),
    "aarch64": (0xC00000B7, dict(kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240,
                                 ptrace=117, process_vm_readv=270, process_vm_writev=271, kcmp=272,
                                 pidfd_open=434, pidfd_send_signal=424, pidfd_getfd=438, prctl=167, fcntl=25,
                                 ioctl=29)),
}
SECCOMP_SUPPORTED = os.uname().machine in _SYSCALLS
_RET_ALLOW, _RET_NOOP, _RET_EPERM = 0x7FFF0000, 0x00050000, 0x00050001
_PR_SET_PTRACER = 0x59616D61


def _bpf_program(own: int, hi: int, parent: int) -> list[tuple[int, int, int, int]]:
    arch, nr = _SYSCALLS[os.uname().machine]
    LD, JEQ, JGE, JSET, JA, RET, NEG = 0x20, 0x15, 0x35, 0x45, 0x05, 0x06, 0x84
    prog: list = []  # (code, jt, jf, k) with label names for jumps; resolved below

    def emit(code, k=0, jt=0, jf=0):
        prog.append([code, jt, jf, k])

    def label(name):
        prog.append(name)

    emit(LD, 4)
    emit(JEQ, arch, 0, "eperm")
    emit(LD, 0)
    if arch == 0xC000003E:
        emit(JGE, 0x40000000, "eperm", 0)  # x32 syscalls
    for name in ("kill",):
        emit(JEQ, nr[name], "kill", 0)
    for name in ("tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        emit(JEQ, nr[name], "range", 0)
    emit(JEQ, nr["prctl"], "prctl", 0)
    emit(JEQ, nr["fcntl"], "fcntl", 0)
    emit(JEQ, nr["ioctl"], "ioctl", 0)
    for name in ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_send_signal",
                 "pidfd_getfd"):
        emit(JEQ, nr[name], "eperm", 0)
    emit(RET, _RET_ALLOW)
    label("kill")
    emit(LD, 16)
    emit(JEQ, 0, "allow", 0)
    emit(JEQ, parent & 0xFFFFFFFF, "allow", 0)
    emit(JSET, 0x80000000, 0, "cmp")
    emit(NEG)
    emit(JA, "cmp")
    label("range")
    emit(LD, 16)
    label("cmp")
    emit(JGE, own, 0, "noop")
    emit(JGE, hi, "noop", "allow")
    label("prctl")
    emit(LD, 16)
    emit(JEQ, PR_SET_DUMPABLE, 0, "prctl2")
    emit(LD, 24)
    emit(JEQ, 0, "allow", "eperm")
    label("prctl2")
    emit(JEQ, _PR_SET_PTRACER, "eperm", "allow")
    label("fcntl")
    emit(LD, 24)
    emit(JEQ, 8, "eperm", 0)   # F_SETOWN
    emit(JEQ, 15, "eperm", "allow")  # F_SETOWN_EX
    label("ioctl")
    emit(LD, 24)
    emit(JEQ, 0x8901, "eperm", 0)  # FIOSETOWN
    emit(JEQ, 0x8902, "eperm", "allow")  # SIOCSPGRP
    label("allow")
    emit(RET, _RET_ALLOW)
    label("noop")
    emit(RET, _RET_NOOP)
    label("eperm")
    emit(RET, _RET_EPERM)
    # resolve labels
    where: dict = {}
    n = 0
    for item in prog:
        if isinstance(item, str):
            where[item] = n
        else:
            n += 1
    out = []
    i = 0
    for item in prog:
        if isinstance(item, str):
            continue
        code, jt, jf, k = item
        if code == JA:
            k = where[k] - i - 1
        else:
            jt = where[jt] - i - 1 if isinstance(jt, str) else jt
            jf = where[jf] - i - 1 if isinstance(jf, str) else jf
        out.append((code, jt, jf, k & 0xFFFFFFFF))
        i += 1
    return out


_OWN, _HI, _PARENT = 0x7FFFFFF1, 0x7FFFFFF2, 0x7FFFFFF3  # placeholders in the prebuilt filter


def _bpf_template() -> tuple[int, bytes, list[tuple[int, int]]] | None:
    """The filter, built once (every child only patches three numbers into a copy)."""
    if not SECCOMP_SUPPORTED:
        return None
    insns = _bpf_program(_OWN, _HI, _PARENT)
    slots = [(8 * i + 4, ins[3]) for i, ins in enumerate(insns) if ins[3] in (_OWN, _HI, _PARENT)]
    return len(insns), b"".join(struct.pack("HBBI", *ins) for ins in insns), slots


_BPF = _bpf_template()


def _confine(protected: list[int], parent: int) -> None:
    """Install the seccomp filter described above (stacked on any inherited one)."""
    own = os.getpid()
    hi = min((p for p in protected if p > own), default=PID_MAX + 1)
    if _BPF is None:
        raise OSError("no seccomp filter for this CPU architecture")
    n, template, slots = _BPF
    filt = ctypes.create_string_buffer(template, len(template))
    values = {_OWN: own, _HI: hi, _PARENT: parent & 0xFFFFFFFF}
    for offset, placeholder in slots:
        struct.pack_into("I", filt, offset, values[placeholder])
    prog = struct.pack("HxxxxxxP", n, ctypes.addressof(filt))
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


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


class _State:
    """A live node state: the idle process, its channel, and what its path printed."""

    __slots__ = ("key", "pid", "chan", "slim", "digest", "nchunks", "out", "err", "reaper")

    def __init__(self, key, pid, chan, slim, digest, nchunks, reaper) -> None:
        self.key = key
        self.pid = pid
        self.chan = chan          # socket (SOCK_SEQPACKET) to the state's fd 4
        self.slim = slim          # forked (ultimately) from the slim zygote: no sympy/numpy loaded
        self.digest = digest      # of the path's chunks: a request must match it to fork from here
        self.nchunks = nchunks
        self.out = b""            # stdout / stderr of the whole path so far (at most the cap)
        self.err = b""
        self.reaper = reaper      # key of the state that forked it (its parent process), or None


def _digest(chunks: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for c in chunks:
        b = c.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


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
        # incremental mode: node states, LRU first (see "node states" above)
        self.incremental = limits.incremental and SECCOMP_SUPPORTED
        self.states: collections.OrderedDict[tuple, _State] = collections.OrderedDict()
        self.state_pids: dict[int, tuple] = {}
        self.tree_files: dict[str, list] = {}   # tree -> [out memfd, err memfd, report memfd, states]
        self.reaped: dict[int, int] = {}        # wait statuses of children reaped by _reap
        self.counters = collections.Counter()
        self._reap_sent: set = set()
        self.memory_current = "/sys/fs/cgroup/memory.current"
        if not os.path.exists(self.memory_current):
            self.memory_current = "/sys/fs/cgroup/memory/memory.usage_in_bytes"  # cgroup v1
        if self.incremental:
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of states come back to us
        self._start_zygote()
        tasks = self._tasks()
        # tasks in the container with no program around (this process's threads)
        self.base_tasks = None if tasks is None else tasks - (self.zygote is not None)
        self.memory_base = self._memory()
        self._prepare_next()

    def _memory(self) -> int | None:
        try:
            with open(self.memory_current, "rb", buffering=0) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

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
        req_rd, req_wr = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # carries fds for spawns
        req_rd, req_wr = req_rd.detach(), req_wr.detach()
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
        if self.incremental and req.get("tree") is not None and isinstance(req.get("node"), int) and chunks:
            return self._run_node(req, chunks, timeout)
        for fd in self.mfds:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        outcome = None
        if self.zygote is not None and not any(HEAVY_RE.search(c) for c in chunks):
            if self.incremental and self.states:  # the slim child needs the pids to protect
                body = json.dumps({"chunks": chunks, "protected": self._protected()}).encode()
            elif body is None or req.get("chunks") is None:
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
        # confined only while there are node states to protect (else exactly as without them)
        guard = self._protected() if self.incremental and self.states else None
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(chunks, out_fd, err_fd, rep_fd, self.limits, self.as_limit, self.streams, guard=guard)
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

    # node states (incremental mode) ------------------------------------------
    def _protected(self) -> list[int]:
        """Pids no program may signal: us, the zygote, every node state."""
        pids = [os.getpid(), 1]
        if self.zygote is not None:
            pids.append(self.zygote[0])
        pids.extend(self.state_pids)
        return sorted(pids)

    def _tree_files(self, tree: str) -> list:
        """The tree's own output memfds (its states hold them; no other tree's program sees them)."""
        tf = self.tree_files.get(tree)
        if tf is None:
            tf = self.tree_files[tree] = [os.memfd_create(f"{name}", os.MFD_CLOEXEC)
                                          for name in ("t-stdout", "t-stderr", "t-report")] + [0]
        return tf

    def _close_tree_files(self, tree: str, force: bool = False) -> None:
        tf = self.tree_files.get(tree)
        if tf is not None and (force or tf[3] <= 0):
            del self.tree_files[tree]
            for fd in tf[:3]:
                os.close(fd)

    def _send_state(self, st: _State, obj: dict, fds: list[int] | None = None) -> bool:
        try:
            if fds:
                socket.send_fds(st.chan, [json.dumps(obj).encode()], fds)
            else:
                st.chan.send(json.dumps(obj).encode())
            return True
        except OSError:
            return False

    def _recv_json(self, sock, deadline: float) -> dict | None:
        wait = deadline - time.perf_counter()
        if wait <= 0:
            return None
        r, _, _ = select.select([sock], [], [], wait)
        if not r:
            return None
        try:
            data = sock.recv(4096)
            obj = json.loads(data) if data else None
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def _drop_state(self, key: tuple) -> None:
        """Kill a state and forget it; the state that forked it reaps it."""
        st = self.states.pop(key, None)
        if st is None:
            return
        self.state_pids.pop(st.pid, None)
        try:
            os.kill(st.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            st.chan.close()
        except OSError:
            pass
        tf = self.tree_files.get(key[0])
        if tf is not None:
            tf[3] -= 1
        reaper = self.states.get(st.reaper) if st.reaper is not None else None
        if reaper is not None:
            self._send_state(reaper, {"op": "reap", "pid": st.pid})
        self.counters["dropped"] += 1

    def _release(self, tree: str, nodes) -> None:
        if nodes is None:
            keys = [k for k in self.states if k[0] == tree]
        else:
            keys = [(tree, n) for n in nodes if (tree, n) in self.states]
        pids = [self.states[k].pid for k in keys]
        for k in keys:
            self._drop_state(k)
        self._close_tree_files(tree, force=nodes is None)
        # wait until they are gone (reaped by us or by their parent states)
        end = time.perf_counter() + 1.0
        pending = pids
        while pending and time.perf_counter() < end:
            self._reap()
            pending = [p for p in pending if _proc_state(p)[0] is not None]
            if pending:
                time.sleep(0.0002)

    def _evict(self) -> None:
        """Least recently used states go first: over the count, then over the memory budget."""
        while len(self.states) > self.limits.max_states:
            self._drop_state(next(iter(self.states)))
            self.counters["evicted"] += 1
        if self.limits.state_memory <= 0 or self.memory_base is None:
            return
        for _ in range(8):
            cur = self._memory()
            if cur is None or not self.states or cur - self.memory_base <= self.limits.state_memory:
                return
            self._drop_state(next(iter(self.states)))
            self.counters["evicted"] += 1

    def _run_node(self, req: dict, chunks: list[str], timeout: float) -> dict:
        """One step of a search tree: forked from its parent node's state when that is alive
        (only the last chunk runs), else the whole path from scratch; kept as a state if OK."""
        tree, node, parent = str(req["tree"]), int(req["node"]), req.get("parent")
        key = (tree, node)
        if key in self.states:
            self._drop_state(key)  # a node id reused: the new program wins
        files = self._tree_files(tree)
        for fd in files[:3]:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        st = self.states.get((tree, parent)) if isinstance(parent, int) else None
        heavy = [bool(HEAVY_RE.search(c)) for c in chunks]
        outcome = prefix = None
        if (st is not None and st.nchunks == len(chunks) - 1 and not (st.slim and heavy[-1])
                and st.digest == _digest(chunks[:-1])):
            self.states.move_to_end(st.key)
            outcome = self._fork_from_state(st, chunks, timeout)
            if outcome is not None:
                prefix = (st.out, st.err)
                self.counters["forked"] += 1
        if outcome is None:
            self.counters["replayed" if parent is None else "fallback"] += 1
            if st is not None:  # a failed fork may have written before it was killed
                for fd in files[:3]:
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
            outcome = self._spawn(chunks, files, timeout, slim=not any(heavy))
        pid, status, timed_out, duration, chan, slim, reaper = outcome
        if chan is not None:  # register first, so that the cleanup spares it
            new = _State(key, pid, chan, slim, _digest(chunks), len(chunks), reaper)
            self.states[key] = new
            self.state_pids[pid] = key
            files[3] += 1
        self._cleanup(pid, kept=chan is not None)
        res = self._result(req, chunks, status, timed_out, duration, mfds=files[:3], prefix=prefix)
        res["reused_state"] = prefix is not None
        if chan is not None:
            if res["status"] == "ok" and key in self.states:
                new.out, new.err = res["_stdout_b"], res["_stderr_b"]
            else:
                self._drop_state(key)
        res.pop("_stdout_b", None)
        res.pop("_stderr_b", None)
        self._evict()
        self._close_tree_files(tree)
        self._prepare_next()
        return res

    def _fork_from_state(self, st: _State, chunks: list[str], timeout: float):
        msg = {"op": "fork", "chunk": chunks[-1], "step": len(chunks) - 1, "protected": self._protected()}
        if len(json.dumps(msg)) > STATE_MSG_MAX - 1024:
            return None  # too big for one message: run the path whole
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.kill(st.pid, signal.SIGCONT)  # a program may have stopped its parent state
        except OSError:
            pass
        t0 = time.perf_counter()
        sent = self._send_state(st, msg, [b.fileno()])
        b.close()
        reply = self._recv_json(st.chan, t0 + 5.0) if sent else None
        pid = reply.get("pid") if reply else None
        if not isinstance(pid, int) or pid <= 0:
            a.close()
            self._drop_state(st.key)
            self.counters["state_failed"] += 1
            if self.contained:  # a fork it made before dying must not write into the rerun's output
                self._kill_leftovers()
            return None
        status, timed_out, kept = self._await(pid, a, t0 + timeout, st.key)
        if not kept:
            a.close()
        return pid, status, timed_out, time.perf_counter() - t0, a if kept else None, st.slim, st.key

    def _spawn(self, chunks: list[str], files: list, timeout: float, slim: bool):
        """The whole path in a fresh child (slim zygote or heavy worker) that may become a state."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        guard = self._protected()
        t0 = time.perf_counter()
        pid = None
        if slim and self.zygote is not None:
            pid = self._zygote_spawn(chunks, files, b.fileno(), guard, t0 + 5.0)
        if pid is None:
            slim = False
            pid = os.fork()
            if pid == 0:
                _child(chunks, files[0], files[1], files[2], self.limits, self.as_limit, self.streams,
                       chan=b.fileno(), guard=guard)
                os._exit(EXIT_INTERNAL)  # not reached
        b.close()
        status, timed_out, kept = self._await(pid, a, t0 + timeout, None)
        if not kept:
            a.close()
        return pid, status, timed_out, time.perf_counter() - t0, a if kept else None, slim, None

    def _zygote_spawn(self, chunks, files, chan: int, guard: list[int], deadline: float) -> int | None:
        """Ask the zygote for a child that is ours (it forks twice): its pid, or None."""
        _, req_wr, _ = self.zygote
        body = json.dumps({"chunks": chunks, "protected": guard}).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, req_wr)
        try:
            socket.send_fds(sock, [INT.pack(-len(body))], [files[0], files[1], files[2], chan])
            _write_all(req_wr, body)
        except OSError:
            sock.detach()
            self._zygote_lost()
            return None
        sock.detach()
        status = self._zygote_status(deadline)
        if status is None or status is _TIMEOUT:
            self._zygote_lost()
            return None
        return status if status > 0 else None

    def _await(self, pid: int, chan, deadline: float, reaper):
        """Wait for a state-capable program: it says "K" (kept as a state) or exits.
        Returns (wait status, timed out, kept)."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
        kept = timed_out = False
        chan_open = True
        try:
            while True:
                now = time.perf_counter()
                if now >= deadline:
                    if timed_out:
                        break
                    timed_out = True
                    self._kill_program(pid)
                    deadline = now + 2.0
                    continue
                waits = ([pidfd] if pidfd is not None else []) + ([chan] if chan_open else [])
                if not waits:
                    if _proc_state(pid)[0] in (None, "Z", "X"):
                        break
                    time.sleep(0.0005)
                    continue
                r, _, _ = select.select(waits, [], [], deadline - now if pidfd is not None else 0.001)
                if chan_open and chan in r:
                    try:
                        data = chan.recv(16)
                    except OSError:
                        data = b""
                    if data == b"K" and not timed_out:
                        kept = True
                        break
                    chan_open = False
                    continue
                if pidfd is not None and pidfd in r:
                    break
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if kept:
            if _threads(pid) == 1:
                return 0, False, True
            self._kill_program(pid)  # a thread left running must not outlive its step
            self._status_of(pid, reaper)
            return 0, False, False
        status = self._status_of(pid, reaper)
        return (status if status is not None else signal.SIGKILL), timed_out, False

    def _status_of(self, pid: int, reaper) -> int | None:
        """The wait status of an exited program: from the state that forked it, else ours."""
        st = self.states.get(reaper) if reaper is not None else None
        if st is not None:
            reply = self._recv_json(st.chan, time.perf_counter() + 2.0) \
                if self._send_state(st, {"op": "wait", "pid": pid}) else None
            if reply is not None and isinstance(reply.get("status"), int):
                return reply["status"]
            if reply is None:
                self._drop_state(reaper)  # broken or dead: its children are ours now
        end = time.perf_counter() + 2.0
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return status
            except ChildProcessError:
                if pid in self.reaped:
                    return self.reaped.pop(pid)
                if _proc_state(pid)[0] is None:
                    return None
            if time.perf_counter() > end:
                return None
            time.sleep(0.0005)

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
                done, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not done:
                return
            if len(self.reaped) > 4096:
                self.reaped.clear()
            self.reaped[done] = status
            key = self.state_pids.get(done)
            if key is not None:
                self._drop_state(key)
            if self.zygote is not None and done == self.zygote[0]:
                pid, req_wr, st_rd = self.zygote
                self.zygote = None
                os.close(req_wr)
                os.close(st_rd)

    def _cleanup(self, pid: int, kept: bool = False) -> None:
        """Leave nothing of the finished program behind: processes, /tmp files. A program
        kept as a node state stays (what it forked does not)."""
        if not kept:
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
        if (tasks is None or self.base_tasks is None
                or tasks != self.base_tasks + (self.zygote is not None) + len(self.states)):
            self._kill_leftovers()
        if self.zygote is None:
            self._start_zygote()  # nothing of the program is alive now
        try:
            if os.listdir("/tmp"):
                _clean_dir("/tmp")
        except OSError:
            pass

    def _kill_leftovers(self) -> None:
        """Everything in this PID namespace besides us, the zygote and the node states is a
        leftover of the program (orphans are re-parented to PID 1), including processes that
        left its group with setsid(). Zombies are skipped (their parent reaps them; a state
        whose leftover died is told to reap it)."""
        me = os.getpid()
        for attempt in range(10000):
            self._reap()
            if attempt == 500 and self.zygote is not None:
                self._zygote_lost()  # something keeps coming back: take the zygote down too
            keep = {me, self.zygote[0]} if self.zygote is not None else {me}
            others = []
            for p in map(int, filter(str.isdigit, os.listdir("/proc"))):
                if p in keep:
                    continue
                state, ppid = _proc_state(p)
                key = self.state_pids.get(p)
                if key is not None:
                    if state in ("Z", "X", None):  # a state died: forget it
                        self._drop_state(key)
                    continue
                if state in ("Z", "X", None):
                    parent_key = self.state_pids.get(ppid)
                    if parent_key is not None and (p, ppid) not in self._reap_sent:
                        self._reap_sent.add((p, ppid))
                        self._send_state(self.states[parent_key], {"op": "reap", "pid": p})
                    continue
                others.append(p)
            if not others:
                self._reap_sent.clear()
                return
            for p in others:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.0002)

    def _result(self, req: dict, chunks: list[str], status: int, timed_out: bool, duration: float,
                mfds: list | None = None, prefix: tuple | None = None) -> dict:
        """The result frame. ``prefix``: (stdout, stderr) of the path before the last step,
        when only the last step ran (forked from its parent's state): the result is then
        what running the whole path would give, output cap included."""
        out_fd, err_fd, rep_fd = mfds if mfds is not None else self.mfds
        cap = self.limits.max_output
        pre_out, pre_err = prefix if prefix is not None else (b"", b"")
        out_size = os.fstat(out_fd).st_size + len(pre_out)
        err_size = os.fstat(err_fd).st_size + len(pre_err)
        stdout_b = pre_out + os.pread(out_fd, max(0, min(out_size, cap) - len(pre_out)), 0)
        stderr_b = pre_err + os.pread(err_fd, max(0, min(err_size, cap) - len(pre_err)), 0)
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

        if mfds is not None:
            res["_stdout_b"], res["_stderr_b"] = stdout_b, stderr_b
        if prefix is not None:
            res["last_output"] = stdout_b[len(pre_out):].decode("utf-8", "replace")
        elif len(chunks) > 1:
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
                                  "zygote_starts": self.zygote_starts,
                                  "incremental": self.incremental,
                                  "states": len(self.states),
                                  "state_pids": sorted(self.state_pids),
                                  "state_trees": len({k[0] for k in self.states}),
                                  "tasks": self._tasks(),
                                  "memory": self._memory(),
                                  "memory_base": self.memory_base,
                                  "counters": dict(self.counters)})
                continue
            if req.get("op") == "release":  # no answer: the host does not wait for it
                if self.incremental:
                    nodes = req.get("nodes")
                    self._release(str(req.get("tree")), None if nodes is None else [int(n) for n in nodes])
                continue
            try:
                res = self.run(req, body)
            except Exception as exc:  # noqa: BLE001 - the worker's own failure, keep serving
                res = {"id": req.get("id"), "status": "sandbox_error", "stdout": "", "stderr": "",
                       "error_type": type(exc).__name__, "error_message": str(exc),
                       "error_line": f"worker: {type(exc).__name__}: {exc}", "duration_s": 0.0}
            self.write_frame(res)


def _threads(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb", buffering=0) as f:
            for line in f.read().splitlines():
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _proc_state(pid: int) -> tuple[str | None, int]:
    """(state letter, parent pid) from /proc/PID/stat; (None, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb", buffering=0) as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1])
    except (OSError, IndexError, ValueError):
        return None, 0


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
    ap.add_argument("--incremental", action="store_true",
                    help="node states: a search-tree step forks its parent step's live interpreter")
    ap.add_argument("--max-states", type=int, default=64, help="node states kept at most (LRU)")
    ap.add_argument("--state-memory-mb", type=int, default=128,
                    help="memory the container may use beyond its start for node states (LRU); 0: no bound")
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
    req_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, req_fd)
    os.write(st_fd, b"R")
    while True:
        try:
            head, fds, _, _ = socket.recv_fds(req_sock, INT.size, 4)
        except OSError:
            os._exit(0)
        if not head:
            os._exit(0)  # the worker went away
        if len(head) < INT.size:
            rest = _read_exact(req_fd, INT.size - len(head))
            if rest is None:
                os._exit(0)
            head += rest
        size = INT.unpack(head)[0]
        body = _read_exact(req_fd, abs(size))
        if body is None:
            os._exit(0)
        req = json.loads(body)
        chunks = req["chunks"]
        guard = req.get("protected")
        if size < 0:  # incremental mode: a child for the worker itself (fork twice), on the given fds
            _spawn_for_worker(chunks, fds, limits, as_limit, streams, guard, st_fd)
            random.seed()
            continue
        try:
            pid = os.fork()
        except OSError:
            os.write(st_fd, INT.pack(FORK_FAILED))
            continue
        if pid == 0:
            _child(chunks, out_fd, err_fd, rep_fd, limits, as_limit, streams, guard=guard)
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


def _spawn_for_worker(chunks, fds, limits, as_limit, streams, guard, st_fd) -> None:
    """Fork a middle process that forks the program and exits at once, so that the
    program (which may stay alive as a node state) is re-parented to the worker, which
    waits for it; write the program's pid (or FORK_FAILED) on the status pipe."""
    try:
        if len(fds) != 4:
            os.write(st_fd, INT.pack(FORK_FAILED))
            return
        try:
            middle = os.fork()
        except OSError:
            os.write(st_fd, INT.pack(FORK_FAILED))
            return
        if middle == 0:
            try:
                pid = os.fork()
            except OSError:
                os.write(st_fd, INT.pack(FORK_FAILED))
                os._exit(0)
            if pid == 0:
                _child(chunks, fds[0], fds[1], fds[2], limits, as_limit, streams, chan=fds[3], guard=guard)
            os.write(st_fd, INT.pack(pid))
            os._exit(0)
        os.waitpid(middle, 0)
    finally:
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main()
