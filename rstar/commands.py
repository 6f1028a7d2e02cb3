"""`rstar solve`, `rstar run` and `rstar eval`: the search as users run it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from rstar.errors import RstarError
from rstar.search.config import PRESETS, SearchConfig, preset


def register(sub) -> None:
    p = sub.add_parser(
        "solve", help="solve one question with tree search and print the verified solution",
        description="Solve one math question: the model writes Python step by step, each step runs in the "
                    "sandbox, MCTS searches over steps, and the chosen solution is printed with each step's output.")
    p.add_argument("question", help="the question, in quotes")
    p.add_argument("--answer", default=None, help="gold answer, if known: terminal steps are rewarded against it")
    _search_args(p, default_preset="cpu")
    p.add_argument("--json", action="store_true", help="print the whole result (with the tree) as JSON")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser(
        "run", help="search over a JSONL dataset, saving results and trees (resumable)",
        description="Run the search over every problem of a JSONL file (one object per line: 'question', optional "
                    "'answer', optional 'id'). Each problem's result and whole tree are appended to "
                    "OUT/results.jsonl as soon as it finishes; --resume continues a stopped run.")
    p.add_argument("data", help="JSONL file of problems")
    p.add_argument("--out", required=True, help="output directory (results.jsonl, run.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished problems")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of the file")
    p.add_argument("--reward", choices=("gold", "none"), default="gold",
                   help="terminal reward: +1/-1 against the gold answer (data generation), or none "
                        "(gold used only to grade afterwards: an honest accuracy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _search_args(p, default_preset="cpu")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="recompute the metrics of a run directory",
                       description="Recompute accuracy, pass@k, tokens and the time split from OUT/results.jsonl.")
    p.add_argument("out", help="run directory holding results.jsonl")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=cmd_eval)


def _search_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    g = p.add_argument_group("model and sandbox")
    g.add_argument("--model", default="default",
                   help="'default' (built-in Qwen2.5-Coder-1.5B-Instruct Q4_K_M via llama.cpp, fetched on first use), "
                        "a .gguf path, 'hf:ID_OR_DIR', 'vllm:ID', or 'openai:http://HOST:PORT/v1'")
    g.add_argument("--template", default="default", help="step format: 'default' or 'rstar' (rStar-Math tags)")
    g.add_argument("--sandbox-size", type=int, default=None, help="warm containers (default: CPU count)")
    g.add_argument("--image", default=None, help="sandbox image (default: rstar-sandbox:latest)")
    g = p.add_argument_group("search")
    g.add_argument("--method", choices=("mcts", "greedy"), default="mcts",
                   help="mcts, or greedy chain of thought (one sample, temperature 0, code executed)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=default_preset,
                   help=f"settings to start from (default: {default_preset}); the flags below override them")
    g.add_argument("--rollouts", type=int, help="terminal back-ups per problem")
    g.add_argument("--children", type=int, help="candidate steps sampled per expansion")
    g.add_argument("--max-depth", type=int, help="steps per solution at most")
    g.add_argument("--errors", type=int, dest="error_threshold", help="consecutive failing steps before a node is cut")
    g.add_argument("--temperature", type=float)
    g.add_argument("--c", type=float, help="UCT exploration constant")
    g.add_argument("--leaves", type=int, dest="leaves_per_tree", help="leaves per tree per model call (virtual loss)")
    g.add_argument("--max-tokens", type=int, help="tokens per step")
    g.add_argument("--select", choices=("q", "vote", "qvote"), dest="answer_selection",
                   help="answer selection: best Q, majority vote, Q-weighted vote")
    g.add_argument("--concurrent", type=int, dest="concurrent_problems",
                   help="problems searched at once (default: what the backend prefers; 1 for llama.cpp, "
                        "whose single KV cache would be re-filled at every switch between problems)")
    g.add_argument("--seed", type=int)


def config_from_args(args) -> SearchConfig:
    base = preset("greedy" if args.method == "greedy" else args.preset)
    keys = ("rollouts", "children", "max_depth", "error_threshold", "temperature", "c", "leaves_per_tree",
            "max_tokens", "answer_selection", "concurrent_problems", "seed")
    changes = {k: getattr(args, k, None) for k in keys}
    if args.method == "greedy":  # greedy is greedy whatever the preset says
        changes.update(rollouts=1, children=1, temperature=0.0, leaves_per_tree=1)
    try:
        return base.replace(**changes)
    except ValueError as exc:
        raise RstarError(str(exc)) from None


def _components(args, stack: ExitStack):
    """Template, sandbox pool and policy, in the order that fails fastest."""
    from rstar.policy import load_policy
    from rstar.sandbox import SandboxConfig, SandboxPool
    from rstar.templates import get_template

    try:
        template = get_template(args.template)
    except ValueError as exc:
        raise RstarError(str(exc)) from None
    sb_config = SandboxConfig() if args.image is None else SandboxConfig(image=args.image)
    pool = stack.enter_context(SandboxPool(size=args.sandbox_size, config=sb_config))
    print(f"loading model {args.model} ...", file=sys.stderr)
    policy = load_policy(args.model)
    stack.callback(policy.close)
    return template, pool, policy


def cmd_solve(args) -> int:
    from rstar.search.mcts import MCTS, Problem

    cfg = config_from_args(args)
    cfg = cfg.replace(concurrent_problems=1)
    with ExitStack() as stack:
        template, pool, policy = _components(args, stack)
        search = MCTS(policy, template, pool, cfg, use_gold=args.answer is not None)
        start = time.perf_counter()
        result = search.solve(Problem(id="question", question=args.question, gold=args.answer))
        wall = time.perf_counter() - start
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0 if result["answer"] is not None else 1
    print_solution(result, wall)
    return 0 if result["answer"] is not None else 1


def print_solution(result: dict, wall: float) -> None:
    out = sys.stdout
    print(f"Question: {result['question']}\n", file=out)
    if not result["solution"]:
        print("No verified solution was found.", file=out)
    for k, step in enumerate(result["solution"], 1):
        print(f"--- step {k} ({step['kind']}) ---", file=out)
        # the step's code carries its reasoning as comments; answer steps (rstar format) have only text
        print((step["code"] or step["text"]).rstrip(), file=out)
        if step["output"].strip():
            print(f"[output] {step['output'].rstrip()}", file=out)
    print(file=out)
    print(f"Answer: {result['answer']}", file=out)
    if result.get("gold") is not None:
        print(f"Gold: {result['gold']}  ({'correct' if result['correct'] else 'wrong'})", file=out)
    t = result["time"]
    print(f"Search: {result['rollouts']} rollouts, {result['nodes']} nodes, {result['num_terminal']} finished "
          f"solutions, {result['tokens']} tokens, {wall:.1f}s (model {t['model_s']:.1f}s, "
          f"sandbox {t['sandbox_s']:.2f}s)", file=out)


def cmd_run(args) -> int:
    from rstar.results import ResultWriter, format_summary, read_problems, summarize
    from rstar.search.mcts import MCTS

    cfg = config_from_args(args)
    data = Path(args.data)
    bad: list = []
    problems = list(read_problems(data, bad))
    if args.limit is not None:
        problems = problems[: args.limit]
    out = Path(args.out)
    writer = ResultWriter(out, resume=args.resume)
    todo = [p for p in problems if p.id not in writer.done]
    if writer.done:
        print(f"resuming: {len(problems) - len(todo)} of {len(problems)} problems already done", file=sys.stderr)
    interrupted = False
    with ExitStack() as stack:
        stack.callback(writer.close)
        if todo:
            template, pool, policy = _components(args, stack)
            if args.concurrent_problems is None and policy.preferred_concurrency:
                cfg = cfg.replace(concurrent_problems=policy.preferred_concurrency)
            (out / "run.json").write_text(json.dumps({
                "data": str(data), "model": args.model, "template": args.template, "method": args.method,
                "reward": args.reward, "config": cfg.__dict__}, indent=2, default=str))
            search = MCTS(policy, template, pool, cfg, use_gold=(args.reward == "gold"))
            bar = _progress(len(problems), len(problems) - len(todo), args.no_progress)
            stack.callback(bar.close)
            done_now = []
            prior = list(writer.done.values())
            start = time.perf_counter()
            try:
                for result in search.search(todo):
                    writer.write(result)
                    done_now.append(result)
                    bar.update(1)
                    bar.set_postfix_str(_postfix(prior + done_now, done_now, search, time.perf_counter() - start))
            except KeyboardInterrupt:
                interrupted = True
    summary = summarize(writer.done.values())
    print(format_summary(summary))
    if bad:
        print(f"skipped {len(bad)} malformed line(s) of {data}: " + "; ".join(map(str, bad[:5])), file=sys.stderr)
    if interrupted:
        print(f"interrupted: {len(writer.done)} results are saved in {out}; continue with --resume", file=sys.stderr)
        return 130
    return 0


def _progress(total: int, initial: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="problem", disable=disable, dynamic_ncols=True,
                file=sys.stderr)


def _postfix(results: list[dict], this_run: list[dict], search, elapsed: float) -> str:
    graded = [r for r in results if r.get("gold") is not None]
    parts = []
    if graded:
        parts.append(f"acc {100 * sum(bool(r['correct']) for r in graded) / len(graded):.0f}%")
    rollouts = sum(r["rollouts"] for r in this_run)
    parts.append(f"{rollouts / max(elapsed, 1e-9):.2f} rollouts/s")
    t = search.time
    if t.total_s > 0:
        parts.append(f"model {100 * t.model_s / t.total_s:.0f}% sandbox {100 * t.sandbox_s / t.total_s:.0f}% "
                     f"other {100 * t.other_s / t.total_s:.0f}%")
    return " | ".join(parts)


def cmd_eval(args) -> int:
    from rstar.results import format_summary, load_results, summarize

    summary = summarize(load_results(args.out))
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0
