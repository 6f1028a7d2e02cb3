"""`rstar run --ray` on a real multi-node Ray cluster started on this host.

The cluster (ray.cluster_utils.Cluster: a head and two worker nodes, one CPU
each, each a real raylet with its own worker processes) is shared by the
module. The policy is a deterministic script (rstar.demo_scripts), every step
runs in the real Docker sandbox. Checked: the same results as a local run with
the same seed; a node removed mid-run loses nothing and writes nothing twice;
a driver killed mid-run and resumed ends with every problem exactly once; and
`--ray` without Ray installed says how to install it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _sandbox_helpers import require_sandbox
from conftest import need, rstar_cmd, spawn, tail, write_data
from rstar.demo_scripts import arithmetic_problems

pytestmark = [pytest.mark.docker]

SCRIPT = "scripted:rstar.demo_scripts:gsm8k_arithmetic"
PACED = "scripted:rstar.demo_scripts:gsm8k_arithmetic_paced"
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 ** 2}


@pytest.fixture(scope="module")
def cluster():
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        need("Ray", 'pip install "rstar[ray]"')
    from rstar.distributed import init_ray

    require_sandbox()
    # driven from wherever pytest runs, the repository root included: init_ray keeps the driver's
    # working directory (a source tree without the compiled core) off the workers' path
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(**NODE)
        c.wait_for_nodes()
        init_ray(c.address, log_to_driver=False, logging_level="ERROR", namespace="rstar-tests")
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def recipe(model: str = SCRIPT, concurrent: int = 2):
    from rstar.recipe import Recipe
    from rstar.search.config import SearchConfig

    cfg = SearchConfig(rollouts=4, children=4, max_depth=6, concurrent_problems=concurrent, seed=11)
    return Recipe(algo="mcts", scorer="gold", model=model, search=cfg, sandbox={"size": 1})


def problems(n: int, seed: int = 0):
    from rstar.demo_scripts import arithmetic_problems
    from rstar.results import Problem

    return [Problem(r["id"], r["question"], r["answer"]) for r in arithmetic_problems(n, seed)]


def tree_signature(result: dict) -> dict:
    """What must not depend on where a problem ran: the answer and the whole tree but timings."""
    nodes = [{k: n.get(k) for k in ("id", "parent", "depth", "visits", "q", "kind", "status", "text", "code",
                                    "output", "answer", "correct", "terminal")} for n in result["tree"]["nodes"]]
    keep = ("id", "question", "gold", "answer", "correct", "grade", "selection", "chosen", "pass_at_k",
            "num_terminal", "rollouts", "nodes", "tokens", "solution", "prompt", "seed")
    return {**{k: result.get(k) for k in keep}, "tree": nodes}


def read_results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def local_reference():
    """24 problems searched locally (one process, one sandbox pool): the results a cluster must match."""
    from contextlib import ExitStack

    from rstar.components import open_components

    require_sandbox()
    probs = problems(24)
    with ExitStack() as stack:
        results = {r["id"]: r for r in open_components(recipe(), stack).search.search(probs)}
    assert len(results) == 24
    return results


def test_cluster_run_matches_local_run(cluster, local_reference, tmp_path):
    from rstar.runner import run_dataset

    data = write_data(tmp_path / "data.jsonl", arithmetic_problems(24))
    out = tmp_path / "ray"
    summary = run_dataset(data, out, recipe(), progress=False, ray=cluster.address)
    results = read_results(out)
    ids = [r["id"] for r in results]
    assert sorted(ids) == sorted(local_reference) and len(ids) == len(set(ids)) == 24
    for r in results:
        assert tree_signature(r) == tree_signature(local_reference[r["id"]]), r["id"]
        assert r["index"] == local_reference[r["id"]]["index"]
    # the script's "sum" candidates are right, so the gold-rewarded search finds them
    assert summary["accuracy"] == 1.0
    meta = json.loads((out / "run.json").read_text())
    info = meta["cluster"]
    assert len(info["nodes"]) == 3 and info["resources"]["CPU"] == 3
    assert len(info["actors"]) == 3
    # SPREAD placement: one worker on each node, and every worker searched something
    assert len({a["node_id"] for a in info["actors"]}) == 3
    assert info["results"] == 24 and info["requeued"] == 0


def test_node_removed_mid_run_loses_and_duplicates_nothing(cluster, local_reference):
    from rstar.distributed import run_on_ray

    head_id = cluster.head_node.node_id
    workers_by_id = {n.node_id: n for n in cluster.worker_nodes}
    written: list[dict] = []
    removed: dict = {}

    def on_progress(event: dict) -> None:
        # after a few results, take away the node of a worker that still holds problems
        if removed or event["event"] != "result" or event["done"] < 4:
            return
        node_id = event.get("node_id")
        if node_id != head_id and node_id in workers_by_id and event["held"] > 0:
            removed["held"] = event["held"]
            removed["done_before"] = event["done"]
            cluster.remove_node(workers_by_id[node_id])
            removed["node_id"] = node_id

    info = run_on_ray(problems(24), recipe(), cluster.address, written.append, on_progress, in_flight=4)
    assert removed.get("node_id"), "the test never removed a node"
    ids = [r["id"] for r in written]
    assert len(ids) == len(set(ids)) == 24, "every problem exactly once"
    assert sorted(ids) == sorted(local_reference)
    for r in written:  # the problems that moved gave the same trees as everywhere else
        assert tree_signature(r) == tree_signature(local_reference[r["id"]]), r["id"]
    assert info["lost_workers"] >= 1 and info["requeued"] >= 1
    assert removed["done_before"] < 24
    alive = {n["node_id"] for n in info["nodes"]}
    assert removed["node_id"] not in alive and len(alive) == 2
    # put a node back for the tests that follow
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()


def test_lost_worker_restarts_on_a_node_that_joins(cluster, local_reference):
    """With every CPU taken, a lost worker waits for room; Ray restarts it on a node that joins."""
    from rstar.distributed import run_on_ray

    workers_by_id = {n.node_id: n for n in cluster.worker_nodes}
    head_id = cluster.head_node.node_id
    written: list[dict] = []
    events: dict = {}

    def on_progress(event: dict) -> None:
        if event["event"] == "result" and "removed" not in events and event["done"] >= 3:
            node_id = event.get("node_id")
            if node_id != head_id and node_id in workers_by_id and event["held"] > 0:
                cluster.remove_node(workers_by_id[node_id])
                events["removed"] = node_id
                events["new"] = cluster.add_node(**NODE).node_id
        elif event["event"] == "result" and event.get("node_id") == events.get("new"):
            events["from_new"] = events.get("from_new", 0) + 1

    # the paced script keeps the run going long enough for the new node to start
    info = run_on_ray(problems(40, seed=1), recipe(PACED), cluster.address, written.append, on_progress,
                      in_flight=2)
    ids = [r["id"] for r in written]
    assert len(ids) == len(set(ids)) == 40
    assert events.get("removed") and events.get("from_new", 0) >= 1, events
    restarted = [a for a in info["actors"] if a["incarnations"] >= 2]
    assert restarted and restarted[0]["node_id"] == events["new"]


def test_workers_that_cannot_start_end_the_run_with_their_reason(cluster):
    """A node without the sandbox image (here: an image no node has) fails every worker's
    start; the run ends in one line naming the cause instead of waiting forever."""
    from rstar.distributed import RayUnavailable, run_on_ray

    rec = recipe()
    rec.sandbox = {"size": 1, "image": "rstar-no-such-image:latest"}
    written: list[dict] = []
    with pytest.raises(RayUnavailable) as err:
        run_on_ray(problems(4), rec, cluster.address, written.append)
    msg = str(err.value)
    assert "every Ray worker failed to start" in msg and "rstar-no-such-image" in msg and "\n" not in msg
    assert written == []


def test_driver_killed_mid_run_then_resumed(cluster, tmp_path):
    n = 60
    data = write_data(tmp_path / "data.jsonl", arithmetic_problems(n, 2))
    out = tmp_path / "run"
    args = ["run", data, "--out", out, "--model", PACED, "--ray", cluster.address, "--sandbox-size", "1",
            "--rollouts", "4", "--children", "4", "--max-depth", "6", "--no-progress"]
    proc = spawn(rstar_cmd(*args), tmp_path / "run.log", start_new_session=True, cwd=tmp_path)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 180
    lines = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.is_file():
                lines = results.read_text().count("\n")
                if lines >= 5:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {tail(tmp_path / 'run.log')}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    partial = [json.loads(x) for x in results.read_text().splitlines() if x.strip().endswith("}")]
    assert 5 <= len(partial) < n
    done = subprocess.run(rstar_cmd(*args, "--resume"), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming: {len(partial)} of {n}" in done.stderr
    final = read_results(out)
    ids = [r["id"] for r in final]
    assert len(ids) == len(set(ids)) == n, "every problem exactly once"
    assert {r["id"] for r in partial} <= set(ids)
    assert json.loads((out / "run.json").read_text())["cluster"]["results"] == n - len(partial)


# started as the `rstar` console script is: the directory it runs in is not on its own path
NO_CWD = "import os, sys\nsys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
AS_INSTALLED = NO_CWD + "from rstar.cli import main\nsys.exit(main(sys.argv[1:]))\n"


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A checkout of rstar's sources: the package without its compiled core."""
    import shutil

    import rstar

    root = tmp_path / "checkout"
    shutil.copytree(Path(rstar.__file__).parent, root / "rstar", ignore=shutil.ignore_patterns("*.so"))
    return root


