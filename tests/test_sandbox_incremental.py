"""Incremental execution with real containers: a search-tree step runs in a fork of
its parent step's live interpreter (a node state) and gives exactly what re-running
its whole path gives; states are confined, bounded, dropped, and replaced by a
re-run whenever they are gone.

Uses one pool of its own (one container, so that every tree's states are
neighbours) with small bounds, and the session pool for the equivalence property.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _sandbox_helpers import IMAGE, in_ci

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("need_docker")]

MAX_STATES = 24
STATE_MEMORY_MB = 96


@pytest.fixture(scope="module")
def ipool(need_docker):
    from rstar.sandbox import SandboxConfig, SandboxPool

    cfg = SandboxConfig(image=IMAGE, max_states=MAX_STATES, state_memory_mb=STATE_MEMORY_MB)
    with SandboxPool(size=1, config=cfg) as p:
        if not p.incremental:
            pytest.fail("incremental mode is not available (seccomp?)", pytrace=False)
        yield p


def tree_id() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def info(pool) -> dict:
    return pool.state_info()[0]


FIELDS = ("valid", "status", "output", "error")
EXEC_FIELDS = ("stdout", "stderr", "error_type", "error_message", "error_line", "failed_step", "stdout_truncated")


def outcome(r) -> tuple:
    return tuple(getattr(r, f) for f in FIELDS) + tuple(getattr(r.exec, f) for f in EXEC_FIELDS)


class Tree:
    """A search tree driven the way the search drives the pool: nodes by id, each with
    its parent, paths of step code, one batch per call."""

    def __init__(self, pool, key: str | None = None) -> None:
        self.pool = pool
        self.key = key or tree_id()
        self.code: dict[int, list[str]] = {}

    def run(self, items: list[tuple[int, int | None, str]], timeout_s: float = 10.0):
        paths = [(self.code[p] if p is not None else []) + [c] for _, p, c in items]
        for (node, _, _), path in zip(items, paths):
            self.code[node] = path
        return self.pool.run_steps(paths, timeout_s=timeout_s, nodes=[(self.key, n, p) for n, p, _ in items])

    def rerun(self, nodes: list[int], timeout_s: float = 10.0):
        """The same paths, re-executed whole (no nodes)."""
        return self.pool.run_steps([self.code[n] for n in nodes], timeout_s=timeout_s)


# ------------------------------------------------------- same results


STEP_KINDS = {
    "plain": lambda k: f"acc = globals().get('acc', 0) * 3 + {k}\nprint('acc', acc)",
    "quiet": lambda k: f"q{k} = [i * {k} for i in range(5)]",
    "sympy": lambda k: ("import sympy\nx = sympy.Symbol('x')\n"
                        f"poly = sympy.expand(globals().get('poly', 0) + sympy.Rational({k}, 7) * x + {k})\n"
                        "print(poly, sympy.solve(poly, x))"),
    "seeded": lambda k: f"import random\nrandom.seed({k})\nseeded = True\nprint(round(random.random(), 9))",
    # a draw from the seeded generator of the path (unseeded draws differ between runs in any mode)
    "draw": lambda k: "import random\nprint(round(random.random(), 9) if globals().get('seeded') else 'no seed')",
    "error": lambda k: [f"1 / (acc - acc) if 'acc' in globals() else undefined_{k}",
                        f"raise ValueError('bad {k}')", "def f(:\n  pass"][k % 3],
    "print": lambda k: f"print('{'pqrs'[k % 4]}' * 20000)",  # three on a path pass the 64 KiB cap
    "exit": lambda k: f"import sys\nprint('bye {k}')\nsys.exit({k % 2})",
    "stderr": lambda k: f"import sys\nprint('warn {k}', file=sys.stderr)",
    "timeout": lambda k: "while True:\n    pass",
}


@st.composite
def step_trees(draw):
    n = draw(st.integers(3, 9))
    nodes = []
    timeouts = 0
    for i in range(n):
        parent = draw(st.one_of(st.none(), st.integers(0, i - 1))) if i else None
        kinds = [k for k in STEP_KINDS if k != "timeout" or timeouts == 0]
        kind = draw(st.sampled_from(kinds))
        timeouts += kind == "timeout"
        nodes.append((i, parent, STEP_KINDS[kind](draw(st.integers(1, 5)))))
    return nodes


def _depth_batches(nodes):
    depth: dict[int, int] = {}
    for i, p, _ in nodes:
        depth[i] = 0 if p is None else depth[p] + 1
    for d in sorted(set(depth.values())):
        yield [x for x in nodes if depth[x[0]] == d]


@settings(max_examples=4 if in_ci() else 8, deadline=None, derandomize=in_ci(),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(nodes=step_trees())
def test_incremental_equals_reexecution_on_random_trees(sandbox_pool, nodes):
    """Random trees of plain / sympy / seeded-random / failing / exiting / printing /
    timing-out steps, run level by level with node states, give exactly what
    re-running each path gives (status, output of the last step, error line, the
    whole stdout and stderr, the failed step)."""
    pool = sandbox_pool
    tree = Tree(pool)
    inc: dict[int, object] = {}
    for batch in _depth_batches(nodes):
        for (i, _, _), r in zip(batch, tree.run(batch, timeout_s=1.0)):
            inc[i] = r
    order = [i for i, _, _ in nodes]
    ref = dict(zip(order, tree.rerun(order, timeout_s=1.0)))
    pool.release(tree.key)
    for i in order:
        assert outcome(inc[i]) == outcome(ref[i]), (i, tree.code[i], inc[i], ref[i])
        assert inc[i].exec.status != "sandbox_error"


def test_reuse_happens_and_matches(ipool):
    """The reason for it all: a chain of sympy steps forks each step from the last."""
    tree = Tree(ipool)
    steps = ["import sympy\nx = sympy.Symbol('x')\nr = sympy.solve(x**2 - 5*x + 6, x)"] + [
        f"s{d} = sympy.simplify(sympy.Rational({d}, 7) * x**2 + r[0] * x)\nprint(s{d})" for d in range(1, 7)]
    res = [tree.run([(i, i - 1 if i else None, c)])[0] for i, c in enumerate(steps)]
    assert [r.exec.reused_state for r in res] == [False] + [True] * 6
    assert res[-1].output == "2*x*(3*x + 7)/7\n" and res[-1].exec.stdout.count("\n") == 6
    ref = tree.rerun(list(range(len(steps))))
    assert [outcome(r) for r in res] == [outcome(r) for r in ref]
    ipool.release(tree.key)


def test_seeded_generators_continue_across_a_fork(ipool):
    """os.fork() reseeds the random module in the child; a step forked from a state must
    still continue its path's seeded generators (random and numpy)."""
    tree = Tree(ipool)
    tree.run([(0, None, "import random, numpy as np\nrandom.seed(1)\nnp.random.seed(3)\n"
                        "print(random.random(), np.random.rand())")])
    res = tree.run([(1, 0, "print(random.random(), np.random.rand())")])[0]
    assert res.exec.reused_state
    assert outcome(res) == outcome(tree.rerun([1])[0])
    ipool.release(tree.key)


