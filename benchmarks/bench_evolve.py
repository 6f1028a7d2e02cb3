"""The self-evolution benchmark, issue 18's protocol: does round 1's policy beat round 0's?

Stages (each resumes from ``--out``; runs continue at their next unfinished problem, ``rstar
evolve`` at its stage, finished stages are not redone):

1. **pre-pass** (problems that teach): best-of-4 (``--prepass bo4``) or greedy over the first
   ``--pool`` problems; the first ``--train`` problems where the policy is neither always right nor
   always wrong are the training problems (bench_ppm.prepass);
2. **round 0** (``rstar evolve``, one round): gold-rewarded search at a budget where the rewards
   steer (``cpu-generate``: 16 rollouts of 3, or ``--rollouts``), export, SFT on the verified
   traces, then Step-DPO (``--no-dpo`` to skip), and the PPM;
3. **evaluation**, policy_0 (the base) and policy_1 (round 0's training), without gold (gold only
   grades), on ``--heldout`` problems from ``--heldout-from`` (outside every training problem:
   generalising) and on the training problems (learning at all), each way of ``--methods``:

   * ``greedy``: one sample at temperature 0, code executed;
   * ``search``: MCTS at the evaluation preset with no scorer, the answer by majority vote;
   * ``ppm``: the same MCTS guided by PPM_1 (policy_1 only), and the fraction of its trees that
     differ from the unguided ones (a guided search whose trees are the blind ones is not guided);

   with accuracy and 95% Wilson intervals per round and method, and round 1 minus round 0 per
   method with a paired bootstrap 95% interval over the same problems.

``--json`` prints one object (``rounds``: per round, method and split the accuracy and its
interval; ``diff``: the paired differences); where time goes is printed and saved in
``OUT/bench_evolve.json``. The protocol's size (>= 200 held-out problems) takes many hours at
today's speed on 2 cores; run what fits and say so.

    python benchmarks/bench_evolve.py --out /tmp/be --pool 400 --train 100 --heldout 200 --json
    python benchmarks/bench_evolve.py --out /tmp/be-toy --model smol --data toy.jsonl --preset tiny \\
        --pool 4 --train 3 --heldout 2 --heldout-from 4 --json                      # a toy run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ppm import (DATA, Report, differing_fraction, engine_of, paired_bootstrap, prepass,  # noqa: E402
                       read_jsonl, resolve_model, results, search, wilson, write_problems)

METHODS = ("greedy", "search", "ppm")


def evaluate(problems: Path, out: Path, model: str, method: str, scorer: str, budget, seed: int) -> dict:
    from rstar.search.config import preset

    if method == "greedy":
        cfg = preset("greedy").replace(seed=seed, max_tokens=budget.max_tokens)
        algo = "greedy"
    else:
        cfg = preset(budget.eval_preset).replace(seed=seed, rollouts=budget.rollouts, children=budget.children,
                                                 max_depth=budget.max_depth, max_tokens=budget.max_tokens)
        if method == "search":
            cfg = cfg.replace(answer_selection="vote")
        algo = "mcts"
    s = search(problems, out, model, scorer, algo, cfg)
    recs = results(out)
    per = {pid: (1.0 if r.get("correct") is True else 0.0) for pid, r in recs.items()}
    k, n = int(sum(per.values())), len(per)
    return {"accuracy": (k / n) if n else None, "ci95": wilson(k, n), "correct": k, "problems": n,
            "per_problem": per, "time": s.get("time"), "tokens": s.get("tokens")}


def main(argv=None) -> int:
    from rstar.evolve import PRESETS, STAGES, Evolve, EvolveConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for every run (resumable)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--model", default="default", help="policy_0: default, smol, or a model path")
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="evolve budget preset")
    ap.add_argument("--pool", type=int, default=400, help="problems the pre-pass looks at (the first N)")
    ap.add_argument("--prepass", choices=("bo4", "greedy"), default="bo4")
    ap.add_argument("--train", type=int, default=100, help="training problems (teaching ones from the pool)")
    ap.add_argument("--heldout", type=int, default=200, help="held-out evaluation problems")
    ap.add_argument("--heldout-from", type=int, default=None, help="first held-out problem (default: --pool)")
    ap.add_argument("--rollouts", type=int, help="search rollouts (data and evaluation; default: the presets')")
    ap.add_argument("--max-steps", type=int, help="SFT optimizer steps at most")
    ap.add_argument("--epochs", type=float, help="SFT epochs")
    ap.add_argument("--dpo", dest="dpo", action="store_true", default=True, help="Step-DPO after SFT (default)")
    ap.add_argument("--no-dpo", dest="dpo", action="store_false")
    ap.add_argument("--methods", default="greedy,search,ppm", help="evaluations (comma-separated: greedy, search, ppm)")
    ap.add_argument("--no-train-eval", action="store_true", help="skip the evaluation on the training problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            sys.exit(f"--methods: unknown method {m!r} (one of {', '.join(METHODS)})")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = resolve_model(a.model)
    rows = read_jsonl(Path(a.data))
    pool_rows = rows[:a.pool]
    h_from = a.pool if a.heldout_from is None else a.heldout_from
    rep = Report(out, {k: v for k, v in vars(a).items() if k != "json"})
    t_start = time.perf_counter()

    pre = rep.stage("prepass", lambda: prepass(pool_rows, out, model, a.prepass, a.seed, None))
    by_id = {r["id"]: r for r in pool_rows}
    train_ids = pre["teach"][:a.train]
    if not train_ids:
        rep.data["error"] = "the pre-pass found no problem that teaches (the policy is always right or always wrong)"
        rep.save()
        print(json.dumps({"error": rep.data["error"]}))
        return 1
    train_file = write_problems([by_id[i] for i in train_ids], out / "train.jsonl")
    held_rows = [r for r in rows[h_from:h_from + a.heldout] if r["id"] not in set(train_ids)]
    held_file = write_problems(held_rows, out / "heldout.jsonl")

    budget = dataclasses.replace(PRESETS[a.preset], problems=None, eval_problems=None, dpo=a.dpo)
    for flag, field in (("rollouts", "rollouts"), ("max_steps", "sft_max_steps"), ("epochs", "sft_epochs")):
        if getattr(a, flag) is not None:
            setattr(budget, field, getattr(a, flag))
    ev = Evolve(EvolveConfig(data=str(train_file), out=str(out / "evolve"), rounds=1, eval_data=None,
                             preset=a.preset, model=model, seed=a.seed, budget=budget, progress=False))

    def evolve():
        t0 = time.perf_counter()
        rows_ = ev.run()
        st = ev.state.data["rounds"]["0"]
        return {"table": rows_, "seconds": round(time.perf_counter() - t0, 1),
                "stage_s": {k: round((st.get(k) or {}).get("seconds", 0.0), 1) for k in STAGES},
                "data_scorer": ev.data_scorer(0), "data_preset": budget.search_preset}
    evo = rep.stage("evolve_round0", evolve)
    if evo.get("stage_s"):  # a resumed evolve's own stage seconds, not just this call's
        rep.data["time_s"]["evolve_round0"] = round(sum(evo["stage_s"].values()), 1)
    policy1, ppm1 = ev.policy_of(1), ev.ppm_of(1)
    trained = policy1 != model

    splits = [("heldout", held_file)] + ([] if a.no_train_eval else [("train", train_file)])
    cells: dict = {"0": {}, "1": {}}
    for method in methods:
        for rnd, pol in (("0", model), ("1", policy1)):
            if method == "ppm" and (rnd == "0" or ppm1 is None):
                continue  # PPM_1 guides policy_1; round 0 has no PPM
            if rnd == "1" and not trained:
                continue
            for split, f in splits:
                name = f"eval_r{rnd}_{method}_{split}"
                scorer = f"ppm:{ppm1}" if method == "ppm" else "none"
                got = rep.stage(name, lambda f=f, pol=pol, method=method, scorer=scorer, name=name: evaluate(
                    f, out / name, pol, method, scorer, budget, a.seed))
                cells[rnd].setdefault(method, {})[split] = got
                print(f"round {rnd} {method:6} {split:8} {got['accuracy']}", file=sys.stderr)

    diff: dict = {}
    for method in methods:
        for split, _ in splits:
            c0 = (cells["0"].get(method if method != "ppm" else "search") or {}).get(split)
            c1 = (cells["1"].get(method) or {}).get(split)
            if not c0 or not c1:
                continue
            ids = sorted(set(c0["per_problem"]) & set(c1["per_problem"]))
            d = paired_bootstrap([c1["per_problem"][i] for i in ids], [c0["per_problem"][i] for i in ids],
                                 seed=a.seed)
            d["against"] = f"round 0 {'search (vote)' if method == 'ppm' else method}"
            diff.setdefault(method, {})[split] = d
    guidance = {}
    for split, _ in splits:
        g = (cells["1"].get("ppm") or {}).get(split)
        s = (cells["1"].get("search") or {}).get(split)
        if g and s:
            guidance[split] = differing_fraction(results(out / f"eval_r1_ppm_{split}"),
                                                 results(out / f"eval_r1_search_{split}"))

    slim = {r: {m: {s: {k: v for k, v in c.items() if k != "per_problem"} for s, c in per.items()}
                for m, per in ms.items()} for r, ms in cells.items()}
    table = (evo.get("table") or [{}])[0]
    report = {
        "bench": "evolve", "model": model, "engine": engine_of(model), "preset": a.preset,
        "rounds": slim, "diff": diff, "guided_trees_differ": guidance,
        "trained": trained, "policy1": policy1, "ppm1": ppm1,
        "train_problems": len(train_ids), "heldout_problems": len(held_rows),
        "prepass": {k: pre[k] for k in ("kind", "pool", "always_right", "always_wrong", "rule")}
                   | {"teach": len(pre["teach"])},
        "data": {"scorer": evo.get("data_scorer"), "preset": evo.get("data_preset"),
                 "search_accuracy": table.get("search_accuracy"), "traces": table.get("traces"),
                 "ppm_pairs": table.get("ppm_pairs"), "dpo_pairs": table.get("dpo_pairs"),
                 "sft_loss": table.get("sft_loss"), "ppm_eval_accuracy": table.get("ppm_eval_accuracy")},
        "sizes": {"pool": a.pool, "train": a.train, "heldout": a.heldout, "heldout_from": h_from,
                  "rollouts": budget.rollouts, "dpo": a.dpo, "methods": methods},
        "time_s": dict(rep.data["time_s"], evolve_stages=evo.get("stage_s"),
                       total_this_call=round(time.perf_counter() - t_start, 1)),
        "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
    }
    rep.data["summary"] = report
    rep.save()
    (out / "bench_evolve.json").write_text(json.dumps(report, indent=2, default=str))
    print("where time goes (s): " + ", ".join(f"{k} {v}" for k, v in rep.data["time_s"].items()), file=sys.stderr)
    print(f"{'':8}{'method':8}{'split':9}{'round 0':>22}{'round 1':>22}{'r1 - r0 [paired 95%]':>26}")
    for method in methods:
        for split, _ in splits:
            def fmt(c):
                if not c or c.get("accuracy") is None:
                    return "-"
                lo, hi = c["ci95"] or (float("nan"), float("nan"))
                return f"{100 * c['accuracy']:.1f} [{100 * lo:.0f},{100 * hi:.0f}]"
            d = (diff.get(method) or {}).get(split)
            ds = "-" if not d or d["delta"] is None else \
                f"{100 * d['delta']:+.1f} [{100 * d['ci95'][0]:+.0f},{100 * d['ci95'][1]:+.0f}]"
            print(f"{'':8}{method:8}{split:9}{fmt((slim['0'].get(method) or {}).get(split)):>22}"
                  f"{fmt((slim['1'].get(method) or {}).get(split)):>22}{ds:>26}")
    if a.json:
        print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
