"""Sandbox throughput and latency against the alternatives, in one run on one machine.

Methods, each on a short arithmetic step program and on a program that imports
sympy and solves an equation:

    pool        SandboxPool (warm containers, fork per program) - isolated
    docker-exec `docker exec CONTAINER python3 -c PROGRAM` per program - isolated
    subprocess  a fresh `python3 -c PROGRAM` per program - no isolation
    in-process  exec() in this interpreter (what rStar does) - no isolation

Throughput runs programs with as many in flight as there are cores (the pool:
one batch of distinct programs); latency is measured one program at a time.

Incremental execution (both modes, same run, same workload): search paths of
depth 2, 4, 6 and 8 whose steps are plain arithmetic or sympy computations
(solve / simplify / Rational on earlier steps' variables). For each depth, trees
whose prefix (depth - 1 steps) has run, then one batch of new last steps, each a
distinct child: in re-execution mode (incremental off) every step re-runs its
whole path; in incremental mode it forks its parent step's live state. Steps/s
over the batch, p50/p99 of one step at a time. The floor of the fork-per-program
design is measured in the same run: a bare fork + exit of each tier's process
(and of a sympy state), timed inside the container.

    python benchmarks/bench_sandbox.py [--json] [--n 2000] [--size N] [--only-incremental]

With --json the last line is one JSON object: execs_per_s, p50_ms, p99_ms (the
pool, plain program), speedup_vs_subprocess, speedup_vs_subprocess_sympy,
incremental_speedup_sympy_depth6, the per-depth figures of both modes, the
fork floor, and per-method figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PLAIN = "# Step 1: the clips sold in May are half of April's\nmay = 48 / 2\ntotal = 48 + may\nprint(total)"
SYMPY = ("from sympy import symbols, solve\n"
         "x = symbols('x')\n"
         "print(solve(x**2 - 7*x + 12, x))")
CORES = os.cpu_count() or 1


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]


def summary(name: str, prog: str, n: int, wall: float, lat: list[float]) -> dict:
    return {"method": name, "program": prog, "n": n, "execs_per_s": n / wall,
            "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000, "mean_ms": statistics.mean(lat) * 1000}


def concurrently(fn, programs: list[str]) -> tuple[float, list[float]]:
    lat: list[float] = []

    def one(p: str) -> None:
        t = time.perf_counter()
        fn(p)
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CORES) as ex:
        list(ex.map(one, programs))
    return time.perf_counter() - t0, lat


def bench_pool(pool, prog: str, n: int, n_lat: int) -> dict:
    programs = [f"{prog}\n# {i}" for i in range(n)]  # distinct: no deduplication
    pool.run(programs[: 4 * pool.size])  # warm
    t0 = time.perf_counter()
    res = pool.run(programs)
    wall = time.perf_counter() - t0
    bad = [r for r in res if r.status != "ok"]
    if bad:
        raise SystemExit(f"pool: {len(bad)} programs failed, e.g. {bad[0]}")
    lat = []
    for i in range(n_lat):  # one program at a time: the round trip
        t = time.perf_counter()
        pool.run([f"{prog}\n# lat {i}"])
        lat.append(time.perf_counter() - t)
    out = summary("pool", "", n, wall, lat)
    out["in_container_ms_p50"] = pct([r.duration_s for r in res], 50) * 1000
    return out


def bench_docker_exec(cid: str, prog: str, n: int) -> dict:
    def run(p: str) -> None:
        out = subprocess.run(["docker", "exec", cid, "python3", "-c", p], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"docker exec failed: {out.stderr[-300:]}")

    wall, lat = concurrently(run, [prog] * n)
    return summary("docker-exec", "", n, wall, lat)


def bench_subprocess(prog: str, n: int) -> dict:
    def run(p: str) -> None:
        out = subprocess.run([sys.executable, "-c", p], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"python -c failed: {out.stderr[-300:]}")

    wall, lat = concurrently(run, [prog] * n)
    return summary("subprocess", "", n, wall, lat)


def bench_inprocess(prog: str, n: int) -> dict:
    code = compile(prog, "<step>", "exec")
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, {"__name__": "__main__"})
        lat.append(time.perf_counter() - t)
    return summary("in-process", "", n, time.perf_counter() - t0, lat)


# ------------------------------------------------------------ incremental

DEPTHS = (2, 4, 6, 8)


def plain_step(k: int) -> str:
    if k == 0:
        return "# Step 1: the clips sold in April\nv0 = 48\nprint(v0)"
    return f"# Step {k + 1}: scale and add\nv{k} = v{k - 1} * 3 // 2 + {k}\nprint(v{k})"


def sympy_step(k: int) -> str:
    if k == 0:
        return ("from sympy import symbols, solve, simplify, Rational, expand\n"
                "x = symbols('x')\ne0 = x**2 - 5*x + 6\nr0 = solve(e0, x)\nprint(r0)")
    op = k % 3
    if op == 1:
        return f"r{k} = solve(e{k - 1} - {k}, x)\ne{k} = expand(e{k - 1} + Rational({k}, 3) * x)\nprint(r{k})"
    if op == 2:
        return (f"e{k} = simplify((e{k - 1} * (x + {k})) / (x + {k}))\n"
                f"r{k} = [simplify(v * Rational({k}, {k + 1})) for v in r{k - 1}]\nprint(e{k})")
    return f"r{k} = solve(e{k - 1}, x)\ne{k} = e{k - 1} + Rational(1, {k + 1})\nprint(len(r{k}))"


def _paths(kind: str, depth: int, trees: int, children: int) -> tuple[list[list[str]], list[list[str]]]:
    step = plain_step if kind == "plain" else sympy_step
    prefixes = [[step(k) + f"\n# tree {t}" if k == 0 else step(k) for k in range(depth - 1)] for t in range(trees)]
    leaves = [prefixes[t] + [step(depth - 1) + f"\n# child {c}"] for t in range(trees) for c in range(children)]
    return prefixes, leaves


def bench_steps(pool, kind: str, depth: int, trees: int, children: int, n_lat: int, use_nodes: bool) -> dict:
    """Steps/s of one batch of last steps at ``depth``; p50/p99 one step at a time."""
    prefixes, leaves = _paths(kind, depth, trees, children)
    tag = f"{kind}-{depth}-{time.monotonic_ns()}"
    if use_nodes:  # set up the prefix states, level by level (not timed)
        for k in range(depth - 1):
            res = pool.run_steps([p[:k + 1] for p in prefixes],
                                 nodes=[(f"{tag}-{t}", k, k - 1 if k else None) for t in range(trees)])
            if any(not r.valid for r in res):
                raise SystemExit(f"{kind} prefix failed: {res[0]}")
    nodes = [(f"{tag}-{i // children}", 100 + i, depth - 2 if depth > 1 else None) for i in range(len(leaves))]
    t0 = time.perf_counter()
    res = pool.run_steps(leaves, nodes=nodes if use_nodes else None, timeout_s=30)
    wall = time.perf_counter() - t0
    bad = [r for r in res if not r.valid]
    if bad:
        raise SystemExit(f"{kind} depth {depth}: {len(bad)} steps failed, e.g. {bad[0]}")
    lat = []
    for i in range(n_lat):
        t = i % trees
        leaf = prefixes[t] + [sympy_step(depth - 1) if kind == "sympy" else plain_step(depth - 1)]
        leaf[-1] += f"\n# lat {i}"
        t1 = time.perf_counter()
        pool.run_steps([leaf], nodes=[(f"{tag}-{t}", 10000 + i, depth - 2)] if use_nodes else None, timeout_s=30)
        lat.append(time.perf_counter() - t1)
    reused = sum(r.exec.reused_state for r in res)
    if use_nodes:
        for t in range(trees):
            pool.release(f"{tag}-{t}")
    return {"mode": "incremental" if use_nodes else "reexec", "kind": kind, "depth": depth, "n": len(leaves),
            "steps_per_s": len(leaves) / wall, "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
            "in_container_ms_p50": pct([r.exec.duration_s for r in res], 50) * 1000, "reused": reused}


FORK_FLOOR = ("import os, time\n{pre}n = 50\nt0 = time.perf_counter()\nfor _ in range(n):\n"
              "    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n"
              "print((time.perf_counter() - t0) / n * 1000)")


def fork_floor(pool) -> dict:
    """A bare fork + exit, timed inside the container, from a process like each tier's."""
    out = {}
    slim = pool.run([FORK_FLOOR.format(pre="")], timeout_s=60)[0]
    heavy = pool.run([FORK_FLOOR.format(pre="") + "\n# numpy"], timeout_s=60)[0]
    state = pool.run_steps([[sympy_step(k) for k in range(5)] + [FORK_FLOOR.format(pre="")]], timeout_s=60)[0]
    for name, r in (("slim_ms", slim), ("heavy_ms", heavy), ("sympy_state_ms", state.exec)):
        if r.status != "ok":
            raise SystemExit(f"fork floor ({name}) failed: {r}")
        out[name] = float(r.stdout.strip().splitlines()[-1])
    return out


