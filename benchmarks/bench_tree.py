"""Tree core benchmark: the C++ arena against the pure-Python reference.

One process, one synthetic workload for both: UCT trees, every selected leaf
above the depth limit is expanded with `branch` children, every leaf gets a
random value in [-1, 1] (the same values, in the same order, for both). A
simulation is select + expand + backprop of one leaf. Two ways to drive it:

- batched: one select/expand/backprop call each over `trees` roots x `k` leaves
  (256 x 4 by default: one batched model call's worth);
- single: one simulation per call (select one leaf of one tree, expand it,
  back it up), trees visited round robin.
- churn (16 x 8 only): batched, but each tree lives `--life` rounds and is
  then released and replaced by a fresh root (ages staggered, so every round
  releases and creates trees/life of them): freed slots are reused, and the
  arena's size (`nodes`) stays near the live peak instead of growing with the
  run.

Both implementations run the same number of simulations and must end in the
same state (checked: root visits and value sums, node counts). Each side runs
`--repeat` / `--ref-repeat` times and the MEDIAN rate is reported (wall and
CPU time separately; the best core run is in the JSON as well): the first run
in a process is often slower (fresh memory from the kernel), and a best-of-N
core run against a single reference run would flatter the core. CPU-time
rates (time.process_time) are the ones to compare on a loaded machine.

    python benchmarks/bench_tree.py            # table
    python benchmarks/bench_tree.py --json     # table, then one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from rstar.tree import BYTES_PER_NODE, Forest

# the pure-Python oracle of the core is a test file, not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import tree_reference as reference  # noqa: E402

CONFIGS = [(4, 16), (16, 8), (32, 8)]


def workload_values(trees: int, k: int, rounds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, trees * k * rounds)


def core_batched(branch, depth, trees, k, rounds, values):
    f = Forest()
    roots = f.create_roots(trees)
    sims = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        leaves, _ = f.select(roots, k)
        d = f.view("depth")[leaves]
        grow = leaves[d < depth]
        f.expand(grow, np.full(len(grow), branch, np.int64))
        f.backprop(leaves, values[sims : sims + len(leaves)])
        sims += len(leaves)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return sims, dt, cpu, f


def core_single(branch, depth, trees, k, rounds, values):
    f = Forest()
    roots = [np.array([r], np.int64) for r in f.create_roots(trees)]
    one = np.array([branch], np.int64)
    sims = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(rounds * k):
        for root in roots:
            leaves, _ = f.select(root, 1)
            if len(leaves) == 0:
                continue
            if f.view("depth")[leaves[0]] < depth:
                f.expand(leaves, one)
            f.backprop(leaves, values[sims : sims + 1])
            sims += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return sims, dt, cpu, f


def ref_batched(branch, depth, trees, k, rounds, values):
    f = reference.Forest()
    roots = f.create_roots(trees)
    vals = values.tolist()
    nodes = f.nodes
    sims = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        leaves, _ = f.select(roots, k)
        grow = [x for x in leaves if nodes[x].depth < depth]
        f.expand(grow, [branch] * len(grow))
        f.backprop(leaves, vals[sims : sims + len(leaves)])
        sims += len(leaves)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return sims, dt, cpu, f


def ref_single(branch, depth, trees, k, rounds, values):
    f = reference.Forest()
    roots = [[r] for r in f.create_roots(trees)]
    vals = values.tolist()
    nodes = f.nodes
    one = [branch]
    sims = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(rounds * k):
        for root in roots:
            leaves, _ = f.select(root, 1)
            if not leaves:
                continue
            if nodes[leaves[0]].depth < depth:
                f.expand(leaves, one)
            f.backprop(leaves, vals[sims : sims + 1])
            sims += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return sims, dt, cpu, f


CHURN = {}  # the churn runs' final roots and live peak (the core's Forest takes no attributes)


def core_churn(branch, depth, trees, k, rounds, values, life):
    f = Forest()
    roots = f.create_roots(trees)
    age = np.arange(trees) % life
    sims = peak = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        leaves, _ = f.select(roots, k)
        d = f.view("depth")[leaves]
        grow = leaves[d < depth]
        f.expand(grow, np.full(len(grow), branch, np.int64))
        f.backprop(leaves, values[sims : sims + len(leaves)])
        sims += len(leaves)
        peak = max(peak, f.num_live)
        age += 1
        done = age >= life
        f.release(roots[done])
        roots[done] = f.create_roots(int(done.sum()))
        age[done] = 0
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    CHURN.update(core_roots=roots.tolist(), live_peak=peak)
    return sims, dt, cpu, f


def ref_churn(branch, depth, trees, k, rounds, values, life):
    f = reference.Forest()
    roots = f.create_roots(trees)
    age = [i % life for i in range(trees)]
    vals = values.tolist()
    nodes = f.nodes
    sims = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        leaves, _ = f.select(roots, k)
        grow = [x for x in leaves if nodes[x].depth < depth]
        f.expand(grow, [branch] * len(grow))
        f.backprop(leaves, vals[sims : sims + len(leaves)])
        sims += len(leaves)
        age = [a + 1 for a in age]
        done = [i for i, a in enumerate(age) if a >= life]
        f.release([roots[i] for i in done])
        for i, r in zip(done, f.create_roots(len(done))):
            roots[i], age[i] = r, 0
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    CHURN.update(ref_roots=list(roots))
    return sims, dt, cpu, f


def same_state(core: Forest, ref: reference.Forest, trees: int, churn: bool = False) -> bool:
    if core.num_nodes != ref.num_nodes or core.num_live != ref.num_live:
        return False
    roots = CHURN["ref_roots"] if churn else list(range(trees))
    if churn and CHURN["core_roots"] != roots:
        return False
    rv = [ref.nodes[i].visits for i in roots]
    rw = [ref.nodes[i].value_sum for i in roots]
    return core.view("visits")[roots].tolist() == rv and core.view("value_sum")[roots].tolist() == rw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", type=int, default=256)
    ap.add_argument("--k", type=int, default=4, help="leaves per tree per batched call")
    ap.add_argument("--rounds", type=int, default=64, help="batched calls (single mode: same simulations)")
    ap.add_argument("--repeat", type=int, default=5, help="core runs per case (the median is reported)")
    ap.add_argument("--ref-repeat", type=int, default=1,
                    help="reference runs per case (the median is reported; each takes seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--life", type=int, default=16, help="churn mode: rounds a tree lives before it is released")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)

    print(f"tree core benchmark: {args.trees} trees x {args.k} leaves/call x {args.rounds} rounds "
          f"= {args.trees * args.k * args.rounds} simulations per case; UCT; python {platform.python_version()}")
    print(f"bytes per node: {BYTES_PER_NODE} (struct of arrays); load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores (wall rates suffer when it exceeds 1; /cpu-s rates count this process's CPU time)")
    header = (f"{'branch x depth':>14} {'mode':>8} {'core sims/s':>13} {'python sims/s':>14} {'speedup':>8} "
              f"{'core /cpu-s':>12} {'python /cpu-s':>14} {'speedup':>8} {'nodes':>9} {'same':>5}")
    print(header)
    print("-" * len(header))
    results = []
    churn = (lambda fn: lambda *a: fn(*a, args.life))
    for branch, depth in CONFIGS:
        values = workload_values(args.trees, args.k, args.rounds, args.seed)
        modes = [("batched", core_batched, ref_batched), ("single", core_single, ref_single)]
        if (branch, depth) == (16, 8):
            modes.append(("churn", churn(core_churn), churn(ref_churn)))
        for mode, core_fn, ref_fn in modes:
            core_runs = []
            f = None
            for _ in range(max(1, args.repeat)):
                del f  # one arena alive at a time
                sims, dt, cpu, f = core_fn(branch, depth, args.trees, args.k, args.rounds, values)
                core_runs.append((sims / dt, sims / cpu))
            core_rate = statistics.median(r[0] for r in core_runs)
            core_cpu_rate = statistics.median(r[1] for r in core_runs)
            ref_runs = []
            rf = None
            for _ in range(max(1, args.ref_repeat)):
                del rf
                rsims, rdt, rcpu, rf = ref_fn(branch, depth, args.trees, args.k, args.rounds, values)
                ref_runs.append((rsims / rdt, rsims / rcpu))
            ref_rate = statistics.median(r[0] for r in ref_runs)
            ref_cpu_rate = statistics.median(r[1] for r in ref_runs)
            same = rsims == sims and same_state(f, rf, args.trees, mode == "churn")
            alloc = f.capacity * BYTES_PER_NODE / f.num_nodes
            extra = {"live_peak": CHURN["live_peak"], "life": args.life} if mode == "churn" else {}
            row = {
                "branch": branch, "depth": depth, "mode": mode, "sims": sims,
                "core_sims_per_s": round(core_rate), "python_sims_per_s": round(ref_rate),
                "speedup": round(core_rate / ref_rate, 1), "nodes": f.num_nodes,
                "core_sims_per_cpu_s": round(core_cpu_rate), "python_sims_per_cpu_s": round(ref_cpu_rate),
                "core_runs": len(core_runs), "python_runs": len(ref_runs),
                "core_best_sims_per_s": round(max(r[0] for r in core_runs)),
                "core_best_sims_per_cpu_s": round(max(r[1] for r in core_runs)),
                "speedup_cpu": round(core_cpu_rate / ref_cpu_rate, 1),
                "allocated_bytes_per_node": round(alloc, 1), "same_result": same, **extra,
            }
            results.append(row)
            print(f"{branch:>6} x {depth:<6} {mode:>8} {core_rate:>13,.0f} {ref_rate:>14,.0f} "
                  f"{core_rate / ref_rate:>7.1f}x {core_cpu_rate:>12,.0f} {ref_cpu_rate:>14,.0f} "
                  f"{core_cpu_rate / ref_cpu_rate:>7.1f}x {f.num_nodes:>9,} {str(same):>5}")
            del f, rf
    key = next(r for r in results if (r["branch"], r["depth"], r["mode"]) == (16, 8, "batched"))
    churn_row = next(r for r in results if r["mode"] == "churn")
    summary = {
        "sims_per_s": key["core_sims_per_s"],
        "speedup_vs_python": key["speedup"],
        "bytes_per_node": BYTES_PER_NODE,
        "python_sims_per_s": key["python_sims_per_s"],
        "sims_per_cpu_s": key["core_sims_per_cpu_s"],
        "speedup_vs_python_cpu": key["speedup_cpu"],
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "rates": f"median of {args.repeat} core / {args.ref_repeat} reference runs",
        "workload": {"trees": args.trees, "k": args.k, "rounds": args.rounds, "branch": 16, "depth": 8},
        "all_same_result": all(r["same_result"] for r in results),
        "churn": {"sims_per_s": churn_row["core_sims_per_s"], "speedup_vs_python": churn_row["speedup"],
                  "nodes": churn_row["nodes"], "live_peak": churn_row["live_peak"],
                  "nodes_without_release": key["nodes"]},
        "cases": results,
    }
    print(f"churn: arena {churn_row['nodes']:,} slots for a live peak of {churn_row['live_peak']:,} nodes "
          f"(without release the same simulations grow it to {key['nodes']:,})")
    print(f"targets: >= 1,000,000 sims/s: {key['core_sims_per_s']:,}; >= 100x python: {key['speedup']}x; "
          f"<= 48 bytes/node: {BYTES_PER_NODE}")
    if args.json:
        sys.stdout.flush()
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
