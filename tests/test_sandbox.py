"""The Docker sandbox, with real containers: results, step semantics, and hostile programs.

Every hostile behaviour from the sandbox issue has a test here; each is followed
by programs that must still succeed. Uses the session pool from conftest.py
(2 containers, default config) and passes short timeouts per call.

The hostile and fault tests run in both modes (``sb``): ``reexec``, a pool with
incremental mode off (every program, every path, from scratch), and
``incremental``, where every program runs as a search-tree step forked from a
live parent state (see ``StepAdapter``), with the states of its tree around it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from _sandbox_helpers import IMAGE, pool_containers

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("need_docker")]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pool(sandbox_pool):
    return sandbox_pool


@pytest.fixture(scope="module")
def reexec_pool(need_docker):
    from rstar.sandbox import SandboxConfig, SandboxPool

    with SandboxPool(size=2, config=SandboxConfig(image=IMAGE, incremental=False)) as p:
        assert not p.incremental
        yield p


class StepAdapter:
    """The pool's ``run`` / ``run_steps`` with every program run as a step of a search
    tree, forked from the live state of its parent step (incremental mode)."""

    PARENT = "_parent_step = 1"

    def __init__(self, pool) -> None:
        self._pool = pool
        self.reused = 0

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def run(self, programs, timeout_s=None):
        tree = "adapter-" + uuid.uuid4().hex[:8]
        root = self._pool.run_steps([[self.PARENT]], nodes=[(tree, 0, None)])[0]
        assert root.valid, root
        res = self._pool.run_steps([[self.PARENT, p] for p in programs], timeout_s=timeout_s,
                                   nodes=[(tree, i + 1, 0) for i in range(len(programs))])
        self._pool.release(tree)
        self.reused += sum(r.exec.reused_state for r in res)
        return [r.exec for r in res]

    def run_steps(self, paths, timeout_s=None):
        """Each path's prefix first, step by step (so that each last step has a live
        parent state when its prefix ran OK), then all last steps in one batch."""
        tree = "adapter-" + uuid.uuid4().hex[:8]
        for k in range(max(len(p) for p in paths) - 1):
            batch = [(i, p) for i, p in enumerate(paths) if len(p) > k + 1]
            self._pool.run_steps([p[:k + 1] for _, p in batch], timeout_s=timeout_s,
                                 nodes=[(tree, 1000 * i + k, 1000 * i + k - 1 if k else None) for i, _ in batch])
        res = self._pool.run_steps(paths, timeout_s=timeout_s,
                                   nodes=[(tree, 1000 * i + len(p) - 1, 1000 * i + len(p) - 2 if len(p) > 1 else None)
                                          for i, p in enumerate(paths)])
        self._pool.release(tree)
        self.reused += sum(r.exec.reused_state for r in res)
        return res


@pytest.fixture(params=["reexec", "incremental"])
def sb(request, pool, reexec_pool):
    """The pool in one of the two modes (see the module docstring)."""
    if request.param == "reexec":
        return reexec_pool
    if not pool.incremental:
        pytest.fail("incremental mode is off in the session pool (no seccomp on this machine?)", pytrace=False)
    return StepAdapter(pool)


def check_healthy(pool, n: int = 6) -> None:
    """After something hostile: the next programs (more than one per container) succeed."""
    res = pool.run([f"print({i} * {i} + {n})" for i in range(n)], timeout_s=5)
    assert [r.status for r in res] == ["ok"] * n, [r.error_line for r in res]
    assert [r.stdout for r in res] == [f"{i * i + n}\n" for i in range(n)]


# ------------------------------------------------------------------ results


def test_results_in_order_with_error_details(sb):
    res = sb.run(["print(1 + 1)", "x = 1\n1 / 0", "import sympy\nx = sympy.Symbol('x')\n"
                    "print(sorted(sympy.solve(x**2 - 4, x)))", "raise ValueError('bad value')",
                    "import sys\nprint('warn', file=sys.stderr)\nprint('out')", "def f(:\n  pass"])
    assert [r.status for r in res] == ["ok", "error", "ok", "error", "ok", "error"]
    assert res[0].stdout == "2\n" and res[0].error_type is None and res[0].duration_s > 0
    assert res[1].error_type == "ZeroDivisionError"
    assert res[1].error_message == "division by zero"
    assert res[1].error_line == "ZeroDivisionError: division by zero"
    assert res[2].stdout == "[-2, 2]\n"
    assert res[3].error_line == "ValueError: bad value"
    assert res[4].stdout == "out\n" and res[4].stderr == "warn\n"
    assert res[5].error_type == "SyntaxError"


def test_exit_codes(sb):
    res = sb.run(["import sys\nprint('a')\nsys.exit(0)", "import sys\nsys.exit(3)", "exit()"])
    assert [r.status for r in res] == ["ok", "error", "ok"]
    assert res[0].stdout == "a\n"


def test_identical_programs_in_a_batch_run_once(pool):
    before = pool.stats["deduplicated"]
    code = "import random\nprint(random.random())"
    res = pool.run([code] * 5 + ["print(7)"])
    assert pool.stats["deduplicated"] - before == 4
    assert len({r.stdout for r in res[:5]}) == 1  # the same single run, copied
    assert res[5].stdout == "7\n"
    # separate runs get fresh random state (children are reseeded)
    assert len({r.stdout for r in pool.run([code])}) == 1
    assert pool.run([code])[0].stdout != pool.run([code])[0].stdout


def test_run_is_thread_safe(pool):
    out: dict[int, list] = {}

    def work(k: int) -> None:
        out[k] = pool.run([f"print({k} * 100 + {i})" for i in range(20)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert [r.stdout for r in out[k]] == [f"{k * 100 + i}\n" for i in range(20)]


# ------------------------------------------------------------ step semantics


def test_steps_output_of_the_last_step_only(sb):
    [a, b, c, d] = sb.run_steps([
        ["x = 6\nprint('setup')", "y = x * 7\nprint(y)"],
        ["x = 1", "print(z)"],
        ["print('only step')"],
        ["from sympy import symbols, solve\nx = symbols('x')", "r = solve(x**2 - 9, x)", "print(max(r))"],
    ])
    assert a.valid and a.status == "ok" and a.output == "42\n" and a.error is None
    assert a.exec.stdout == "setup\n42\n"
    assert not b.valid and b.status == "error" and b.error == "NameError: name 'z' is not defined"
    assert c.valid and c.output == "only step\n"
    assert d.valid and d.output == "3\n"


def test_steps_failing_prefix_and_hostile_last_step(sb):
    [a, b] = sb.run_steps([["1/0", "print('never')"], ["x = 1", "while True: pass"]], timeout_s=1)
    assert not a.valid and a.output == "" and a.error.startswith("ZeroDivisionError")
    assert a.exec.failed_step == 0
    assert not b.valid and b.status == "timeout"


# ------------------------------------------------------------ no network


def _serve(host: str):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(16)
    srv.settimeout(0.2)
    accepted: list = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
                accepted.append(addr)
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return srv, accepted, stop


def _docker0_ip() -> str | None:
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True).stdout
        return out.split("inet ")[1].split("/")[0]
    except (OSError, IndexError):
        return None


def test_no_network_internet_loopback_or_gateway(sb):
    targets = []
    servers = []
    for host in ("127.0.0.1", _docker0_ip()):
        if host is None:
            continue
        srv, accepted, stop = _serve(host)
        servers.append((srv, accepted, stop))
        targets.append((host, srv.getsockname()[1]))
    # the servers work from the host itself
    for host, port in targets:
        socket.create_connection((host, port), timeout=2).close()
    for _, accepted, _ in servers:
        deadline = time.time() + 2
        while not accepted and time.time() < deadline:
            time.sleep(0.01)
        assert len(accepted) == 1
        accepted.clear()
    probe = textwrap.dedent("""\
        import socket
        s = socket.socket()
        s.settimeout(1)
        s.connect(({host!r}, {port}))
        print('CONNECTED')
    """)
    programs = [probe.format(host=h, port=p) for h, p in targets + [("1.1.1.1", 53), ("8.8.8.8", 443)]]
    programs.append("import socket\nprint(socket.getaddrinfo('pypi.org', 443))")
    programs.append("import urllib.request\nprint(urllib.request.urlopen('http://deb.debian.org', timeout=1).status)")
    programs.append("import socket\nprint(sorted(i[1] for i in socket.if_nameindex()))")
    res = sb.run(programs, timeout_s=3)
    for r in res[:-1]:
        assert r.status == "error", r
        assert "CONNECTED" not in r.stdout
    assert res[-1].stdout == "['lo']\n"  # the only interface
    time.sleep(0.2)
    for srv, accepted, stop in servers:
        stop.set()
        srv.close()
        assert accepted == []
    assert len(targets) == 2, "docker0 not found: the gateway case was not tested"


# -------------------------------------------------------- host files, writes


def test_cannot_read_host_files(sb, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-" + uuid.uuid4().hex)
    res = sb.run([
        f"print(open({str(secret)!r}).read())",
        "print(open('/etc/shadow').read())",
        "print(open('/proc/1/environ').read())",
        "import os\nprint(os.listdir('/root'))",
        "import os\nprint(sorted(os.listdir('/')))",
        "print(open('/var/run/docker.sock').read())",
    ])
    assert res[0].status == "error" and res[0].error_type == "FileNotFoundError"
    for r in res[1:4]:
        assert r.status == "error" and r.error_type == "PermissionError", r
    assert "work" not in res[4].stdout and "docker.sock" not in res[4].stdout
    assert res[5].status == "error"
    assert all("TOP-SECRET" not in r.stdout for r in res)


def test_cannot_write_outside_tmp(sb):
    paths = ["/x", "/etc/x", "/opt/rstar/worker.py", "/usr/lib/python3/dist-packages/sitecustomize.py",
             "/var/tmp/x", "/dev/shm/x", "/home/x", "/run/x", "/root/x", "/dev/x"]
    res = sb.run([f"open({p!r}, 'w').write('x')" for p in paths])
    for p, r in zip(paths, res):
        assert r.status == "error" and r.error_type in ("OSError", "PermissionError", "FileNotFoundError"), (p, r)
    ok = sb.run(["open('/tmp/left.txt', 'w').write('x' * 1000)\nprint(len(open('/tmp/left.txt').read()))"])[0]
    assert ok.stdout == "1000\n"
    # nothing a program leaves in /tmp is seen by the next one
    assert sb.run(["import os\nprint(os.listdir('/tmp'))"] * 1)[0].stdout == "[]\n"
    big = sb.run(["open('/tmp/big', 'wb').write(b'x' * (100 << 20))"])[0]
    assert big.status == "error"  # RLIMIT_FSIZE (16 MB) or the 64 MB tmpfs


def test_runs_as_nobody_without_capabilities(sb):
    r = sb.run(["import os\nprint(os.getuid(), os.getgid())\n"
                  "print([l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapBnd', 'NoNewPrivs'))])"])[0]
    lines = r.stdout.splitlines()
    assert lines[0] == "65534 65534"
    assert "CapEff:\\t0000000000000000" in lines[1] and "CapBnd:\\t0000000000000000" in lines[1]
    assert "NoNewPrivs:\\t1" in lines[1]


# -------------------------------------------------------- resources


def test_memory_limit(sb):
    res = sb.run(["a = bytearray(2 * 1024**3)",
                    "x = []\nwhile True:\n    x.append(bytearray(10 * 1024**2))",
                    "import numpy as np\na = np.ones((30000, 30000))"], timeout_s=5)
    assert [r.status for r in res] == ["memory"] * 3, [r.error_line for r in res]
    check_healthy(sb)


def test_timeout(sb):
    t0 = time.monotonic()
    res = sb.run(["while True: pass", "import time\ntime.sleep(60)", "print('fine')"], timeout_s=1)
    assert [r.status for r in res] == ["timeout", "timeout", "ok"]
    assert res[0].error_type == "Timeout"
    assert time.monotonic() - t0 < 8
    check_healthy(sb)


def test_fork_bomb(sb):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    res = sb.run([bomb, bomb, "import os\nos.setsid()\nwhile True: os.fork() if os.fork() else None"], timeout_s=1)
    assert all(r.status in ("timeout", "error") for r in res), res
    check_healthy(sb, 10)
    # nothing of the bombs is left: the only processes are the worker, the zygote and the program
    r = sb.run([PIDS + "print(pids())"])[0]
    assert len(r.stdout.strip("[]\n").split(",")) == 3, r.stdout


def test_output_flood(sb):
    cap = sb.config.max_output_bytes
    res = sb.run(["import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)",
                    "print('y' * (100 * 1024 * 1024))",
                    "import os\nwhile True:\n    try:\n        os.write(1, b'z' * 65536)\n        os.write(2, b'e' * 65536)\n"
                    "    except OSError:\n        pass"], timeout_s=3)
    assert [r.status for r in res] == ["output_limit"] * 3
    for r in res:
        assert len(r.stdout.encode()) <= cap and len(r.stderr.encode()) <= cap
        assert r.stdout_truncated
    assert set(res[0].stdout) == {"x"} and len(res[0].stdout) == cap
    check_healthy(sb)


# -------------------------------------------------------- the worker itself


FAKE_FRAME = ("import json, struct\n"
              "body = json.dumps({'id': 3, 'status': 'ok', 'stdout': 'FAKE'}).encode()\n"
              "frame = b'RSW1' + struct.pack('>I', len(body)) + body\n")


def test_cannot_fake_the_framing(sb):
    res = sb.run([
        FAKE_FRAME + "import os\nos.write(1, frame * 3)\nos.write(2, frame)",
        FAKE_FRAME + "import sys\nsys.stdout.buffer.write(frame)\nsys.__stdout__.buffer.write(frame)",
        FAKE_FRAME + "import os\nfor fd in range(1024):\n    try:\n        os.write(fd, frame)\n    except OSError:\n        pass",
        FAKE_FRAME + "for p in ('/proc/1/fd/0', '/proc/1/fd/1', '/proc/1/fd/3', '/proc/1/fd/4', '/dev/stdout'):\n"
                     "    try:\n        open(p, 'wb').write(frame)\n    except OSError as e:\n        print(p, type(e).__name__)",
        FAKE_FRAME + "import os\nf = os.open('/proc/1/mem', os.O_RDWR)",
        "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.ptrace(16, 1, 0, 0))",  # PTRACE_ATTACH to the worker
    ])
    for r in res:
        assert r.stdout != "FAKE" and r.status != "sandbox_error"
    assert res[0].status == "ok" and res[0].stdout.startswith("RSW1")
    assert "/proc/1/fd/1 PermissionError" in res[3].stdout
    assert res[4].status == "error" and res[4].error_type == "PermissionError"
    assert res[5].stdout == "-1\n"
    check_healthy(sb)


def test_cannot_kill_the_worker(sb):
    before = list(sb.container_ids)
    hostile = [
        "import os, signal\nos.kill(1, signal.SIGKILL)",
        "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)",
        "import os, signal\nfor s in (signal.SIGINT, signal.SIGHUP, signal.SIGSTOP, signal.SIGSEGV, signal.SIGPIPE):\n"
        "    os.kill(1, s)",
        "import os, signal\nos.kill(-1, signal.SIGKILL)",
        "import os\nos._exit(0)",
        "import os\nos.closerange(0, 1024)",
        "import os\nos.setsid()\nif os.fork() == 0:\n    import time\n    time.sleep(30)\nprint('parent done')",
        "import os, signal\nos.killpg(0, signal.SIGKILL)",
        "import sys\nsys.stdout.close()\nsys.stdin.close()",
    ]
    res = sb.run(hostile, timeout_s=2)
    assert all(r.status != "sandbox_error" for r in res), res
    check_healthy(sb, 10)
    assert sb.container_ids == before  # not even replaced: PID 1 shrugged it all off
    # no leftover process (the setsid daemon was killed after its program ended)
    r = sb.run([COUNT])[0]
    assert r.stdout == "3\n"  # the worker, the zygote, the program (node states not counted)


def test_dead_container_is_replaced_and_its_program_answered(pool):
    from rstar.sandbox import engine

    replaced = pool.stats["replaced"]
    api = engine.connect().api
    killed = []

    def kill_soon():  # the container that runs the first program (either may take it)
        time.sleep(1.0)
        slot = next(s for s in pool.slots if s.inflight and s.inflight[0].chunks[0].endswith("print('slept')"))
        killed.append(slot.container_id)
        api.kill(slot.container_id)

    t = threading.Thread(target=kill_soon)
    t.start()
    res = pool.run(["import time\ntime.sleep(3)\nprint('slept')"] * 1 +
                   [f"import time\ntime.sleep(3)\nprint({i})" for i in range(1, 4)], timeout_s=10)
    t.join()
    statuses = [r.status for r in res]
    assert statuses.count("sandbox_error") == 1, statuses
    assert statuses.count("ok") == 3
    assert pool.stats["replaced"] == replaced + 1
    assert killed and killed[0] not in pool.container_ids
    check_healthy(pool)


def test_mixed_batch_of_1000(sb):
    hostile = [
        "1/0",
        "import os\nos._exit(1)",
        "import os, signal\nos.kill(1, signal.SIGKILL)",
        FAKE_FRAME + "import os\nos.write(1, frame)",
        "a = bytearray(3 * 1024**3)",
        "import os\nos.closerange(0, 100)",
        "import sys\nsys.stdout.write('w' * (200 * 1024))",
        "raise SystemExit(2)",
        "import os, signal\nos.kill(-1, signal.SIGKILL)",
        "import os\nos.setsid()\nos.fork()",
    ]
    slow = ["while True: pass", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass"]
    programs, expect = [], {}
    for i in range(1000):
        if i % 10 == 3:
            programs.append(hostile[(i // 10) % len(hostile)] + f"\n# {i}")
        elif i in (500, 900):
            programs.append(slow[i == 900] + f"\n# {i}")
        else:
            programs.append(f"import math\nprint({i}, math.isqrt({i * i}), {i} ** 2)")
            expect[i] = f"{i} {i} {i * i}\n"
    t0 = time.monotonic()
    res = sb.run(programs, timeout_s=1)
    elapsed = time.monotonic() - t0
    assert len(res) == 1000
    for i, out in expect.items():
        assert res[i].status == "ok" and res[i].stdout == out, (i, res[i])
    for i in range(1000):
        if i not in expect:
            assert res[i].status in ("error", "timeout", "memory", "output_limit", "ok"), (i, res[i])
            assert res[i].status != "sandbox_error"
    print(f"1000 mixed programs in {elapsed:.1f} s")


# -------------------------------------------------------- two tiers

HEAVY = "\n# numpy"  # any mention of a heavy library sends a program to PID 1 (the heavy tier)
PARENT = "import os\nprint('slim' if os.getppid() != 1 else 'heavy')"
# live processes in the container; node states (named rstar-state) and zombies (dead,
# their pid not yet collected by the node state that forked them) not counted
PIDS = ("import os\n"
        "def pids():\n"
        "    out = []\n"
        "    for p in os.listdir('/proc'):\n"
        "        try:\n"
        "            if (p.isdigit() and open(f'/proc/{p}/comm').read() != 'rstar-state\\n'\n"
        "                    and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z'):\n"
        "                out.append(int(p))\n"
        "        except OSError:\n"
        "            pass\n"
        "    return sorted(out)\n")
COUNT = PIDS + "print(len(pids()))"


def test_tier_choice(pool):
    res = pool.run([PARENT, PARENT + HEAVY, PARENT + "\nimport sympy"])
    assert [r.stdout for r in res] == ["slim\n", "heavy\n", "heavy\n"]


def test_tiers_give_the_same_results(pool):
    programs = [
        "print(sum(i * i for i in range(100)), 'é✓')",
        "import math, fractions\nprint(math.isqrt(99), fractions.Fraction(3, 6))",
        "1/0",
        "def f():\n    raise ValueError('bad ' * 3)\nf()",
        "import sys\nprint('to err', file=sys.stderr)\nsys.exit(2)",
        "import sys\nprint('x')\nsys.exit(0)",
        "import os\nos._exit(0)",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        "print('y' * (200 * 1024))",
        "a = bytearray(3 * 1024**3)",
        "import time\ntime.sleep(5)",
        "open('/tmp/f', 'w').write('1')\nprint(open('/tmp/f').read())",
        "import os\nprint(os.listdir('/tmp'))",
        "exec('import s' + 'ympy as m')\nprint(m.sqrt(8), m.Rational(1, 3) + 1)",
    ]
    fields = ("status", "stdout", "stderr", "error_type", "error_message", "error_line", "stdout_truncated")
    # the last one imports sympy in the slim tier: slow on a loaded machine, so a longer limit
    slim = pool.run(programs[:-1], timeout_s=2) + pool.run(programs[-1:], timeout_s=20)
    heavy = pool.run([p + HEAVY for p in programs[:-1]], timeout_s=2) + pool.run([programs[-1] + HEAVY], timeout_s=20)
    for p, a, b in zip(programs, slim, heavy):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields], (p, a, b)
    steps = [["x = 6", "y = x * 7", "print(y)"], ["x = 1", "print(x)\nz = 1/0"]]
    s1 = pool.run_steps(steps)
    s2 = pool.run_steps([[c + HEAVY for c in p] for p in steps])
    assert [(r.valid, r.output, r.error) for r in s1] == [(r.valid, r.output, r.error) for r in s2]
    assert s1[0].output == "42\n" and not s1[1].valid


def test_slim_program_importing_sympy_dynamically(pool):
    r = pool.run(["import os\nexec('import s' + 'ympy as m')\nprint(os.getppid() != 1, m.factorint(360))"],
                 timeout_s=10)[0]
    assert r.status == "ok" and r.stdout == "True {2: 3, 3: 2, 5: 1}\n", r


def test_killing_the_zygote(sb):
    before = list(sb.container_ids)
    hostile = [
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('after')",
        "import os, signal\nos.kill(-1, signal.SIGKILL)",
        "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('survived')",
        "import os, signal\nos.kill(-1, signal.SIGKILL)\nimport time\ntime.sleep(0.2)\nprint('late')",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nwhile True: pass",
        "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nprint('stopped it')",
        "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\nos.kill(os.getppid(), signal.SIGINT)\nprint('ok')",
    ]
    # the same from the heavy tier: the zygote is a process of the same user there too
    heavy = ["import os, signal\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) not in (1, os.getpid()):\n"
             "        os.kill(int(p), signal.SIGKILL)\nprint('killed')" + HEAVY,
             "import os, signal\nos.kill(-1, signal.SIGSTOP)\nprint('stopped')" + HEAVY]
    res = sb.run(hostile + heavy, timeout_s=1)
    assert all(r.status != "sandbox_error" for r in res), res
    assert [r.stdout for r in res[:4]] == ["after\n", "", "survived\n", "late\n"], res
    assert res[4].status == "timeout"
    assert res[6].stdout == "ok\n" and res[7].stdout == "killed\n" and res[8].stdout == "stopped\n"
    for _ in range(3):
        check_healthy(sb, 10)
        assert [r.stdout for r in sb.run([PARENT + f"\n# {i}" for i in range(4)])] == ["slim\n"] * 4
    assert sb.container_ids == before
    assert {r.stdout for r in sb.run([COUNT, COUNT + HEAVY, COUNT + "\n# 2"])} == {"3\n"}


def test_leftovers_are_killed_in_both_tiers(sb):
    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n"
              "    time.sleep(30)\nopen('/tmp/left', 'w').write('x')\nprint('parent done')")
    for suffix in ("", HEAVY):
        res = sb.run([daemon + suffix + f"\n# {i}" for i in range(4)], timeout_s=3)
        assert [r.stdout for r in res] == ["parent done\n"] * 4, res
        res = sb.run([COUNT + suffix, "import os\nprint(os.listdir('/tmp'))" + suffix])
        assert [r.stdout for r in res] == ["3\n", "[]\n"], res


# -------------------------------------------------------- lifecycle


def _run_script(code: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_gone(pool_id: str, seconds: float = 20.0) -> list:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = pool_containers(pool_id)
        if not left:
            return []
        time.sleep(0.25)
    return left


def test_close_leaves_no_containers():
    from rstar.sandbox import SandboxConfig, SandboxPool

    with SandboxPool(size=2, config=SandboxConfig(image=IMAGE)) as p:
        assert len(pool_containers(p.pool_id)) == 2
        assert p.run(["print(5)"])[0].stdout == "5\n"
    assert pool_containers(p.pool_id) == []
    p.close()  # idempotent


START = textwrap.dedent("""\
    import sys
    from rstar.sandbox import SandboxPool
    pool = SandboxPool(size=1)
    print(pool.pool_id, flush=True)
    {rest}
