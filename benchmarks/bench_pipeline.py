"""How well the search keeps the model busy: the lockstep driver against the asynchronous one.

Part 1 (``--engines``): the same problems (the first ``--problems`` of GSM8K's training set,
MCTS with the ``cpu`` preset, blind: ``--scorer none``, gold answers only grade) on each engine
and driver, each at the concurrency it does best among ``--concurrency`` (``auto``: sized to
the engine by the search). Per run: generated tokens/s, prompt tokens computed vs served from a
cache, rollouts/s, solved problems per hour, the model's busy fraction, batch occupancy
(sequences per engine step) and accuracy with its 95% interval. Engines:

    llamacpp      the built-in model (or --model) through llama.cpp's one-sequence backend
                  (engine=sequential), lockstep, one problem at a time: the baseline of every speed-up
    llamacpp_batch  the same model on the batched llama.cpp engine (the CPU default), lockstep and async
    vllm          the same model converted for vLLM (its CPU build here), lockstep and async
    NAME=SPEC     any model spec rstar accepts (e.g. a batched llama.cpp engine), lockstep and async

Part 2 (always unless ``--no-sim``): a simulated GPU engine (benchmarks/_simgpu.py: the step
time of a continuously batching server for a 1.5B model on one A100, constants stated there)
driven by the real driver, Docker sandbox and tree core with scripted steps, at
``--sim-problems`` problems all in flight: the fraction of the engine's time it is kept busy,
and where the rest goes (queue waits, the search's own time split).

Every run goes in ``--out`` (a run directory per engine, driver and concurrency); a second
invocation with the same ``--out`` resumes unfinished runs and reuses finished ones.

    python benchmarks/bench_pipeline.py --json                      # the issue's measurement
    python benchmarks/bench_pipeline.py --problems 3 --model PATH.gguf --engines llamacpp --sim-problems 50
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl"
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ part 1: real engines

def engine_specs(args) -> dict[str, tuple[str, dict, tuple[str, ...]]]:
    """name -> (model spec, backend options, drivers)."""
    out = {}
    for item in [s.strip() for s in args.engines.split(",") if s.strip()]:
        if item == "llamacpp":  # the one-sequence backend (engine=sequential): the baseline
            out[item] = (args.model, {"engine": "sequential"}, ("lockstep",))
        elif item == "llamacpp_batch":  # the batched llama.cpp engine with its tree-shaped KV cache
            out[item] = (args.model, {"engine": "batch"}, ("lockstep", "async"))
        elif item == "vllm":
            out[item] = ("vllm:" + str(_converted(args.model)), {"max_model_len": 4096, "kv_cache_space": 4},
                         ("lockstep", "async"))
        elif "=" in item:
            name, spec = item.split("=", 1)
            out[name] = (spec, {}, ("lockstep", "async"))
        else:
            raise SystemExit(f"--engines: {item!r} is not llamacpp, llamacpp_batch, vllm or NAME=SPEC")
    return out


def _converted(model: str) -> Path:
    from rstar.models import ensure_converted, ensure_default_model

    gguf = ensure_default_model() if model == "default" else Path(model)
    return ensure_converted(Path(gguf), progress=True)[0]


def one_run(spec: str, options: dict, driver: str, concurrency: int | None, args, out: Path) -> dict:
    """A child process runs the search (a cold engine each time; memory freed after)."""
    job = {"spec": spec, "options": options, "driver": driver, "concurrency": concurrency,
           "problems": args.problems, "data": str(args.data), "out": str(out)}
    cmd = [sys.executable, __file__, "--worker", json.dumps(job)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=str(ROOT))
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def worker(job: dict) -> dict:
    from rstar.recipe import Recipe
    from rstar.runner import run_dataset
    from rstar.search.config import preset

    cfg = preset("cpu").replace(driver=job["driver"], concurrent_problems=job["concurrency"], seed=0)
    recipe = Recipe(algo="mcts", scorer="none", model=job["spec"], search=cfg,
                    backend_options=dict(job["options"]))
    out = Path(job["out"])
    s = run_dataset(job["data"], out, recipe, resume=(out / "results.jsonl").is_file(), limit=job["problems"],
                    progress=False)
    return figures(s)


def figures(s: dict) -> dict:
    eng = s.get("engine") or {}
    wall = eng.get("wall_s") or s["time"]["total_s"] or 1e-9
    gen = eng.get("generated_tokens")
    return {
        "problems": s["problems"], "wall_s": round(wall, 2),
        "rollouts_per_s": round(s["rollouts"] / wall, 4),
        "generated_tokens_per_s": round((gen if gen is not None else s["tokens"]) / wall, 2),
        "prompt_tokens": eng.get("prompt_tokens"), "prompt_tokens_computed": eng.get("prompt_tokens_computed"),
        "solved_per_hour": round(3600 * s["correct"] / wall, 1),
        "model_busy": eng.get("model_busy"), "batch_occupancy": eng.get("batch_occupancy"),
        "accuracy": s["accuracy"], "accuracy_ci95": s["accuracy_ci95"], "in_flight": eng.get("in_flight"),
    }


def part1(args) -> dict:
    rows: dict = {}
    for name, (spec, options, drivers) in engine_specs(args).items():
        for driver in drivers:
            tries = [None] if name == "llamacpp" else [None if c == "auto" else int(c)
                                                      for c in args.concurrency.split(",")]
            best = None
            for conc in tries:
                tag = f"{name}-{driver}-c{conc or 'auto'}"
                got = one_run(spec, options, driver, conc, args, args.out / tag)
                got["concurrency"] = conc or "auto"
                print(f"{tag}: {got}", file=sys.stderr)
                if "error" not in got and (best is None or got["rollouts_per_s"] > best["rollouts_per_s"]):
                    best = got
            rows[f"{name}/{driver}"] = best or got
    base = rows.get("llamacpp/lockstep", {}).get("rollouts_per_s")
    for row in rows.values():
        if base and row.get("rollouts_per_s") is not None:
            row["rollouts_speedup_vs_llamacpp"] = round(row["rollouts_per_s"] / base, 3)
    return rows


# ------------------------------------------------------------------ part 2: simulated GPU

def sim_script(template):
    """Canned GSM8K-length steps (about 70 tokens each: comments and code) for 'SIM a b c'
    problems: 4 steps, ``n`` distinct candidates a step, one in eight failing when run."""
    prefix = template.assistant_prefix
    pad = " ".join(["# work out the quantity the question asks for from the numbers given so far"] * 3)

    def script(prompt: str, n: int) -> list[str]:
        a, b, c = map(int, re.search(r"SIM (\d+) (\d+) (\d+)", prompt).groups())
        k = prompt.rsplit(prefix, 1)[1].count("\n# Step") + 1
        outs = []
        for j in range(n):
            if j % 8 == 7:
                outs.append(f" {k}: a mistake\n{pad}\nv{k} = undefined_{j} + 1\n# Step")
            elif k == 1:
                outs.append(f" 1: the first number\n{pad}\na = {a} + {j} - {j}\n# Step")
            elif k == 2:
                outs.append(f" 2: the second number\n{pad}\nb = {b} * {j + 1} // {j + 1}\n# Step")
            elif k == 3:
                outs.append(f" 3: the sum\n{pad}\ns = a + b + {j} * 0\n# Step")
            else:
                outs.append(f" {k}: scale and print\n{pad}\nprint(s * {c} + {j} * 0)\n```")
        return outs
    return script


def sim_run(n_problems: int, driver: str, speed: float, sandbox_size: int | None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _simgpu import SimGPUPolicy

    from rstar.results import Problem
    from rstar.sandbox import SandboxPool
    from rstar.search import MCTS, preset
    from rstar.templates import get_template

    template = get_template("default")
    probs = [Problem(f"s{i}", f"SIM {i % 97 + 2} {i % 89 + 3} {i % 7 + 2}: what is (a + b) * c?",
                     str(((i % 97 + 2) + (i % 89 + 3)) * (i % 7 + 2))) for i in range(n_problems)]
    cfg = preset("cpu").replace(driver=driver, concurrent_problems=n_problems, seed=0)
    policy = SimGPUPolicy(sim_script(template), speed=speed)
    with SandboxPool(size=sandbox_size) as pool:
        pool.run_steps([["x = 1", "print(x)"]] * 4)
        search = MCTS(policy, template, pool, cfg)
        before = policy.stats()
        t0 = time.perf_counter()
        results = list(search.search(probs))
        wall = time.perf_counter() - t0
        st = {k: v - before[k] for k, v in policy.stats().items()}
    policy.close()
    # the engine's peak: a full batch at this run's mean context per sequence, no prefill
    p, B = policy.p, policy.p["max_num_seqs"]
    ctx = st["context_tokens"] / max(1, st["sequences_decoded"])
    peak = B * policy.speed / (p["floor_s"] + p["per_seq_s"] * B + p["per_ctx_token_s"] * B * ctx)
    t = search.time
    total = t.total_s or 1e-9
    return {
        "driver": driver, "problems_in_flight": n_problems, "wall_s": round(wall, 2),
        "sim_gpu_busy": round(st["busy_s"] / wall, 4),
        "sim_gpu_throughput_share": round(st["generated_tokens"] / wall / peak, 4),
        "batch_occupancy": round(st["sequences_decoded"] / max(1, st["decode_steps"]), 1),
        "generated_tokens_per_s": round(st["generated_tokens"] / wall, 1),
        "prompt_tokens": st["prompt_tokens"], "prompt_tokens_computed": st["prompt_tokens_computed"],
        "rollouts_per_s": round(sum(r["rollouts"] for r in results) / wall, 2),
        "correct": sum(bool(r["correct"]) for r in results),
        # where the rest goes: the engine idle with nothing to do, and what the trees waited on
        "engine_idle_s": round(st["idle_s"], 2),
        "mean_queue_wait_s": round(st["queue_wait_s"] / max(1, st["decode_steps"]), 4),
        "search_time_share": {"model": round(t.model_s / total, 3), "sandbox": round(t.sandbox_s / total, 3),
                              "scorer": round(t.scorer_s / total, 3), "other": round(t.other_s / total, 3)},
    }


def part2(args) -> dict:
    out = {}
    for n in sorted({int(x) for x in args.sim_problems.split(",")}):
        for driver in ("lockstep", "async"):
            row = sim_run(n, driver, args.sim_speed, args.sandbox_size)
            print(f"sim {driver} {n}: {row}", file=sys.stderr)
            out[f"{driver}/{n}"] = row
    return out


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=30, help="the first N GSM8K training problems")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", default="default", help="the built-in model or a .gguf path")
    ap.add_argument("--engines", default="llamacpp,vllm",
                    help="comma-separated: llamacpp, vllm, NAME=SPEC (any rstar model spec, passed through)")
    ap.add_argument("--concurrency", default="auto,8,32,64",
                    help="trees in flight to try per batching engine and driver (auto: sized to the engine)")
    ap.add_argument("--sim-problems", default="1000", help="simulated GPU: problems in flight (comma list)")
    ap.add_argument("--sim-speed", type=float, default=1.0, help="simulated GPU: step times divided by this")
    ap.add_argument("--no-sim", action="store_true")
    ap.add_argument("--sim-only", action="store_true")
    ap.add_argument("--sandbox-size", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench_pipeline_runs"), help="run directories (resumable)")
    ap.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per run at most")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    report: dict = {"problems": args.problems, "preset": "cpu", "algo": "mcts", "scorer": "none"}
    if not args.sim_only:
        args.out.mkdir(parents=True, exist_ok=True)
        report["runs"] = part1(args)
    if not args.no_sim:
        report["sim_gpu"] = part2(args)
    runs, sim = report.get("runs", {}), report.get("sim_gpu", {})
    report["rollouts_speedup_vs_llamacpp"] = {k: v.get("rollouts_speedup_vs_llamacpp") for k, v in runs.items()}
    report["model_busy"] = {k: v.get("model_busy") for k, v in runs.items()}
    report["accuracy"] = {k: v.get("accuracy") for k, v in runs.items()}
    report["sim_gpu_busy"] = {k: v["sim_gpu_busy"] for k, v in sim.items()}
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in runs.items():
            print(f"{k:28s} {v}")
        for k, v in sim.items():
            print(f"sim {k:24s} busy {100 * v['sim_gpu_busy']:.0f}%  occupancy {v['batch_occupancy']}  "
                  f"{v['generated_tokens_per_s']} tok/s  time {v['search_time_share']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