def test_output_cap_counts_the_whole_path(ipool):
    tree = Tree(ipool)
    big = "print('x' * 30000)"
    res = [tree.run([(i, i - 1 if i else None, big)])[0] for i in range(3)]
    assert [r.status for r in res] == ["ok", "ok", "output_limit"]
    assert res[1].exec.reused_state and res[2].exec.reused_state
    assert [outcome(r) for r in res] == [outcome(r) for r in tree.rerun([0, 1, 2])]
    ipool.release(tree.key)


# ------------------------------------------------------------ isolation


SIBLINGS = """\
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
mine = {os.getpid(), os.getppid()}
states = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in mine
          and open(f'/proc/{p}/comm').read() == 'rstar-state\\n']
report = {'states': len(states)}
for p in states:
    report.setdefault('ptrace', set()).add(libc.ptrace(16, p, 0, 0))      # PTRACE_ATTACH
    report.setdefault('seize', set()).add(libc.ptrace(0x4206, p, 0, 0))   # PTRACE_SEIZE
    for f in ('mem', 'environ', 'maps', 'fd'):
        try:
            os.listdir(f'/proc/{p}/fd') if f == 'fd' else open(f'/proc/{p}/{f}', 'rb').read(1)
            report.setdefault('opened', set()).add(f)
        except OSError as e:
            report.setdefault('refused', set()).add(type(e).__name__)
    buf = ctypes.create_string_buffer(8)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
    report.setdefault('vm_readv', set()).add(libc.syscall(310, p, iov, 1, iov, 1, 0))
    for sig in (signal.SIGSTOP, signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):
        os.kill(p, sig)
    os.killpg(p, signal.SIGKILL)
for target in (-1, 1):
    os.kill(target, signal.SIGKILL)
open('/tmp/shared', 'w').write('from another tree')
print(sorted((k, sorted(v) if isinstance(v, set) else v) for k, v in report.items()))
"""