""")


# The race behind a Ctrl-C that did not stop a run under load: the kernel hands a
# process-wide SIGINT to any thread that does not block it. When one of the pool's
# threads takes it, Python's C handler only sets a flag; the main thread, asleep on
# the result of a 60 s program, is not woken and would raise KeyboardInterrupt only
# when the program ends. "pool-thread" puts the SIGINT exactly there, every time: it
# waits until the program is in flight, then signals the pool's driver thread.
INTERRUPT = {
    "process": "",
    "pool-thread": textwrap.dedent("""\
        import signal, threading, time
        def interrupt():
            while not pool.slots[0].inflight:
                time.sleep(0.01)
            time.sleep(0.3)
            signal.pthread_kill(pool.slots[0].ident, signal.SIGINT)
        threading.Thread(target=interrupt, daemon=True).start()
    """),
}


@pytest.mark.parametrize("target", list(INTERRUPT))
def test_ctrl_c_leaves_no_containers(target):
    rest = INTERRUPT[target] + "pool.run(['import time\\ntime.sleep(60)'], timeout_s=60)"
    proc = _run_script(START.format(rest=rest))
    pool_id = proc.stdout.readline().strip()
    assert pool_id, proc.stderr.read()
    assert len(pool_containers(pool_id)) == 1
    if target == "process":
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
    # the program runs 60 s: ending within 30 s means the interrupt ended the run
    _, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    assert _wait_gone(pool_id, 5) == []


def test_killed_owner_leaves_no_containers():
    """Even SIGKILL of the host process: the worker sees end-of-input and the container goes."""
    proc = _run_script(START.format(rest="import time\ntime.sleep(60)"))
    pool_id = proc.stdout.readline().strip()
    assert pool_id and len(pool_containers(pool_id)) == 1
    proc.kill()
    proc.wait()
    assert _wait_gone(pool_id, 20) == []


def test_leftovers_of_dead_owners_are_removed_live_ones_kept(pool):
    from rstar.sandbox import engine
    from rstar.sandbox.pool import remove_leftovers

    client = engine.connect()
    dead = client.api.create_container(
        IMAGE, command=["python3", "-c", "import time; time.sleep(120)"], user="65534:65534",
        labels={"rstar.sandbox": "1", "rstar.pool": "dead" + uuid.uuid4().hex[:6],
                "rstar.owner": f"{socket.gethostname()}:999999999:0"},
        host_config=client.api.create_host_config(network_mode="none"))
    client.api.start(dead["Id"])
    try:
        assert remove_leftovers(client) >= 1
        assert not client.api.containers(all=True, filters={"id": dead["Id"]})
        assert len(pool_containers(pool.pool_id)) == pool.size  # the live pool is untouched
        check_healthy(pool)
    finally:
        try:
            client.api.remove_container(dead["Id"], force=True)
        except Exception:
            pass


# -------------------------------------------------------- CLI


def test_cli_run_and_check(tmp_path, capsys):
    import argparse

    from rstar.sandbox import cli

    parser = argparse.ArgumentParser(prog="rstar")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    prog = tmp_path / "p.py"
    prog.write_text("print(sum(range(10)))\n")
    args = parser.parse_args(["sandbox", "run", str(prog), "--image", IMAGE])
    assert args.func(args) == 0
    cap = capsys.readouterr()
    assert cap.out == "45\n" and "[status: ok" in cap.err
    prog.write_text("print('a')\nundefined_name\n")
    args = parser.parse_args(["sandbox", "run", str(prog), "--image", IMAGE])
    assert args.func(args) == 1
    cap = capsys.readouterr()
    assert cap.out == "a\n" and "status: error" in cap.err and "NameError: name 'undefined_name'" in cap.err
    args = parser.parse_args(["sandbox", "check", "--image", IMAGE])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "sandbox ready" in out and "smoke program" in out
    assert "mode: incremental" in out
    args = parser.parse_args(["sandbox", "check", "--image", IMAGE, "--no-incremental"])
    assert args.func(args) == 0
    assert "mode: re-execution" in capsys.readouterr().out
    args = parser.parse_args(["sandbox", "build", "--image", IMAGE])
    assert callable(args.func)
