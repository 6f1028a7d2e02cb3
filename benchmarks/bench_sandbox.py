"""Sandbox throughput and latency against the alternatives, in one run on one machine.

Methods, each on a short arithmetic step program and on a program that imports
sympy and solves an equation:

    pool        SandboxPool (warm containers, fork per program) - isolated
    docker-exec `docker exec CONTAINER python3 -c PROGRAM` per program - isolated
    subprocess  a fresh `python3 -c PROGRAM` per program - no isolation
    in-process  exec() in this interpreter (what rStar does) - no isolation

Throughput runs programs with as many in flight as there are cores (the pool:
one batch of distinct programs); latency is measured one program at a time.

    python benchmarks/bench_sandbox.py [--json] [--n 2000] [--size N]

With --json the last line is one JSON object: execs_per_s, p50_ms, p99_ms (the
pool, plain program), speedup_vs_subprocess, speedup_vs_subprocess_sympy, and
per-method figures.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--n", type=int, default=2000, help="programs per pool batch")
    ap.add_argument("--size", type=int, default=None, help="pool size (default: cores)")
    ap.add_argument("--image", default="rstar-sandbox:latest")
    args = ap.parse_args()

    from rstar.sandbox import SandboxConfig, SandboxPool, engine

    rows = []
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
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
