"""Every search algorithm on the same GSM8K problems with the same model, blind (no gold rewards).

    python benchmarks/bench_algos.py [--problems 30] [--model default] [--algos greedy,bon,...] [--json]

Gold answers are used only to grade. Each algorithm gets a budget of about four
greedy solutions' worth of tokens (the table's `tokens` column says what each one
actually spent): MCTS and PUCT 4 rollouts of 2 candidate steps, beam search 2 beams
of 2 samples, best-of-4, MCTSr with 1 critique-and-rewrite and 2 self-grades per
answer, greedy 1. Each algorithm's run lives in OUT/ALGO and resumes, so a long
benchmark can be stopped and continued. Prints a table with accuracy (95% Wilson
interval), pass@k, tokens, wall time; ``--json`` prints one object
``{"problems": N, "algos": {ALGO: {"accuracy": ..., "ci95": [lo, hi], ...}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rstar.recipe import Recipe
from rstar.results import load_results, read_problems, summarize
from rstar.runner import run_dataset
from rstar.search.config import SearchConfig

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k_train.jsonl"

BUDGETS = {
    "greedy": dict(),
    "mcts": dict(rollouts=4, children=2, temperature=0.7),
    "puct": dict(rollouts=4, children=2, temperature=0.7),
    "beam": dict(beam_width=2, beam_samples=2, temperature=0.7),
    "bon": dict(n=4, temperature=0.7),
    "mctsr": dict(mctsr_rollouts=1, self_eval_samples=2, temperature=0.7, critique_tokens=160),
}
SCORERS = {"mctsr": "self"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--problems", type=int, default=30)
    ap.add_argument("--model", default="default")
    ap.add_argument("--algos", default=",".join(BUDGETS))
    ap.add_argument("--out", default="runs/bench_algos")
    ap.add_argument("--max-depth", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    problems = list(read_problems(args.data))[: args.problems]
    table = {}
    for algo in args.algos.split(","):
        out = Path(args.out) / algo
        search = SearchConfig(max_depth=args.max_depth, max_tokens=args.max_tokens, seed=args.seed,
                              **BUDGETS[algo])
        recipe = Recipe(algo=algo, scorer=SCORERS.get(algo, "none"), model=args.model, search=search)
        start = time.perf_counter()
        resume = (out / "results.jsonl").exists()
        print(f"== {algo} ({'resuming' if resume else 'new'}) -> {out}", file=sys.stderr)
        run_dataset(problems, out, recipe, resume=resume, progress=not args.json, source=args.data)
        results = [r for r in load_results(out) if r["id"] in {p.id for p in problems}]
        s = summarize(results)
        table[algo] = {
            "accuracy": s["accuracy"], "ci95": s["accuracy_ci95"], "pass_at_k": s["pass_at_k"],
            "unknown": s["unknown"], "tokens": s["tokens"], "tokens_per_problem": s["tokens"] / max(1, len(results)),
            "time_s": s["time"]["total_s"], "model_share": s["time"]["model_s"] / max(1e-9, s["time"]["total_s"]),
            "problems": len(results), "this_call_s": round(time.perf_counter() - start, 1),
        }
    out = {"problems": len(problems), "model": args.model, "load_avg": os.getloadavg(), "algos": table}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{'algo':8} {'accuracy':>9} {'95% CI':>15} {'pass@k':>7} {'tokens/problem':>15} {'time':>9}")
    for algo, t in table.items():
        lo, hi = t["ci95"] or (0, 0)
        print(f"{algo:8} {100 * t['accuracy']:8.1f}% {100 * lo:6.1f}-{100 * hi:5.1f}% {100 * t['pass_at_k']:6.1f}% "
              f"{t['tokens_per_problem']:15.0f} {t['time_s']:8.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