def bench_incremental(args, log) -> dict:
    from rstar.sandbox import SandboxConfig, SandboxPool

    rows = []
    floor = {}
    for use_nodes in (False, True):
        cfg = SandboxConfig(image=args.image, incremental=use_nodes)
        with SandboxPool(size=args.size, config=cfg) as pool:
            if use_nodes and not pool.incremental:
                raise SystemExit("incremental mode is not available on this machine")
            pool.run_steps([["x = 1", "print(x)"]] * 4)  # warm
            if use_nodes:
                floor = fork_floor(pool)
            for kind in ("plain", "sympy"):
                for depth in args.depths:
                    trees, children = (8, args.plain_children) if kind == "plain" else (4, args.sympy_children)
                    r = bench_steps(pool, kind, depth, trees, children, 20 if kind == "plain" else 8, use_nodes)
                    rows.append(r)
                    log(f"  {r['mode']:<11} {kind:<5} depth {depth}: {r['steps_per_s']:7.1f} steps/s  "
                        f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  reused {r['reused']}/{r['n']}")
    get = {(r["mode"], r["kind"], r["depth"]): r for r in rows}
    speed = {f"{kind}_depth{d}": round(get[("incremental", kind, d)]["steps_per_s"]
                                       / get[("reexec", kind, d)]["steps_per_s"], 2)
             for kind in ("plain", "sympy") for d in args.depths}
    print(f"\n{'kind':<6} {'depth':>5} {'reexec/s':>9} {'p50':>7} {'p99':>7} {'incr/s':>9} {'p50':>7} {'p99':>7} {'speedup':>8}")
    for kind in ("plain", "sympy"):
        for d in args.depths:
            a, b = get[("reexec", kind, d)], get[("incremental", kind, d)]
            print(f"{kind:<6} {d:>5} {a['steps_per_s']:>9.1f} {a['p50_ms']:>7.1f} {a['p99_ms']:>7.1f} "
                  f"{b['steps_per_s']:>9.1f} {b['p50_ms']:>7.1f} {b['p99_ms']:>7.1f} {speed[f'{kind}_depth{d}']:>7.2f}x")
    print(f"bare fork + exit inside the container: slim {floor['slim_ms']:.2f} ms, heavy {floor['heavy_ms']:.2f} ms, "
          f"from a sympy path's process {floor['sympy_state_ms']:.2f} ms")
    return {"incremental_speedup_sympy_depth6": speed.get("sympy_depth6"), "incremental_speedups": speed,
            "fork_floor_ms": {k: round(v, 3) for k, v in floor.items()},
            "steps": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--n", type=int, default=2000, help="programs per pool batch")
    ap.add_argument("--size", type=int, default=None, help="pool size (default: cores)")
    ap.add_argument("--image", default="rstar-sandbox:latest")
    ap.add_argument("--depths", type=lambda v: tuple(int(x) for x in v.split(",")), default=DEPTHS,
                    help="path depths of the incremental part (default: 2,4,6,8)")
    ap.add_argument("--plain-children", type=int, default=12, help="plain last steps per tree (8 trees)")
    ap.add_argument("--sympy-children", type=int, default=4, help="sympy last steps per tree (4 trees)")
    ap.add_argument("--only-incremental", action="store_true",
                    help="only the incremental-vs-re-execution part (skip the alternatives)")
    args = ap.parse_args()

    from rstar.sandbox import SandboxConfig, SandboxPool, engine

    rows = []
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log("incremental execution vs re-execution (same workload, both modes):")
    incremental = bench_incremental(args, log)
    if args.only_incremental:
        incremental["load_avg_1m"] = round(os.getloadavg()[0], 2)
        incremental["cores"] = CORES
        if args.json:
            print(json.dumps(incremental))
        return 0
    # the plain pool in re-execution mode: programs without nodes never use states, but
    # the incremental pool confines each program with a seccomp filter: measure both
    with SandboxPool(size=args.size, config=SandboxConfig(image=args.image, incremental=False)) as pool:
        r = bench_pool(pool, PLAIN, args.n, 300)
        r["program"] = "plain"
        r["method"] = "pool-reexec-mode"
        rows.append(r)
        log(f"  pool (incremental off) plain: {r['execs_per_s']:.0f}/s")
    with SandboxPool(size=args.size, config=SandboxConfig(image=args.image)) as pool:
        log(f"pool of {pool.size} containers on {CORES} cores")
        for name, prog in (("plain", PLAIN), ("sympy", SYMPY)):
            r = bench_pool(pool, prog, args.n if name == "plain" else max(200, args.n // 4), 300 if name == "plain" else 100)
            r["program"] = name
            rows.append(r)
            log(f"  pool {name}: {r['execs_per_s']:.0f}/s")

    # docker exec into one long-lived container of the same image (no network)
    client = engine.connect()
    c = client.containers.run(args.image, ["sleep", "3600"], detach=True, network_mode="none",
                              labels={"rstar.bench": "1"}, remove=True, user="65534:65534")
    try:
        for name, prog, n in (("plain", PLAIN, 6 * CORES), ("sympy", SYMPY, 3 * CORES)):
            r = bench_docker_exec(c.id, prog, n)
            r["program"] = name
            rows.append(r)
            log(f"  docker-exec {name}: {r['execs_per_s']:.1f}/s")
    finally:
        c.kill()

    for name, prog, n in (("plain", PLAIN, 10 * CORES), ("sympy", SYMPY, 3 * CORES)):
        r = bench_subprocess(prog, n)
        r["program"] = name
        rows.append(r)
        log(f"  subprocess {name}: {r['execs_per_s']:.1f}/s")
    import sympy  # noqa: F401 - in-process: rStar's setting, sympy already imported
    for name, prog, n in (("plain", PLAIN, 5000), ("sympy", SYMPY, 300)):
        r = bench_inprocess(prog, n)
        r["program"] = name
        rows.append(r)

    get = {(r["method"], r["program"]): r for r in rows}
    print(f"\n{'method':<12} {'program':<7} {'execs/s':>10} {'p50 ms':>9} {'p99 ms':>9}  isolated")
    for r in rows:
        iso = "yes" if r["method"] in ("pool", "docker-exec") else "no"
        print(f"{r['method']:<12} {r['program']:<7} {r['execs_per_s']:>10.1f} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f}  {iso}")
    pool_plain, pool_sympy = get[("pool", "plain")], get[("pool", "sympy")]
    result = {
        "execs_per_s": round(pool_plain["execs_per_s"], 1),
        "p50_ms": round(pool_plain["p50_ms"], 3),
        "p99_ms": round(pool_plain["p99_ms"], 3),
        "speedup_vs_subprocess": round(pool_plain["execs_per_s"] / get[("subprocess", "plain")]["execs_per_s"], 2),
        "speedup_vs_subprocess_sympy": round(pool_sympy["execs_per_s"] / get[("subprocess", "sympy")]["execs_per_s"], 2),
        "speedup_vs_docker_exec": round(pool_plain["execs_per_s"] / get[("docker-exec", "plain")]["execs_per_s"], 2),
        "sympy_execs_per_s": round(pool_sympy["execs_per_s"], 1),
        "sympy_p50_ms": round(pool_sympy["p50_ms"], 3),
        "cores": CORES,
        "pool_size": pool_plain.get("n") and (args.size or CORES),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **incremental,
        "methods": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }
    print(f"\npool vs fresh subprocess: {result['speedup_vs_subprocess']}x plain, "
          f"{result['speedup_vs_subprocess_sympy']}x sympy; vs docker exec: {result['speedup_vs_docker_exec']}x "
          f"(load average {result['load_avg_1m']} on {CORES} cores)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
