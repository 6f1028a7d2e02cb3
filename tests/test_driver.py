"""The two drivers of the search (rstar.search.driver): the asynchronous one (the default) grows
the same trees as the lockstep one, overlaps one tree's sandbox work with other trees' model
requests, names every request's node to the engine, surfaces a tree's error without hanging,
sizes the trees in flight to the engine, reports the engine's use and resumes.

Real C++ core, real Docker sandbox, real templates; rstar's ScriptedPolicy (and the real
SmolLM2 model for greedy decoding)."""

import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import pytest

from rstar.policy.base import NodeRef
from rstar.policy.scripted import ScriptedPolicy
from rstar.recipe import Recipe
from rstar.results import Problem, load_results
from rstar.runner import run_dataset
from rstar.scorers import load_scorer
from rstar.search import SearchConfig, make_search

from _scripts import T, step_no  # noqa: E402

pytestmark = pytest.mark.docker

ALGOS = ["mcts", "puct", "beam", "bon", "greedy", "mctsr"]


def script(prompt, n):
    """Branching arithmetic: two good first steps and a failing one, a second step that either
    continues or answers, then an answer; critiques and grades for MCTSr."""
    if "output a score" in prompt:
        return ["Score: 70", "Score: 20"][:n] * n
    if "Criticise" in prompt:
        return ["Fine."] * n
    m = re.search(r"ADD (\d+) (\d+)", prompt)
    a, b = int(m.group(1)), int(m.group(2))
    if "BOOM" in prompt:
        raise ValueError("boom: the engine failed on this prompt")
    k = step_no(prompt)
    if k == 1:
        return [f" 1: first\na = {a}\n# Step", f" 1: other\na = {a} + 0\n# Step", " 1: bad\nx = 1 / 0\n# Step"][:n]
    if k == 2:
        return [f" 2: add\nb = a + {b}\n# Step", f" 2: answer\nprint(a + {b})\n```"][:n]
    return [f" {k}: print\nprint(b)\n```"] * n


def problems(n, boom=None):
    return [Problem(f"p{i}", f"ADD {i} {i + 1}" + (" BOOM" if i == boom else ""), str(2 * i + 1)) for i in range(n)]


def config(driver, **kw):
    return SearchConfig(**{"rollouts": 3, "children": 2, "n": 2, "beam_width": 2, "beam_samples": 2,
                           "mctsr_rollouts": 2, "self_eval_samples": 2, "max_depth": 5, "concurrent_problems": 3,
                           "driver": driver, **kw})


KEEP = ("id", "parent", "depth", "visits", "q", "value", "prior", "terminal", "terminal_kind", "kind", "status",
        "reason", "text", "shown", "code", "output", "answer", "correct", "tokens")


def trees(results, keep=KEEP):
    """Everything a tree holds that does not depend on time: per node its text, place and numbers."""
    return {r["id"]: (r["answer"], r["rollouts"], r["rounds"], r["chosen"], r["selection"],
                      [tuple(n.get(k) for k in keep) for n in r["tree"]["nodes"]]) for r in results}


def search_with(algo, policy, sandbox, cfg):
    scorer = load_scorer("self", policy=policy) if algo == "mctsr" else load_scorer("gold")
    return make_search(algo, policy, T, sandbox, cfg, scorer=scorer)


# ---------------------------------------------------------------- same trees

@pytest.mark.parametrize("algo", ALGOS)
def test_async_driver_grows_the_same_trees_as_lockstep(sandbox_pool, algo):
    got = {}
    for driver in ("lockstep", "async"):
        search = search_with(algo, ScriptedPolicy(script), sandbox_pool, config(driver))
        results = list(search.search(problems(6)))
        assert sorted(r["id"] for r in results) == [f"p{i}" for i in range(6)]
        assert search.info == {} and search.forest.num_live == 0  # every finished tree was let go
        got[driver] = trees(results)
    assert got["async"] == got["lockstep"]
    assert any(len(t[-1]) > 3 for t in got["async"].values())  # real trees, not single paths


def test_greedy_decoding_on_smollm2_gives_the_same_trees_with_either_driver(sandbox_pool):
    from conftest import need_smol

    from rstar.policy import load_policy

    # a deterministic engine: llama.cpp one sequence at a time (the batched engine's logits can
    # change in the last bits with its cache's layout, rstar.policy.llamacpp_batch)
    policy = load_policy(str(need_smol()), options={"engine": "sequential"})
    qs = [Problem(f"q{i}", f"What is {i + 2} times {i + 5}?", None) for i in range(2)]
    got = {}
    try:
        for driver in ("lockstep", "async"):
            for algo in ("greedy", "mcts"):
                cfg = SearchConfig(rollouts=2, children=2, max_depth=2, max_tokens=24, temperature=0.0,
                                   concurrent_problems=2, driver=driver, seed=3)
                s = make_search(algo, policy, T, sandbox_pool, cfg, scorer=load_scorer("none"))
                # priors (exp mean log-prob) left out: llama.cpp's log-probabilities move in the last
                # digits with how much of a prompt its cache reused, whichever driver sent it
                got[driver, algo] = trees(s.search(qs), keep=tuple(k for k in KEEP if k != "prior"))
    finally:
        policy.close()
    for algo in ("greedy", "mcts"):
        assert got["async", algo] == got["lockstep", algo], algo
        assert all(len(t[-1]) > 1 for t in got["async", algo].values())