def test_programs_cannot_touch_other_states(ipool):
    """A program (a step forked from a state, and a plain one) cannot ptrace, read the
    memory of, or signal another tree's states (or kill the worker); files it leaves in
    /tmp are gone for everyone else; the other tree's states still serve, untouched."""
    a = Tree(ipool)
    a.run([(0, None, "secret = 'A-' + str(6 * 7)\nimport os\nopen('/tmp/mine', 'w').write('x')")])
    a.run([(1, 0, "secret += '!'")])
    assert info(ipool)["states"] >= 2
    b = Tree(ipool)
    b.run([(0, None, "b = 1")])
    hostile = [b.run([(1, 0, SIBLINGS)])[0].exec, ipool.run([SIBLINGS])[0]]
    for r in hostile:
        assert r.status == "ok", r
        report = dict(eval(r.stdout))  # noqa: S307 - our own program's printout
        assert report["states"] >= 2
        assert report["ptrace"] == [-1] and report["seize"] == [-1] and report["vm_readv"] == [-1]
        assert "opened" not in report and report["refused"] == ["PermissionError"]
    assert hostile[0].reused_state
    # the other tree's states are alive and unchanged: its steps fork from them
    res = a.run([(2, 1, "import os\nprint(secret, os.path.exists('/tmp/mine'), os.path.exists('/tmp/shared'))"),
                 (3, 0, "print(secret)")])
    assert [r.output for r in res] == ["A-42! False False\n", "A-42\n"]
    assert all(r.exec.reused_state for r in res)
    assert ipool.run(["print('worker fine')"])[0].stdout == "worker fine\n"
    ipool.release(a.key)
    ipool.release(b.key)


