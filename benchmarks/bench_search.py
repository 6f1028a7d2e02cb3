"""Search-loop throughput, and greedy vs MCTS with the built-in model.

Part 1 (always): node expansions/s of the whole loop (select in the C++ core,
render prompts, generate, parse, execute every new step in the real Docker
sandbox, score, back up) with an instant scripted policy that replays canned
steps, so what is measured is everything except the model. The steps differ
per problem and per candidate (different numbers, one candidate in eight
fails), so the sandbox really runs each program. The time split says where the
loop's time goes. Two step families (plain arithmetic; sympy: symbols, solve,
simplify, Rational on earlier steps' variables), each in both sandbox modes in
the same run: re-execution (every step re-runs its path) and incremental (a
step forks its parent step's live interpreter).

Part 2 (--model): the built-in model on the first N GSM8K training problems:
greedy chain of thought vs MCTS at a stated budget, with accuracy measured
blind (gold answers are used only to grade: --reward none) and the share of
wall time spent outside model calls.

    python benchmarks/bench_search.py                 # part 1
    python benchmarks/bench_search.py --model default --problems 20 --json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from rstar.policy.scripted import ScriptedPolicy
from rstar.results import Problem, read_problems, summarize
from rstar.sandbox import SandboxConfig, SandboxPool
from rstar.search import MCTS, SearchConfig, preset
from rstar.templates import get_template

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl"


def scripted_problems(n: int) -> list[Problem]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        out.append(Problem(f"s{i}", f"BENCH {a} {b} {c}: what is (a + b) * c?", str((a + b) * c)))
    return out


def make_script(template, kind: str = "plain"):
    """Canned steps for 'BENCH a b c' problems: 4 steps, `n` distinct candidates per step.
    ``kind`` "sympy": the same arithmetic through sympy (a quadratic with roots a and b,
    solved, summed with simplify and Rational), each step using earlier steps' variables."""
    prefix = template.assistant_prefix

    def script(prompt: str, n: int) -> list[str]:
        a, b, c = map(int, re.search(r"BENCH (\d+) (\d+) (\d+)", prompt).groups())
        k = prompt.rsplit(prefix, 1)[1].count("\n# Step") + 1
        outs = []
        for j in range(n):
            if j % 8 == 7:  # one candidate in eight fails when run
                outs.append(f" {k}: a mistake\nv{k} = undefined_{j} + 1\n# Step")
            elif kind == "sympy" and k == 1:
                outs.append(f" 1: the quadratic with roots a and b\nfrom sympy import symbols, expand, solve, "
                            f"simplify, Rational\nx = symbols('x')\ne = expand((x - {a}) * (x - {b}) + {j} * 0)\n# Step")
            elif kind == "sympy" and k == 2:
                outs.append(f" 2: its roots\nroots = solve(e, x)\nassert len(roots) in (1, 2)  # {j}\n# Step")
            elif kind == "sympy" and k == 3:
                outs.append(f" 3: the sum\ns = simplify(sum(roots) * Rational({j + 1}, {j + 1}))"
                            f"{' * 2' if a == b else ''}\n# Step")
            elif k == 1:
                outs.append(f" 1: the first number\na = {a} + {j} - {j}\n# Step")
            elif k == 2:
                outs.append(f" 2: the second number\nb = {b} * {j + 1} // {j + 1}\n# Step")
            elif k == 3:
                outs.append(f" 3: the sum\ns = a + b + {j} * 0\n# Step")
            else:
                outs.append(f" {k}: scale and print\nprint(s * {c} + {j} * 0)\n```")
        return outs

    return script


