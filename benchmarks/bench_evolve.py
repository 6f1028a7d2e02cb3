"""One round of self-evolution with the built-in model, measured (issue 9's protocol).

Round 0 searches the first ``--train`` problems of GSM8K train with gold rewards
(``rstar evolve``: search -> export -> SFT (+ Step-DPO with --dpo) -> PPM); then
policy_0 and policy_1 are evaluated on problems ``--eval-from`` .. ``--eval-from +
--eval`` of the same file without gold (gold only grades), three ways each:

* greedy: one sample at temperature 0, code executed;
* vote:   MCTS with no scorer, the answer by majority vote;
* ppm:    MCTS guided by PPM_1, the answer by value.

Reported: accuracy with 95% Wilson intervals for the six cells, policy_1 minus
policy_0 per method, training tokens/s (SFT), time per stage, machine load.
Every run directory is kept in --out, so a stopped benchmark resumes.

    python benchmarks/bench_evolve.py --out /tmp/bench-evolve                  # 100 + 50 problems
    python benchmarks/bench_evolve.py --out /tmp/be --train 10 --eval 10 --json # a smaller run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rstar.evolve import PRESETS, Evolve, EvolveConfig, format_table
from rstar.recipe import Recipe
from rstar.runner import run_dataset
from rstar.search.config import preset as search_preset
from rstar.train.base import add_precision_flag

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl"


def slice_file(src: Path, dst: Path, start: int, n: int) -> Path:
    rows = [ln for ln in src.read_text().splitlines() if ln.strip()][start:start + n]
    if len(rows) < n:
        sys.exit(f"{src} has fewer than {start + n} problems")
    dst.write_text("\n".join(rows) + "\n")
    return dst


def reuse_search(src: Path, train: Path, dst: Path) -> None:
    """Seed round 0's search directory with ``src``'s results for the training problems (once: an
    existing round-0 search is left alone). ``rstar evolve`` resumes it; resuming checks that the
    saved recipe matches round 0's, so a search with other settings is refused, not mixed in."""
    if (dst / "results.jsonl").exists():
        return
    if not (src / "results.jsonl").is_file() or not (src / "run.json").is_file():
        sys.exit(f"--reuse-search {src}: not a run directory (no results.jsonl and run.json)")
    ids = {json.loads(ln)["id"] for ln in train.read_text().splitlines() if ln.strip()}
    rows = [ln for ln in (src / "results.jsonl").read_text().splitlines()
            if ln.strip() and json.loads(ln).get("id") in ids]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "run.json").write_text((src / "run.json").read_text())
    (dst / "results.jsonl").write_text("".join(r + "\n" for r in rows))
    print(f"round 0 starts from {len(rows)} of {len(ids)} problems searched in {src}", file=sys.stderr)


