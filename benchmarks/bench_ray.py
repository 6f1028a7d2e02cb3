"""Scale-out on Ray: the cost of going through Ray, and a node lost halfway.

One scripted-policy workload (``rstar.demo_scripts``: deterministic steps,
every step run in the real Docker sandbox, gold-rewarded MCTS), in one process:

1. **local**: ``run_dataset`` without Ray: one search, one sandbox pool of
   ``--nodes`` containers, ``--nodes x --concurrent`` problems in flight.
2. **ray**: the same problems through ``run_dataset(..., ray=ADDRESS)`` on a
   local multi-node Ray cluster (``ray.cluster_utils.Cluster``) with the same
   total resources: ``--nodes`` nodes of one CPU, one worker per node, each
   with one container and ``--concurrent`` problems in flight.
   ``ray_overhead = ray_wall / local_wall - 1`` (cluster start-up excluded:
   it is paid once per cluster, not per run; worker start-up included, as
   the local run's pool start-up is). ``--repeat N`` alternates N local and
   N Ray runs, the cluster up (idle) during the local ones too, and compares
   the medians. ``worker_start_s``: from the start of a Ray run until its last
   worker (a fresh process: imports, its sandbox pool, the policy) answered.
3. **fault**: a cluster of ``--nodes + 1`` nodes; when half of the problems
   are done, a worker node holding problems is removed. ``lost`` (problems
   never written), ``duplicated`` (written twice), ``recovery_s`` (from the
   removal until the last problem the lost worker held is written by
   another), and the run's wall time.

Both runs write results.jsonl through the same writer; their trees are checked
equal (answers and node texts), so the comparison is of the same work.

    python benchmarks/bench_ray.py                  # 60 problems, 2 nodes
    python benchmarks/bench_ray.py --json           # {ray_overhead, lost, duplicated, ...}
    python benchmarks/bench_ray.py --model scripted:rstar.demo_scripts:gsm8k_arithmetic_paced
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MB = 1024 ** 2


def make_recipe(args, concurrent: int):
    from rstar.recipe import Recipe
    from rstar.search.config import SearchConfig

    cfg = SearchConfig(rollouts=args.rollouts, children=args.children, max_depth=6,
                       concurrent_problems=concurrent, seed=0)
    return Recipe(algo="mcts", scorer="gold", model=args.model, search=cfg, sandbox={"size": args.sandbox})


def write_data(path: Path, n: int) -> Path:
    from rstar.demo_scripts import arithmetic_problems

    path.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_problems(n)))
    return path


def read(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]


def signature(r: dict) -> tuple:
    return (r["id"], r["answer"], tuple(n["text"] for n in r["tree"]["nodes"]))


def start_cluster(nodes: int):
    from ray.cluster_utils import Cluster

    from rstar.distributed import init_ray

    spec = {"num_cpus": 1, "object_store_memory": 80 * MB}
    t0 = time.perf_counter()
    c = Cluster(initialize_head=True, head_node_args={**spec, "include_dashboard": False})
    for _ in range(nodes - 1):
        c.add_node(**spec)
    c.wait_for_nodes()
    # init_ray keeps the working directory (a checkout of the sources, say) off the workers' path
    init_ray(c.address, log_to_driver=False, logging_level="ERROR", namespace="rstar-bench")
    return c, time.perf_counter() - t0


def stop_cluster(c) -> None:
    import ray

    ray.shutdown()
    c.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--nodes", type=int, default=2, help="nodes of one CPU (the local run gets as many containers)")
    ap.add_argument("--concurrent", type=int, default=4, help="problems in flight per worker")
    ap.add_argument("--sandbox", type=int, default=1, help="containers per worker")
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--model", default="scripted:rstar.demo_scripts:gsm8k_arithmetic")
    ap.add_argument("--repeat", type=int, default=1, help="local/ray pairs, alternating; medians compared")
    ap.add_argument("--no-fault", action="store_true", help="skip the run with a node removed")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    from rstar.distributed import import_ray
    from rstar.runner import run_dataset

    import_ray()  # one line saying how to install Ray when it is missing
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    data = write_data(tmp / "data.jsonl", args.problems)
    out: dict = {"problems": args.problems, "nodes": args.nodes, "model": args.model,
                 "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    # 1 + 2: local and through Ray, alternating, with the cluster up for both (same background)
    local_recipe = make_recipe(args, args.concurrent * args.nodes)
    local_recipe.sandbox = {"size": args.sandbox * args.nodes}
    cluster, start_s = start_cluster(args.nodes)
    local_walls, ray_walls, starts, same = [], [], [], True
    try:
        for k in range(args.repeat):
            t0 = time.perf_counter()
            run_dataset(data, tmp / f"local{k}", local_recipe, progress=False)
            local_walls.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_dataset(data, tmp / f"ray{k}", make_recipe(args, args.concurrent), progress=False,
                        ray=cluster.address)
            ray_walls.append(time.perf_counter() - t0)
            actors = json.loads((tmp / f"ray{k}" / "run.json").read_text())["cluster"]["actors"]
            starts.append(max(a["ready_s"] or 0.0 for a in actors))
            same = same and (sorted(map(signature, read(tmp / f"ray{k}")))
                             == sorted(map(signature, read(tmp / f"local{k}"))))
            say(f"run {k + 1}: local {local_walls[-1]:.2f}s ({args.sandbox * args.nodes} containers, "
                f"{args.concurrent * args.nodes} in flight), ray {ray_walls[-1]:.2f}s ({args.nodes} nodes x 1 CPU, "
                f"{args.sandbox} container and {args.concurrent} in flight each; the last worker ready after "
                f"{starts[-1]:.1f}s)")
    finally:
        stop_cluster(cluster)
    local_wall, ray_wall = statistics.median(local_walls), statistics.median(ray_walls)
    out.update(local_wall_s=round(local_wall, 3), ray_wall_s=round(ray_wall, 3),
               local_walls_s=[round(x, 3) for x in local_walls], ray_walls_s=[round(x, 3) for x in ray_walls],
               ray_overhead=round(ray_wall / local_wall - 1, 4), cluster_start_s=round(start_s, 2),
               worker_start_s=round(statistics.median(starts), 3),
               same_results=same)
    say(f"median of {args.repeat}: local {local_wall:.2f}s, ray {ray_wall:.2f}s: overhead "
        f"{100 * out['ray_overhead']:+.1f}% (cluster start-up {start_s:.1f}s, not counted); "
        f"results {'identical' if same else 'DIFFER'}")

    # 3. one node removed halfway
    if not args.no_fault:
        from rstar.distributed import run_on_ray
        from rstar.results import read_problems

        cluster, _ = start_cluster(args.nodes + 1)
        head = cluster.head_node.node_id
        by_id = {n.node_id: n for n in cluster.worker_nodes}
        writes: list[str] = []
        at: dict = {}

        def on_result(r: dict) -> None:
            writes.append(r["id"])
            if r["id"] in at.get("held_ids", ()):
                at["last_moved"] = time.perf_counter()

        def progress(ev: dict) -> None:
            if ev["event"] == "result" and "removed" not in at and ev["done"] >= args.problems // 2:
                node = ev.get("node_id")
                if node != head and node in by_id and ev["held"] > 0:
                    at["removed"] = time.perf_counter()
                    cluster.remove_node(by_id[node])
            elif ev["event"] == "lost" and "removed" in at and "held_ids" not in at:
                at["held_ids"] = set(ev["ids"])
                at["detected"] = time.perf_counter()

        problems = list(read_problems(data))
        try:
            t0 = time.perf_counter()
            info = run_on_ray(problems, make_recipe(args, args.concurrent), cluster.address, on_result, progress)
            fault_wall = time.perf_counter() - t0
        finally:
            stop_cluster(cluster)
        lost = len(set(p.id for p in problems) - set(writes))
        dup = len(writes) - len(set(writes))
        moved = len(at.get("held_ids", ()))
        recovery = (at.get("last_moved", at.get("detected", 0)) - at["removed"]) if "removed" in at else None
        out.update(lost=lost, duplicated=dup, requeued=info["requeued"], lost_workers=info["lost_workers"],
                   moved_problems=moved,
                   detect_s=round(at["detected"] - at["removed"], 3) if "detected" in at else None,
                   recovery_s=round(recovery, 3) if recovery is not None else None,
                   fault_wall_s=round(fault_wall, 3))
        say(f"fault: a node removed after {args.problems // 2} of {args.problems} problems: lost {lost}, "
            f"duplicated {dup}, {moved} problems moved; loss noticed in {out['detect_s']}s, "
            f"moved problems all written {out['recovery_s']}s after the removal; run {fault_wall:.2f}s")
    out["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