def bench_loop(args, kind: str = "plain", incremental: bool = True) -> dict:
    template = get_template("default")
    problems = scripted_problems(args.scripted_problems if kind == "plain" else args.sympy_problems)
    cfg = SearchConfig(rollouts=args.rollouts, children=args.children, max_depth=8, temperature=0.7,
                       concurrent_problems=args.concurrent, leaves_per_tree=args.leaves)
    with SandboxPool(size=args.sandbox_size, config=SandboxConfig(incremental=incremental)) as pool:
        pool.run_steps([["x = 1", "print(x)"]] * 4)  # warm the containers
        if incremental and not pool.incremental:
            raise SystemExit("incremental mode is not available on this machine")
        search = MCTS(ScriptedPolicy(make_script(template, kind)), template, pool, cfg)
        start = time.perf_counter()
        results = list(search.search(problems))
        wall = time.perf_counter() - start
        reused, replayed = pool.stats["state_reused"], pool.stats["state_replayed"]
    correct = sum(bool(r["correct"]) for r in results)
    t = search.time
    row = {
        "kind": kind,
        "mode": "incremental" if incremental else "reexec",
        "steps_reused": reused,
        "steps_replayed": replayed,
        "problems": len(results),
        "expansions": search.expansions,
        "wall_s": round(wall, 3),
        "expansions_per_s": round(search.expansions / wall, 1),
        "model_share": round(t.model_s / t.total_s, 4),
        "sandbox_share": round(t.sandbox_s / t.total_s, 4),
        "other_share": round(t.other_s / t.total_s, 4),
        "solved": correct,
    }
    print(f"{kind} steps, {row['mode']} sandbox: scripted policy, {len(results)} problems, rollouts "
          f"{cfg.rollouts}, children {cfg.children}, {cfg.concurrent_problems} trees x {cfg.leaves_per_tree} "
          f"leaves per model call; steps forked from a state {reused}, re-run whole {replayed}")
    print(f"  expansions: {search.expansions} in {wall:.2f}s = {row['expansions_per_s']:.0f}/s; solved {correct}")
    print(f"  time split: model {100 * row['model_share']:.1f}%  sandbox {100 * row['sandbox_share']:.1f}%  "
          f"rest of the loop {100 * row['other_share']:.1f}%")
    return row


def bench_model(args) -> dict:
    from rstar.policy import load_policy

    problems = list(read_problems(args.data))[: args.problems]
    template = get_template(args.template)
    policy = load_policy(args.model)
    out = {}
    budgets = {
        "greedy": preset("greedy"),
        "mcts": preset("cpu").replace(rollouts=args.model_rollouts, children=args.model_children,
                                      answer_selection="vote", concurrent_problems=4),
    }
    with SandboxPool(size=args.sandbox_size) as pool:
        for name, cfg in budgets.items():
            search = MCTS(policy, template, pool, cfg)  # no scorer: blind, gold only grades
            start = time.perf_counter()
            results = []
            for r in search.search(problems):
                results.append(r)
                print(f"  {name} {r['id']}: answer {r['answer']!r} gold {r['gold']!r} "
                      f"{'OK' if r['correct'] else '--'} ({r['nodes']} nodes)", file=sys.stderr)
            wall = time.perf_counter() - start
            s = summarize(results)
            t = search.time
            out[name] = {
                "accuracy": s["accuracy"], "pass_at_k": s["pass_at_k"], "tokens": s["tokens"],
                "wall_s": round(wall, 1), "nodes": s["nodes"],
                "outside_model_share": round(1 - t.model_s / wall, 4),
                "config": {"rollouts": cfg.rollouts, "children": cfg.children, "max_depth": cfg.max_depth,
                           "temperature": cfg.temperature, "selection": cfg.answer_selection},
            }
            print(f"{name}: accuracy {100 * s['accuracy']:.0f}% on {len(results)} problems, "
                  f"pass@k {100 * s['pass_at_k']:.0f}%, {s['tokens']} tokens, {wall:.0f}s, "
                  f"outside model calls {100 * out[name]['outside_model_share']:.1f}% of wall time")
    policy.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scripted-problems", type=int, default=200)
    ap.add_argument("--sympy-problems", type=int, default=64, help="problems for the sympy step family")
    ap.add_argument("--modes", default="reexec,incremental", help="sandbox modes to compare (comma-separated)")
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--children", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--leaves", type=int, default=2)
    ap.add_argument("--sandbox-size", type=int, default=None)
    ap.add_argument("--model", default=None, help="also run part 2 with this model ('default' = built-in)")
    ap.add_argument("--template", default="default")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--model-rollouts", type=int, default=4)
    ap.add_argument("--model-children", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = {(kind, mode): bench_loop(args, kind, mode == "incremental")
            for kind in ("plain", "sympy") for mode in modes}
    main_mode = "incremental" if "incremental" in modes else modes[0]
    result = dict(rows[("plain", main_mode)])
    result["expansions_per_s_sympy"] = rows[("sympy", main_mode)]["expansions_per_s"]
    result["runs"] = [rows[k] for k in rows]
    if len(modes) > 1:
        for kind in ("plain", "sympy"):
            r = rows[(kind, "incremental")]["expansions_per_s"] / rows[(kind, "reexec")]["expansions_per_s"]
            result[f"incremental_speedup_{kind}"] = round(r, 2)
            print(f"{kind}: incremental {rows[(kind, 'incremental')]['expansions_per_s']:.0f} vs re-execution "
                  f"{rows[(kind, 'reexec')]['expansions_per_s']:.0f} expansions/s = {r:.2f}x")
    import os
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if args.model:
        result["model"] = bench_model(args)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
