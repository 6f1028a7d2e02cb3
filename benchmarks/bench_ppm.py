"""The PPM benchmark (issue 8): trees -> pairs -> both PPM kinds -> held-out accuracy, scoring cost,
and answer selection by PPM vs majority vote at the same samples.

Protocol (every size is a flag; the full protocol is 100 problems, 70/30):

1. search the first ``--problems`` GSM8K training problems with gold rewards (``rstar run --reward
   gold``), or reuse a run (``--run DIR``);
2. ``rstar export`` the trees; report the record count of each kind;
3. train the llama.cpp hidden-state head (``--kind head``) on the pairs of the first
   ``--train-frac`` of the problems, and, with ``--lm-steps N``, the LoRA PPM (``--kind lm``,
   TRL) for N optimizer steps; held-out pairwise accuracy of each on the pairs of the rest;
4. scoring cost per node of each kind (seconds per scored text), against the policy's own
   cost per node in the same run (model seconds / nodes), as a ratio;
5. answer selection on the held-out problems, among the same finished solutions: majority vote,
   the PPM's best solution, and a PPM-weighted vote; accuracy with 95% Wilson intervals.
   ``--blind`` searches the held-out problems again without gold (``--reward none``) for this;
   otherwise the gold-rewarded trees are used (their samples were steered by gold, which
   inflates every method's accuracy equally: the comparison between selectors stays fair).

    python benchmarks/bench_ppm.py --problems 100 --rollouts 4 --json          # hours on 2 cores
    python benchmarks/bench_ppm.py --problems 12 --rollouts 4 --work /tmp/bp   # what a session can run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def rstar(*args: str) -> None:
    """`rstar ARGS` in this process, with llama.cpp's extra weight buffers off on an AMX CPU
    (llama.cpp's AMX matmul crashes there: rstar.ppm.no_amx_buffers)."""
    from rstar.cli import main as cli
    from rstar.ppm import no_amx_buffers

    print("$ rstar " + " ".join(args), file=sys.stderr, flush=True)
    with no_amx_buffers():
        rc = cli(list(args))
    if rc:
        raise SystemExit(f"rstar {args[0]} failed ({rc})")


def save(work: Path, report: dict) -> None:
    """The report so far, kept in the work directory after every stage: a late failure loses nothing."""
    tmp = work / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(work / "report.json")


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def search(data: Path, out: Path, limit: int, rollouts: int, reward: str, extra: list[str]) -> None:
    args = ["run", str(data), "--out", str(out), "--limit", str(limit), "--reward", reward,
            "--rollouts", str(rollouts), "--no-progress", *extra]
    if (out / "results.jsonl").exists():
        args.append("--resume")
    rstar(*args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--train-frac", type=float, default=0.7)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--search-args", default="", help="extra `rstar run` flags, quoted")
    ap.add_argument("--run", default=None, help="reuse this gold-rewarded run directory")
    ap.add_argument("--work", default="/tmp/bench_ppm")
    ap.add_argument("--base", default="default", help="model for search and both PPM kinds")
    ap.add_argument("--blind", action="store_true", help="search the held-out problems again without gold")
    ap.add_argument("--head-epochs", type=int, default=300)
    ap.add_argument("--lm-steps", type=int, default=0, help="train the LoRA PPM for this many steps (0: skip)")
    ap.add_argument("--lm-max-length", type=int, default=768)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from rstar import trace
    from rstar.export import ExportConfig, export_run
    from rstar.grader import answers_equal, majority_vote
    from rstar.ppm import load_scorer
    from rstar.train.base import resolve_base
    from rstar.train.reward import train_head, train_lm

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    extra = a.search_args.split()
    where, gguf = resolve_base(a.base)
    base_path = str(Path(where) / gguf) if gguf else where
    if a.base != "default":
        extra = ["--model", base_path, *extra]
    report: dict = {"problems": a.problems, "rollouts": a.rollouts, "train_frac": a.train_frac,
                    "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}

    # 1. search with gold rewards
    run = Path(a.run) if a.run else work / "run_gold"
    t0 = time.perf_counter()
    if not a.run:
        search(Path(a.data), run, a.problems, a.rollouts, "gold", extra)
    report["search_s"] = round(time.perf_counter() - t0, 1)
    records = [rec for _, rec in trace.iter_results(run)][: a.problems]
    order = sorted(records, key=lambda r: r.get("index", 0))
    n_train = int(round(a.train_frac * len(order)))
    train_ids = {r["id"] for r in order[:n_train]}
    held_recs = order[n_train:]
    nodes = sum(len(r["tree"]["nodes"]) for r in records)
    model_s = sum(r.get("time", {}).get("model_s", 0.0) for r in records)
    report["searched"] = len(records)
    report["solved_pass_at_k"] = sum(bool(r.get("pass_at_k")) for r in records)
    report["nodes"] = nodes
    report["policy_s_per_node"] = model_s / max(1, nodes - len(records))
    save(work, report)

    # 2. export
    data = work / "data"
    summary = export_run(run, data, ExportConfig())
    report["records"] = {k: summary[k] for k in ("sft", "ppm_pairs", "step_dpo", "values")}
    pairs = read_jsonl(data / "ppm_pairs.jsonl")
    tr = [p for p in pairs if p["problem"] in train_ids]
    ev = [p for p in pairs if p["problem"] not in train_ids]
    report["pairs_train"], report["pairs_eval"] = len(tr), len(ev)
    if not tr:
        report["error"] = "no training pairs: search more problems or rollouts"
        print(json.dumps(report, indent=1))
        return 1

    # 3. train the head
    head_dir = work / "ppm_head"
    res = train_head("ppm", tr, ev, a.base, head_dir, progress=False, epochs=a.head_epochs)
    report["head"] = {k: res["metrics"].get(k) for k in (
        "train_accuracy", "eval_accuracy", "feature_seconds", "fit_seconds", "feature_tokens_per_s", "texts")}
    save(work, report)
    lm_ok = False
    if a.lm_steps > 0:
        lm_dir = work / "ppm_lm"
        try:
            res = train_lm("ppm", tr, ev, a.base, lm_dir, progress=False, max_steps=a.lm_steps, batch_size=2,
                           lr=1e-4, lora_r=8, max_length=a.lm_max_length)
        except Exception as e:  # the head's figures still count; say why the LoRA PPM has none
            report["lm"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"LoRA PPM training failed: {e}", file=sys.stderr)
        else:
            lm_ok = True
            report["lm"] = {k: res["metrics"].get(k) for k in (
                "eval_accuracy", "train_seconds", "train_tokens", "train_tokens_per_s", "first_loss", "last_loss")}
            report["lm"]["steps"] = a.lm_steps
        save(work, report)

    # 5. selection on held-out problems (and 4. scoring cost on their solutions)
    sel_recs = held_recs
    if a.blind and held_recs:
        blind = work / "run_blind"
        data_file = work / "held.jsonl"
        src = read_jsonl(Path(a.data))[: a.problems]
        held_ids = {r["id"] for r in held_recs}
        data_file.write_text("".join(json.dumps(p) + "\n" for p in src if p.get("id") in held_ids))
        search(data_file, blind, len(held_ids), a.rollouts, "none", extra)
        sel_recs = [rec for _, rec in trace.iter_results(blind)]
    kinds = [("head", head_dir)] + ([("lm", work / "ppm_lm")] if lm_ok else [])
    sel: dict = {"problems": len(sel_recs), "with_solutions": 0, "vote": 0}
    for kind, d in kinds:
        scorer = load_scorer(d, "ppm")
        texts, owners = [], []
        for pi, rec in enumerate(sel_recs):
            for n in rec["tree"]["nodes"]:
                if trace.is_answer(n):
                    texts.append(trace.path_text(rec, n["id"]))
                    owners.append((pi, n["id"]))
        t1 = time.perf_counter()
        vals = [float(v) for v in scorer.raw(texts)] if texts else []
        cost = (time.perf_counter() - t1) / max(1, len(texts))
        scorer.close()
        report.setdefault(kind, {})["score_s_per_node"] = round(cost, 4)
        report[kind]["score_cost_vs_policy_per_node"] = round(cost / report["policy_s_per_node"], 3) \
            if report["policy_s_per_node"] else None
        best_ok = wvote_ok = 0
        for pi, rec in enumerate(sel_recs):
            sols = [(owners[i][1], vals[i]) for i in range(len(owners)) if owners[i][0] == pi]
            if not sols or rec.get("gold") is None:
                continue
            ns = rec["tree"]["nodes"]
            answers = [ns[nid]["answer"] for nid, _ in sols]
            best = max(sols, key=lambda s: s[1])
            best_ok += bool(answers_equal(ns[best[0]]["answer"], rec["gold"]))
            w = [(math.tanh(v / 5.0) + 1.0) / 2.0 + 1e-6 for _, v in sols]
            wvote_ok += bool(answers_equal(majority_vote(answers, w), rec["gold"]))
            if kind == kinds[0][0]:
                sel["with_solutions"] += 1
                sel["vote"] += bool(answers_equal(majority_vote(answers), rec["gold"]))
        sel[f"{kind}_best"] = best_ok
        sel[f"{kind}_weighted_vote"] = wvote_ok
    n = sel["problems"]
    for k in [k for k in sel if k not in ("problems", "with_solutions")]:
        sel[k] = {"correct": sel[k], "accuracy": sel[k] / n if n else None, "ci95": wilson(sel[k], n)}
    sel["samples_steered_by_gold"] = not a.blind
    report["selection"] = sel
    report["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    save(work, report)
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
