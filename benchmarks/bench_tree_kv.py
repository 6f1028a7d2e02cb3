"""The batched llama.cpp engine with its tree-shaped KV cache vs the sequential llama.cpp backend.

(a) Batched-decode curve of the engine: generated tokens / wall second when ``k`` sequences decode
    together (``--curve 1,4,16,64``): one GSM8K chat prompt is prefilled once (a warm-up request),
    then ``k`` seeded samples of it run from the cached prompt, so the time is decoding.
(b) Search: MCTS, the ``cpu`` preset, no gold rewards (blind; the gold answers only grade), on the
    first ``--problems`` problems of ``--data``, once per engine (``--engines sequential,batch``):
    generated tokens/s, prompt tokens sent vs evaluated (the rest served from the KV cache),
    rollouts/s, accuracy with its 95% Wilson interval, peak memory (summed RSS of the worker's
    process tree, sampled every 0.2 s), and where the time goes (the model's busy seconds,
    its decode steps and their mean batch occupancy, the search's model/sandbox/other split).

Each engine runs in its own child process (a cold load, its own peak memory). Every finished
problem and curve point is appended to ``--out`` (JSONL) at once, and a rerun with the same
``--out`` skips what is there (resume); the summary is computed from the file.

    python benchmarks/bench_tree_kv.py --out tree_kv.jsonl --json
    python benchmarks/bench_tree_kv.py --model path/to/model.gguf --problems 2 --curve 1,4 --json  # toy

Prompt tokens: the batch engine counts a request's prompt once (its n samples share one prefill),
the sequential backend once per sample (it decodes each sample's prompt); ``prompt_eval_fraction``
is the batch engine's. A toy run (``--rollouts 1 --max-tokens 24 --problems 1``) proves the
script works; its figures mean nothing.

``--json`` prints one object as the last line, with ``rollouts_speedup`` (batch / sequential
rollouts per second), ``prompt_eval_fraction`` (the batch engine's prompt tokens evaluated / sent),
``batch64_vs_batch1`` (tokens/s at the curve's largest k / at k=1; named for k=64).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import DATA, run_with_peak_rss  # noqa: E402

ENGINES = ("sequential", "batch")


def _load(engine: str, gguf: str, args):
    from rstar.policy import load_policy

    opts = {"n_threads": args.threads, "n_ctx": args.n_ctx, "engine": engine}
    if engine == "batch":
        opts.update(parallel=args.parallel, kv_budget=args.kv_budget)
    return load_policy(gguf, options=opts)


def _append(path: Path, rec: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a crash: its work is redone
    return out


# ------------------------------------------------------------------ workers (child processes)


def worker_curve(args) -> None:
    from rstar.results import read_problems

    out = Path(args.out)
    done = {r["k"] for r in _records(out) if r.get("kind") == "curve"}
    todo = [k for k in args.curve if k not in done]
    if not todo:
        return
    q = next(iter(read_problems(args.data))).question
    policy = _load("batch", args.gguf, argparse.Namespace(**{**vars(args), "parallel": max(max(todo), args.parallel)}))
    try:
        prompt = policy.format_chat([{"role": "user", "content": q}])
        policy.generate([prompt], max_tokens=1, temperature=0)  # the prompt's KV, cached
        for k in todo:
            before = policy.stats()
            t0 = time.perf_counter()
            rows = policy.generate([prompt], n=k, max_tokens=args.curve_tokens, temperature=0.7, seed=k)
            wall = time.perf_counter() - t0
            after = policy.stats()
            tokens = sum(c.num_tokens for c in rows[0])
            steps = after["decode_steps"] - before["decode_steps"]
            _append(out, {"kind": "curve", "k": k, "tokens": tokens, "wall_s": round(wall, 3),
                          "tokens_per_s": round(tokens / wall, 3), "decode_steps": steps,
                          "occupancy": round((after["sequences_decoded"] - before["sequences_decoded"])
                                             / max(steps, 1), 2)})
            print(f"curve k={k}: {tokens} tokens in {wall:.1f}s = {tokens / wall:.1f} tokens/s", file=sys.stderr)
    finally:
        policy.close()


def worker_search(engine: str, args) -> None:
    from rstar.results import read_problems
    from rstar.sandbox import SandboxPool
    from rstar.search import MCTS, preset
    from rstar.templates import get_template

    out = Path(args.out)
    problems = list(read_problems(args.data))[: args.problems]
    done = {r["index"] for r in _records(out) if r.get("kind") == "problem" and r.get("engine") == engine}
    todo = [(i, p) for i, p in enumerate(problems) if i not in done]
    if not todo:
        return
    policy = _load(engine, args.gguf, args)
    try:
        cfg = preset("cpu").replace(seed=0)
        if args.rollouts:  # toy runs only: the measurement keeps the preset
            cfg = cfg.replace(rollouts=args.rollouts)
        if args.max_tokens:
            cfg = cfg.replace(max_tokens=args.max_tokens)
        conc = args.concurrent or policy.preferred_concurrency
        if conc:
            cfg = cfg.replace(concurrent_problems=conc)
        by_id = {str(p.id): i for i, p in todo}
        with SandboxPool(size=args.sandbox_size) if args.sandbox_size else SandboxPool() as pool:
            search = MCTS(policy, get_template(args.template), pool, cfg)  # no scorer: blind
            before = policy.stats()
            t0 = time.perf_counter()
            n = 0
            for res in search.search([p for _, p in todo]):
                i = by_id.get(str(res.get("id")), -1)
                _append(out, {"kind": "problem", "engine": engine, "index": i, "result": res})
                n += 1
            wall = time.perf_counter() - t0
            after = policy.stats()
        delta = {k: (after[k] - before[k]) if isinstance(after.get(k), (int, float)) and
                 isinstance(before.get(k), (int, float)) else None for k in after}
        _append(out, {"kind": "segment", "engine": engine, "problems": n, "wall_s": round(wall, 3),
                      "stats": delta, "concurrent_problems": cfg.concurrent_problems,
                      "capacity": policy.capacity()})
    finally:
        policy.close()


# ------------------------------------------------------------------ parent


def run_child(argv: list[str], out: Path, engine: str) -> None:
    rc, peak = run_with_peak_rss([sys.executable, __file__] + argv)
    _append(out, {"kind": "peak", "engine": engine, "peak_rss_gib": round(peak / 2**30, 3), "rc": rc})
    if rc != 0:
        print(f"bench_tree_kv: the {engine} worker exited {rc}; what it finished is in {out} "
              "(rerun with the same --out to resume)", file=sys.stderr)


def summarize(out: Path, args) -> dict:
    from rstar.results import summarize as summarize_results

    recs = _records(out)
    summary: dict = {"model": str(args.gguf), "problems": args.problems, "threads": args.threads}
    curve = {r["k"]: r for r in recs if r.get("kind") == "curve"}
    summary["curve_tokens_per_s"] = {str(k): curve[k]["tokens_per_s"] for k in sorted(curve)}
    if curve:
        big, one = curve[max(curve)], curve.get(1)
        summary["batch64_vs_batch1"] = round(big["tokens_per_s"] / one["tokens_per_s"], 3) if one else None
        summary["curve_largest_k"] = max(curve)
    per = {}
    for eng in args.engines:
        results = [r["result"] for r in recs if r.get("kind") == "problem" and r.get("engine") == eng]
        segs = [r for r in recs if r.get("kind") == "segment" and r.get("engine") == eng]
        if not results:
            continue
        s = summarize_results(results)
        wall = sum(g["wall_s"] for g in segs)
        st: dict = {}
        for g in segs:
            for k, v in g["stats"].items():
                st[k] = None if v is None or st.get(k, 0) is None else st.get(k, 0) + v
        gen = st.get("generated_tokens") or s["tokens"]
        sent, computed = st.get("prompt_tokens"), st.get("prompt_tokens_computed")
        peaks = [r["peak_rss_gib"] for r in recs if r.get("kind") == "peak" and r.get("engine") == eng]
        per[eng] = {
            "problems": s["problems"], "accuracy": s["accuracy"], "accuracy_ci95": s["accuracy_ci95"],
            "rollouts": s["rollouts"], "wall_s": round(wall, 1),
            "rollouts_per_s": round(s["rollouts"] / wall, 4) if wall else None,
            "generated_tokens_per_s": round(gen / wall, 2) if wall else None,
            "prompt_tokens_sent": sent, "prompt_tokens_evaluated": computed,
            "prompt_tokens_reused": (sent - computed) if sent is not None and computed is not None else None,
            "prompt_eval_fraction": round(computed / sent, 4) if sent else None,
            "peak_rss_gib": max(peaks) if peaks else None,
            "model_busy_s": round(st["busy_s"], 1) if st.get("busy_s") is not None else None,
            "decode_steps": st.get("decode_steps"),
            "mean_occupancy": round(st["sequences_decoded"] / st["decode_steps"], 2)
            if st.get("decode_steps") else None,
            "search_time_split_s": s["time"],
        }
    summary["engines"] = per
    seq, bat = per.get("sequential"), per.get("batch")
    summary["rollouts_speedup"] = (round(bat["rollouts_per_s"] / seq["rollouts_per_s"], 3)
                                   if seq and bat and seq["rollouts_per_s"] and bat["rollouts_per_s"] else None)
    summary["prompt_eval_fraction"] = bat["prompt_eval_fraction"] if bat else None
    return summary


def report(summary: dict) -> None:
    print(f"model {summary['model']}, {summary['problems']} problems, {summary['threads']} threads")
    if summary["curve_tokens_per_s"]:
        print("batched decoding (generated tokens/s by sequences decoding together): "
              + ", ".join(f"{k}: {v}" for k, v in summary["curve_tokens_per_s"].items())
              + f"  (largest / 1: {summary.get('batch64_vs_batch1')})")
    for eng, r in summary["engines"].items():
        lo, hi = r["accuracy_ci95"] or (None, None)
        print(f"{eng:>10}: {r['rollouts']} rollouts in {r['wall_s']}s = {r['rollouts_per_s']} rollouts/s, "
              f"{r['generated_tokens_per_s']} generated tokens/s, accuracy {r['accuracy']} [{lo}, {hi}], "
              f"peak {r['peak_rss_gib']} GiB")
        print(f"{'':>12}prompt tokens sent {r['prompt_tokens_sent']}, evaluated {r['prompt_tokens_evaluated']} "
              f"(fraction {r['prompt_eval_fraction']}), reused {r['prompt_tokens_reused']}")
        t = r["search_time_split_s"]
        print(f"{'':>12}where time goes: model busy {r['model_busy_s']}s of {r['wall_s']}s wall; decode steps "
              f"{r['decode_steps']}, mean sequences a step {r['mean_occupancy']}; search split model "
              f"{t.get('model_s')}s, sandbox {t.get('sandbox_s')}s, other {t.get('other_s')}s")
    print(f"rollouts speedup (batch / sequential): {summary['rollouts_speedup']}; batch engine prompt "
          f"tokens evaluated / sent: {summary['prompt_eval_fraction']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default' (the built-in model) or a .gguf")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--template", default="default")
    ap.add_argument("--problems", type=int, default=30)
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: sequential, batch")
    ap.add_argument("--curve", default="1,4,16,64", help="sequences decoding together, comma-separated ('' skips)")
    ap.add_argument("--curve-tokens", type=int, default=64, help="tokens per sample in the curve")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--n-ctx", type=int, default=4096, help="tokens of one sequence")
    ap.add_argument("--parallel", type=int, default=32, help="batch engine: sequences at once")
    ap.add_argument("--kv-budget", type=int, default=32768, help="batch engine: KV cache cells")
    ap.add_argument("--concurrent", type=int, default=None, help="problems in flight (default: the backend's)")
    ap.add_argument("--sandbox-size", type=int, default=None)
    ap.add_argument("--rollouts", type=int, default=None, help="override the preset's rollouts (toy runs)")
    ap.add_argument("--max-tokens", type=int, default=None, help="override the preset's tokens a step (toy runs)")
    ap.add_argument("--out", default="bench_tree_kv.jsonl", help="JSONL of finished work; a rerun resumes it")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.curve = [int(x) for x in str(args.curve).split(",") if x.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in args.engines if e not in ENGINES]
    if bad:
        ap.error(f"--engines: unknown {bad[0]!r}; use {', '.join(ENGINES)}")
    if args.worker:
        if args.worker == "curve":
            worker_curve(args)
        else:
            worker_search(args.worker, args)
        return
    if args.model == "default":
        from rstar.models import ensure_default_model

        args.gguf = str(ensure_default_model(progress=True))
    else:
        args.gguf = str(Path(args.model).expanduser())
    out = Path(args.out)
    passthrough = ["--gguf", args.gguf, "--data", args.data, "--template", args.template,
                   "--problems", str(args.problems), "--curve", ",".join(map(str, args.curve)),
                   "--curve-tokens", str(args.curve_tokens), "--threads", str(args.threads),
                   "--n-ctx", str(args.n_ctx), "--parallel", str(args.parallel),
                   "--kv-budget", str(args.kv_budget), "--out", str(out)]
    if args.concurrent:
        passthrough += ["--concurrent", str(args.concurrent)]
    if args.sandbox_size:
        passthrough += ["--sandbox-size", str(args.sandbox_size)]
    for name in ("rollouts", "max_tokens"):
        if getattr(args, name):
            passthrough += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.curve:
        run_child(["--worker", "curve"] + passthrough, out, "curve")
    for eng in args.engines:
        run_child(["--worker", eng] + passthrough, out, eng)
    summary = summarize(out, args)
    report(summary)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