# ---------------------------------------------------------------- overlap

class QueueEngine(ScriptedPolicy):
    """A scripted engine with its own submit: requests wait in a queue that one engine thread
    serves a batch at a time (each batch takes ``step_s``, like a model). It records which
    trees have requests in flight, in submit and in generate alike."""

    def __init__(self, script, step_s=0.03):
        super().__init__(script)
        self.step_s = step_s
        self.cv = threading.Condition()
        self.queue = []
        self.pending = {}        # id(future) -> tree key
        self.most_trees = 0      # most distinct trees with requests in flight at once
        self.refs = []           # every NodeRef the engine was given
        self.forgotten = []      # every forget(tree, nodes) call
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def pending_trees(self):
        with self.cv:
            return set(self.pending.values())

    def _note(self, key, tree):
        self.pending[key] = tree
        self.most_trees = max(self.most_trees, len(set(self.pending.values())))

    def submit(self, prompt, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, node=None):
        fut = Future()
        with self.cv:
            self.refs.append(node)
            self._note(id(fut), node.tree if node else None)
            self.queue.append((prompt, n, list(stop), max_tokens, seed, fut))
            self.cv.notify()
        return fut

    def _serve(self):
        while True:
            with self.cv:
                while not self.queue:
                    self.cv.wait()
                batch, self.queue = self.queue, []
            time.sleep(self.step_s)
            for prompt, n, stop, max_tokens, seed, fut in batch:
                try:
                    out = ScriptedPolicy.generate(self, [prompt], n=n, stop=stop, max_tokens=max_tokens, seed=[seed])
                    fut.set_result(out[0])
                except BaseException as exc:
                    fut.set_exception(exc)
                with self.cv:
                    self.pending.pop(id(fut), None)

    def generate(self, prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, nodes=None):
        with self.cv:
            self.refs.extend(nodes or [None] * len(prompts))
            for k, ref in enumerate(nodes or []):
                self._note(("call", k), ref.tree)
        try:
            time.sleep(self.step_s)
            return super().generate(prompts, n=n, stop=stop, max_tokens=max_tokens, seed=seed)
        finally:
            with self.cv:
                for k in range(len(nodes or [])):
                    self.pending.pop(("call", k), None)

    def forget(self, tree, nodes=None):
        with self.cv:
            self.forgotten.append((tree, None if nodes is None else sorted(nodes)))


class RecordingSandbox:
    """The real pool, with a note at each sandbox call of the other trees waiting on the engine."""

    def __init__(self, pool, engine):
        self.pool, self.engine = pool, engine
        self.overlaps = 0
        self.calls = 0

    def run_steps(self, paths, nodes=None, **kw):
        mine = {n[0] for n in nodes or []}
        others = self.engine.pending_trees() - mine - {None}
        self.calls += 1
        self.overlaps += bool(others)
        return self.pool.run_steps(paths, nodes=nodes, **kw) if nodes else self.pool.run_steps(paths, **kw)

    def release(self, tree, nodes=None):
        self.pool.release(tree, nodes)


@pytest.mark.parametrize("driver", ["async", "lockstep"])
def test_one_trees_sandbox_runs_while_other_trees_wait_on_the_engine(sandbox_pool, driver):
    engine = QueueEngine(script)
    sandbox = RecordingSandbox(sandbox_pool, engine)
    search = search_with("mcts", engine, sandbox, config(driver, concurrent_problems=4, rollouts=4))
    results = list(search.search(problems(8)))
    assert len(results) == 8 and sandbox.calls > 8
    if driver == "async":
        assert engine.most_trees > 1       # several trees' requests in the engine at once
        assert sandbox.overlaps >= 1       # and the sandbox worked for one tree meanwhile
    else:
        assert engine.most_trees > 1       # one shared call serves every tree in flight ...
        assert sandbox.overlaps == 0       # ... and nothing else happens while it runs