def test_killing_its_own_parent_state_costs_only_a_fallback(ipool):
    t = Tree(ipool)
    t.run([(0, None, "x = 41")])
    res = t.run([(1, 0, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('after', x)"),
                 (2, 0, "print(x + 1)")])
    assert [r.output for r in res] == ["after 41\n", "42\n"]
    assert [r.exec.stdout for r in res] == ["after 41\n", "42\n"]
    # the parent was gone: re-run (the killer itself may have killed it before it said
    # which pid it forked: then the killer's step re-ran too, with the same result)
    assert not res[1].exec.reused_state
    # and the program that killed it is a state of its own
    assert t.run([(3, 1, "print(x * 2)")])[0].exec.reused_state
    ipool.release(t.key)


def test_timeouts_and_memory_kills_leave_the_parent_usable(ipool):
    t = Tree(ipool)
    t.run([(0, None, "x = 41\nkeep = bytearray(50 * 1024 * 1024)")])
    res = t.run([(1, 0, "while True: pass"),
                 (2, 0, "import time\ntime.sleep(30)"),
                 (3, 0, "a = bytearray(3 * 1024**3)"),
                 (4, 0, "import os\nos._exit(5)"),
                 (5, 0, "print(x + 1, len(keep))")], timeout_s=1.0)
    assert [r.status for r in res] == ["timeout", "timeout", "memory", "error", "ok"], res
    assert all(r.exec.reused_state for r in res)
    assert res[-1].output == f"42 {50 * 1024 * 1024}\n"
    assert [outcome(r) for r in res] == [outcome(r) for r in t.rerun(list(range(1, 6)), timeout_s=1.0)]
    ipool.release(t.key)


def test_limits_apply_to_each_step(ipool):
    """Each step's run has the whole wall-clock limit (re-running the path would not)."""
    t = Tree(ipool)
    step = "import time\ntime.sleep(0.6)\nprint('step')"
    res = [t.run([(i, i - 1 if i else None, step)], timeout_s=1.5)[0] for i in range(3)]
    assert [r.status for r in res] == ["ok"] * 3 and res[2].exec.reused_state
    assert t.rerun([2], timeout_s=1.5)[0].status == "timeout"  # documented difference
    ipool.release(t.key)


# -------------------------------------------------- bounds, release, faults


def _all_pids(pool) -> list[tuple[int, str, str]]:
    prog = ("import os\nout = []\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n"
            "            s = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0]\n"
            "            out.append((int(p), s, open(f'/proc/{p}/comm').read().strip()))\n"
            "        except OSError:\n            pass\nprint(sorted(out))")
    return eval(pool.run([prog])[0].stdout)  # noqa: S307


def test_release_leaves_no_process(ipool):
    t = Tree(ipool)
    t.run([(0, None, "x = 0")])
    t.run([(i, 0, f"x = {i}") for i in range(1, 9)])
    t.run([(10 + i, i, f"y = x + {i}") for i in range(1, 9)])
    states = info(ipool)["state_pids"]
    before = {p for p, _, _ in _all_pids(ipool)}
    assert len(states) >= 17 and set(states) <= before
    ipool.release(t.key, nodes=[11, 12, 999])  # some nodes (and one it never had)
    left = {p for p, _, _ in _all_pids(ipool)}
    assert len(set(states) - left) == 2
    res = t.run([(20, 13, "print(y)"), (21, 11, "print(y)")])
    assert [r.output for r in res] == ["6\n", "2\n"]
    assert res[0].exec.reused_state and not res[1].exec.reused_state
    ipool.release(t.key)
    ipool.release("never-seen")
    ipool.release(t.key)
    procs = _all_pids(ipool)
    assert not set(states) & {p for p, _, _ in procs}
    assert [s for _, s, _ in procs if s == "Z"] == []
    assert len(procs) == 3 + info(ipool)["states"], procs  # worker, zygote, the program


def test_eviction_falls_back_to_reexecution(ipool):
    t = Tree(ipool)
    chain = [f"v{i} = {i} + globals().get('v{i - 1}', 0)\nprint(v{i})" for i in range(MAX_STATES + 8)]
    res = [t.run([(i, i - 1 if i else None, c)])[0] for i, c in enumerate(chain)]
    assert all(r.exec.reused_state for r in res[1:])
    assert info(ipool)["states"] <= MAX_STATES
    # the oldest states were evicted: a child of the root re-runs its path
    res = t.run([(100, 0, "print(v0 + 1000)"), (101, len(chain) - 1, f"print(v{len(chain) - 1})")])
    assert [r.output for r in res] == ["1000\n", f"{sum(range(len(chain)))}\n"]
    assert [r.exec.reused_state for r in res] == [False, True]
    ipool.release(t.key)


def test_container_replaced_mid_search(ipool):
    from rstar.sandbox import engine

    t = Tree(ipool)
    t.run([(0, None, "x = 5")])
    t.run([(1, 0, "y = x * 2")])
    victim = ipool.container_ids[0]

    def kill_soon():
        time.sleep(1.0)
        engine.connect().api.kill(victim)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    res = t.run([(2, 1, "import time\ntime.sleep(4)\nprint(y)"), (3, 1, "print(y + 1)"), (4, 0, "print(x)")],
                timeout_s=10)
    killer.join()
    assert [r.status for r in res] == ["sandbox_error", "ok", "ok"], res
    assert [r.output for r in res[1:]] == ["11\n", "5\n"]
    assert not any(r.exec.reused_state for r in res[1:])  # a new container: the paths re-ran
    assert victim not in ipool.container_ids
    # and the tree goes on, forking from the states the re-runs left
    res = t.run([(5, 3, "print(y + 2)")])
    assert res[0].output == "12\n" and res[0].exec.reused_state
    ipool.release(t.key)


def test_bounds_under_a_1000_node_tree(ipool):
    """1,000 nodes (random parents, plain and sympy steps, some failing): the states
    stay within the count, pids and memory bounds all along, and a sample of the
    results equals re-execution."""
    rng = random.Random(7)
    t = Tree(ipool)
    kinds = [STEP_KINDS[k] for k in ("plain", "quiet", "sympy", "error")]
    nodes, frontier = [], []
    for i in range(1000):
        parent = rng.choice(frontier[-16:]) if frontier and rng.random() < 0.95 else None
        kind = rng.choices(kinds, weights=(5, 3, 1, 1))[0]
        nodes.append((i, parent, kind(rng.randint(1, 5)) + f"\n# node {i}"))
        frontier.append(i)
    depth = {}
    for i, p, _ in nodes:
        depth[i] = 0 if p is None else depth[p] + 1
    got = {}
    peak = {"states": 0, "tasks": 0, "memory": 0}
    cfg = ipool.config
    for start in range(0, 1000, 50):
        batch = sorted(nodes[start:start + 50], key=lambda x: depth[x[0]])
        for d in sorted({depth[x[0]] for x in batch}):
            level = [x for x in batch if depth[x[0]] == d]
            for (i, _, _), r in zip(level, t.run(level)):
                got[i] = r
        s = info(ipool)
        assert s["states"] <= MAX_STATES
        peak["states"] = max(peak["states"], s["states"])
        if s["tasks"] is not None:
            assert s["tasks"] <= cfg.container_pids_limit()
            peak["tasks"] = max(peak["tasks"], s["tasks"])
        if s["memory"] is not None and s["memory_base"] is not None:
            used = (s["memory"] - s["memory_base"]) / 2**20
            assert used <= STATE_MEMORY_MB + 64, used  # the budget, plus page cache and the worker's own
            peak["memory"] = max(peak["memory"], used)
    assert sum(r.exec.reused_state for r in got.values()) > 300
    sample = rng.sample(range(1000), 40)
    for i, r in zip(sample, t.rerun(sample)):
        assert outcome(got[i]) == outcome(r), (i, t.code[i])
    ipool.release(t.key)
    print(f"peak: {peak}; reused {sum(r.exec.reused_state for r in got.values())} of 1000")


def test_concurrent_trees_from_threads(ipool):
    """Trees driven from several threads at once get their own results."""
    out: dict[int, list[str]] = {}

    def work(k: int) -> None:
        t = Tree(ipool)
        outs = []
        for i in range(6):
            outs.append(t.run([(i, i - 1 if i else None, f"v = globals().get('v', {k}) * 2\nprint(v)")])[0].output)
        ipool.release(t.key)
        out[k] = outs

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(1, 5):
        assert out[k] == [f"{k * 2 ** (i + 1)}\n" for i in range(6)]


def test_reexecution_mode_ignores_nodes():
    from rstar.sandbox import SandboxConfig, SandboxPool

    with SandboxPool(size=1, config=SandboxConfig(image=IMAGE, incremental=False)) as p:
        assert not p.incremental
        t = Tree(p)
        res = [t.run([(i, i - 1 if i else None, f"x = {i}\nprint(x)")])[0] for i in range(3)]
        assert [r.output for r in res] == ["0\n", "1\n", "2\n"]
        assert not any(r.exec.reused_state for r in res)
        p.release(t.key)  # harmless