def test_run_started_inside_a_source_checkout_works(cluster, checkout):
    """Ray puts the driver's working directory first on the workers' path unless the job has a
    working directory of its own. Started in a checkout of rstar's sources (no compiled core),
    `rstar run --ray` still searches every problem: its workers import the installed rstar."""
    write_data(checkout / "data.jsonl", arithmetic_problems(3))
    r = subprocess.run([sys.executable, "-c", AS_INSTALLED, "run", "data.jsonl", "--out", "out", "--model", SCRIPT,
                        "--ray", cluster.address, "--sandbox-size", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=checkout)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rstar._core" not in r.stderr
    assert sorted(x["id"] for x in read_results(checkout / "out")) == sorted(p.id for p in problems(3))


def test_ray_started_by_the_caller_in_a_source_checkout_says_what_to_do(cluster, checkout):
    """A program that starts Ray itself (plain ray.init) inside a checkout gives its workers the
    checkout's rstar, which has no compiled core: the run ends with one line naming init_ray."""
    code = NO_CWD + f"""
import ray
from rstar.demo_scripts import arithmetic_problems
from rstar.distributed import RayUnavailable, run_on_ray
from rstar.recipe import Recipe
from rstar.results import Problem
ray.init(address={cluster.address!r}, log_to_driver=False, logging_level="ERROR", namespace="rstar-tests")
probs = [Problem(r["id"], r["question"], r["answer"]) for r in arithmetic_problems(2)]
try:
    run_on_ray(probs, Recipe(model={SCRIPT!r}, sandbox={{"size": 1}}), None, print)
except RayUnavailable as exc:
    print(exc)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=checkout)
    last = (r.stdout.strip().splitlines() or [""])[-1]
    assert "rstar._core" in last and str(checkout) in last and "init_ray" in last, (r.stdout[-2000:], r.stderr[-2000:])


BLOCK_RAY = """
import sys
class _NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray'")
        return None
sys.meta_path.insert(0, _NoRay())
from rstar.cli import main
sys.argv = ["rstar"] + sys.argv[1:]
sys.exit(main())
"""


def test_ray_flag_without_ray_says_how_to_install(tmp_path):
    data = write_data(tmp_path / "data.jsonl", arithmetic_problems(2))
    proc = subprocess.run([sys.executable, "-c", BLOCK_RAY, "run", str(data), "--out", str(tmp_path / "o"),
                           "--model", SCRIPT, "--ray", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert 'pip install "rstar[ray]"' in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "results.jsonl").exists() or not (tmp_path / "o" / "results.jsonl").read_text()