def evaluate(data: Path, out: Path, model: str, method: str, scorer: str, budget, seed: int) -> dict:
    cfg = search_preset("greedy" if method == "greedy" else budget.eval_preset)
    changes = {k: getattr(budget, k) for k in ("rollouts", "children", "max_depth", "max_tokens")
               if getattr(budget, k) is not None and method != "greedy"}
    if method == "greedy" and budget.max_tokens is not None:
        changes["max_tokens"] = budget.max_tokens
    if method == "vote":
        changes["answer_selection"] = "vote"
    cfg = cfg.replace(seed=seed, **changes)
    recipe = Recipe(algo="greedy" if method == "greedy" else "mcts", scorer=scorer, model=model, search=cfg)
    t0 = time.perf_counter()
    s = run_dataset(data, out, recipe, resume=(out / "results.jsonl").exists(), progress=True)
    return {"accuracy": s["accuracy"], "ci95": s["accuracy_ci95"], "pass_at_k": s["pass_at_k"],
            "problems": s["problems"], "tokens": s["tokens"], "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for every run (resumable)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--train", type=int, default=100, help="training problems (the first N)")
    ap.add_argument("--eval-from", type=int, default=100, help="first evaluation problem (0-based)")
    ap.add_argument("--eval", type=int, default=50, help="evaluation problems")
    ap.add_argument("--model", default="default")
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--rollouts", type=int)
    ap.add_argument("--max-steps", type=int, help="SFT optimizer steps at most")
    ap.add_argument("--epochs", type=float, help="SFT epochs")
    ap.add_argument("--dpo", action="store_true", help="Step-DPO after SFT")
    add_precision_flag(ap, default=None)
    ap.add_argument("--methods", default="greedy,vote,ppm", help="evaluations to run (comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse-search", metavar="RUN_DIR",
                    help="start round 0 from this gold-rewarded search of the same problems (e.g. bench_ppm's "
                         "run_gold): its finished problems are not searched again; its settings must match")
    ap.add_argument("--json", action="store_true", help="print one JSON line at the end")
    a = ap.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train = slice_file(Path(a.data), out / "train.jsonl", 0, a.train)
    held = slice_file(Path(a.data), out / "eval.jsonl", a.eval_from, a.eval)
    import dataclasses

    budget = dataclasses.replace(PRESETS[a.preset], problems=a.train, eval_problems=a.eval, dpo=a.dpo)
    if a.rollouts is not None:
        budget.rollouts = a.rollouts
    if a.max_steps is not None:
        budget.sft_max_steps = a.max_steps
    if a.epochs is not None:
        budget.sft_epochs = a.epochs
    if a.precision is not None:
        budget.precision = a.precision
    if a.reuse_search:
        reuse_search(Path(a.reuse_search), train, out / "evolve" / "round-0" / "search")
    t0 = time.perf_counter()
    ev = Evolve(EvolveConfig(data=str(train), out=str(out / "evolve"), rounds=1, eval_data=None, preset=a.preset,
                             model=a.model, seed=a.seed, budget=budget))
    rows = ev.run()
    evolve_s = time.perf_counter() - t0
    state = ev.state.data["rounds"]["0"]
    policy1, ppm1 = ev.policy_of(1), ev.ppm_of(1)
    cells: dict[str, dict] = {}
    for method in [m for m in a.methods.split(",") if m]:
        for tag, model in (("policy0", a.model), ("policy1", policy1)):
            if method == "ppm" and ppm1 is None:
                continue
            if tag == "policy1" and policy1 == a.model:
                continue  # nothing was trained
            scorer = f"ppm:{ppm1}" if method == "ppm" else "none"
            cells[f"{tag}/{method}"] = evaluate(held, out / f"eval-{tag}-{method}", model, method, scorer,
                                                budget, a.seed)
            print(f"{tag}/{method}: {cells[f'{tag}/{method}']}", file=sys.stderr)
    deltas = {}
    for method in a.methods.split(","):
        c0, c1 = cells.get(f"policy0/{method}"), cells.get(f"policy1/{method}")
        if c0 and c1 and c0["accuracy"] is not None and c1["accuracy"] is not None:
            # beyond the interval: policy_1's lower bound above policy_0's upper bound
            deltas[method] = {"delta": c1["accuracy"] - c0["accuracy"],
                              "separated": c1["ci95"][0] > c0["ci95"][1]}
    sft = (state.get("sft") or {}).get("log") or {}
    report = {
        "bench": "evolve", "model": a.model, "preset": a.preset, "train": a.train, "eval": a.eval,
        "eval_from": a.eval_from, "rollouts": budget.rollouts, "cells": cells, "deltas": deltas,
        "search": (state.get("search") or {}).get("summary", {}).get("accuracy"),
        "traces": rows[0]["traces"], "ppm_pairs": rows[0]["ppm_pairs"], "dpo_pairs": rows[0]["dpo_pairs"],
        "precision": budget.precision, "sft_tokens_per_s": sft.get("tokens_per_s"), "sft_steps": sft.get("steps"),
        "sft_loss": sft.get("final_loss"),
        "stage_s": rows[0]["time_s"], "evolve_s": round(evolve_s, 1),
        "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
    }
    print(format_table(rows))
    print(f"{'':10}" + "".join(f"{m:>22}" for m in a.methods.split(",")))
    for tag in ("policy0", "policy1"):
        line = f"{tag:10}"
        for m in a.methods.split(","):
            c = cells.get(f"{tag}/{m}")
            cell = "-"
            if c and c["accuracy"] is not None:
                lo, hi = c["ci95"]
                cell = f"{100 * c['accuracy']:.1f} [{100 * lo:.0f},{100 * hi:.0f}]"
            line += f"{cell:>22}"
        print(line)
    (out / "bench_evolve.json").write_text(json.dumps(report, indent=2, default=str))
    if a.json:
        print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