@pytest.mark.parametrize("driver", ["async", "lockstep"])
def test_every_request_names_its_node_and_finished_nodes_are_forgotten(sandbox_pool, driver):
    engine = QueueEngine(script, step_s=0.0)
    search = search_with("mcts", engine, sandbox_pool, config(driver, concurrent_problems=2))
    results = {r["id"]: r for r in search.search(problems(3))}
    key = {r["id"]: next(ref.tree for ref in engine.refs if ref and ref.tree.endswith("/" + r["id"]))
           for r in results.values()}
    assert all(isinstance(ref, NodeRef) for ref in engine.refs)
    for pid, r in results.items():
        nodes = r["tree"]["nodes"]
        mine = [ref for ref in engine.refs if ref.tree == key[pid]]
        assert mine and {ref.node for ref in mine} == {n["id"] for n in nodes if any(c["parent"] == n["id"]
                                                                                   for c in nodes)}
        for ref in mine:  # the node being expanded and its parent, in local ids
            assert ref.parent == (None if ref.node == 0 else nodes[ref.node]["parent"])
        finished = sorted(n["id"] for n in nodes if n["kind"] == "invalid" or n["terminal"])
        told = sorted(x for tree, locals_ in engine.forgotten if tree == key[pid] and locals_ for x in locals_)
        assert set(told) <= set(finished) and told
        assert (key[pid], None) in engine.forgotten  # the whole tree, once it was done


# ---------------------------------------------------------------- errors

@pytest.mark.timeout(120)
def test_an_error_in_one_tree_surfaces_and_nothing_hangs(sandbox_pool):
    search = search_with("mcts", ScriptedPolicy(script), sandbox_pool, config("async", concurrent_problems=3))
    with pytest.raises(ValueError, match="boom"):
        for _ in search.search(problems(6, boom=4)):
            pass
    assert not [t for t in threading.enumerate() if t.name.startswith("rstar-tree-") and t.is_alive()]
    # the same search object and sandbox still work afterwards
    assert len(list(search.search(problems(2)))) == 2


# ---------------------------------------------------------------- sizing, usage, resume

class WideEngine(ScriptedPolicy):
    def capacity(self):
        return 12


def test_trees_in_flight_follow_the_engines_capacity(sandbox_pool):
    def size(driver, **kw):
        return make_search("mcts", WideEngine(script), T, sandbox_pool,
                           SearchConfig(children=3, driver=driver, **kw)).in_flight()
    assert size("lockstep") == 4            # 12 sequences, 3 per tree
    assert size("async") == 6               # and room for the trees busy in the sandbox
    assert size("async", leaves_per_tree=2) == 3
    assert size("async", concurrent_problems=2) == 2   # the user's cap wins
    assert make_search("mcts", ScriptedPolicy(script), T, sandbox_pool, SearchConfig()).in_flight() == 1


def test_run_summary_and_eval_report_the_engines_use(tmp_path, sandbox_pool):
    recipe = Recipe(algo="mcts", scorer="gold", model="scripted:rstar.demo_scripts:gsm8k_arithmetic",
                    search=SearchConfig(rollouts=2, children=2, max_depth=5, concurrent_problems=2),
                    sandbox={"size": 1})
    from rstar.demo_scripts import arithmetic_problems

    probs = [Problem(d["id"], d["question"], d["answer"]) for d in arithmetic_problems(3)]
    summary = run_dataset(probs, tmp_path, recipe, progress=False)
    eng = summary["engine"]
    assert 0.0 <= eng["model_busy"] <= 1.0 and eng["batch_occupancy"] >= 1.0 and eng["driver"] == "async"
    assert json.loads((tmp_path / "run.json").read_text())["engine"]["decode_steps"] == eng["decode_steps"]
    r = subprocess.run([sys.executable, "-m", "rstar.cli", "eval", str(tmp_path)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "engine: model busy" in r.stdout and "batch occupancy" in r.stdout


def test_an_interrupted_async_run_resumes_to_the_lockstep_trees(tmp_path, sandbox_pool):
    from rstar.demo_scripts import arithmetic_problems

    probs = [Problem(d["id"], d["question"], d["answer"]) for d in arithmetic_problems(6)]

    def recipe(driver):
        return Recipe(algo="mcts", scorer="gold", model="scripted:rstar.demo_scripts:gsm8k_arithmetic",
                      search=SearchConfig(rollouts=2, children=2, max_depth=5, concurrent_problems=3,
                                          driver=driver), sandbox={"size": 1})
    seen = []

    def stop_after_two(result):
        seen.append(result["id"])
        if len(seen) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_dataset(probs, tmp_path / "a", recipe("async"), progress=False, on_result=stop_after_two)
    assert len(load_results(tmp_path / "a")) == 2
    run_dataset(probs, tmp_path / "a", recipe("async"), resume=True, progress=False)
    run_dataset(probs, tmp_path / "b", recipe("lockstep"), progress=False)
    a, b = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    assert len(a) == 6 and len({r["id"] for r in a}) == 6
    assert trees(a) == trees(b)
