"""`rstar solve`, `rstar run` and `rstar eval`: the search as users run it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from rstar.errors import RstarError
from rstar.search.config import ALGORITHMS, PRESETS
from rstar.selection import METHODS as SELECTIONS

ALGO_HELP = """\
algorithms (--algo):
  mcts    rStar-Math MCTS: UCT (c=2) over steps; finished steps back up the scorer's value
  puct    AlphaMath MCTS: PUCT (c=1.25) with priors exp(mean token log-prob), leaf values from the scorer
  beam    AlphaMath step-level beam search: --beam-width B1 beams, --beam-samples B2 each, ranked by the scorer
  bon     best-of-N: --n whole solutions, each step's code executed, chosen by the scorer or by vote
  mctsr   MCTSr: critique + rewrite of whole answers, self-evaluation in [-100, 100], --mctsr-rollouts
  greedy  one sample per step at temperature 0, code executed

scorers (--scorer):
  gold        +1/-1 against the gold answer (data generation; the answer is then oracle-guided)
  none        no value: the answer is a majority vote over the finished solutions
  self        the policy grades finished solutions with MCTSr's strict prompt
  ppm:PATH    a process preference model trained with `rstar train ppm`
  value:PATH  a value head trained with `rstar train value`

answer selection (--select): auto (vote without values, value-weighted vote with them), best (highest
value), vote, weighted_vote, topk_vote (vote among the --top-k best by value).

presets (--preset): rstar-generate, rstar-eval (rStar-Math's public values), alphamath, mctsr (published
values), cpu (what 2 cores and a 1.5B model afford; the default), greedy. Recipes with every knob ship
in rstar/recipes/ (--config NAME) and every run saves its own (--config RUN_DIR/run.json replays it).
"""


def register(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "solve", help="solve one question with tree search and print the verified solution",
        description="Solve one math question: the model writes Python step by step, each step runs in the "
                    "sandbox, the search (MCTS by default) explores steps, and the chosen solution is printed "
                    "with each step's output and how the answer was chosen.",
        epilog=ALGO_HELP, formatter_class=fmt)
    p.add_argument("question", help="the question, in quotes")
    p.add_argument("--answer", default=None, help="gold answer, if known: the chosen answer is graded against it "
                                                  "(with --scorer gold finished steps are also rewarded by it)")
    _search_args(p)
    p.add_argument("--json", action="store_true", help="print the whole result (with the tree) as JSON")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser(
        "run", help="search over a JSONL dataset, saving results and trees (resumable)",
        description="Run the search over every problem of a JSONL file (one object per line: 'question', optional "
                    "'answer', optional 'id'). Answers only grade the search unless --scorer gold asks for gold "
                    "rewards (data generation). Each problem's result and whole tree are appended to "
                    "OUT/results.jsonl as soon as it finishes; OUT/run.json holds the recipe; --resume continues "
                    "a stopped run.",
        epilog=ALGO_HELP, formatter_class=fmt)
    p.add_argument("data", help="JSONL file of problems")
    p.add_argument("--out", required=True, help="output directory (results.jsonl, run.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished problems")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of the file")
    p.add_argument("--reward", choices=("gold", "none"), default=None,
                   help="older name of --scorer gold / --scorer none")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="spread problems over a Ray cluster: 'auto' attaches to a running one, an address to "
                        "that one, no value starts a local cluster (pip install \"rstar[ray]\")")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _search_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="recompute the metrics of a run directory",
                       description="Recompute accuracy (with its 95% interval), pass@k, unknown grades, tokens and "
                                   "the time split from OUT/results.jsonl.")
    p.add_argument("out", help="run directory holding results.jsonl")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=cmd_eval)


def _search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and sandbox")
    g.add_argument("--model", default=None,
                   help="'default' (built-in Qwen2.5-Coder-1.5B-Instruct Q4_K_M via llama.cpp, fetched on first use), "
                        "a .gguf path, 'hf:ID_OR_DIR', 'vllm:ID_OR_DIR', 'openai:http://HOST:PORT/v1', or a "
                        "directory written by `rstar train sft|dpo`")
    g.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="an engine option of the model's backend, repeatable (vLLM: enforce_eager, dtype, "
                        "max_model_len, ...; llama.cpp: n_threads, n_ctx, n_gpu_layers, lora_path)")
    g.add_argument("--template", default=None, help="step format: 'default' or 'rstar' (rStar-Math tags)")
    g.add_argument("--sandbox-size", type=int, default=None, help="warm containers (default: CPU count)")
    g.add_argument("--image", default=None, help="sandbox image (default: rstar-sandbox:latest)")
    g.add_argument("--no-incremental", action="store_true",
                   help="re-run each step's whole path instead of forking its parent step's interpreter")
    g = p.add_argument_group("search")
    g.add_argument("--config", default=None, metavar="RECIPE",
                   help="start from a recipe: a shipped name (rstar-generate, rstar-eval, alphamath-mcts, "
                        "alphamath-beam, mctsr, best-of-n, greedy), a YAML/JSON file, or a run's run.json")
    g.add_argument("--algo", choices=ALGORITHMS, default=None, help="search algorithm (default: mcts)")
    g.add_argument("--method", choices=ALGORITHMS, default=None, help=argparse.SUPPRESS)  # older name of --algo
    g.add_argument("--scorer", default=None,
                   help="gold | none | self | ppm:PATH | value:PATH (default: none, a blind search; self for "
                        "mctsr; gold rewards only when asked for)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="settings to start from (default: cpu); the flags below override them")
    g.add_argument("--rollouts", type=int, help="mcts/puct: finished or cut paths per problem")
    g.add_argument("--children", type=int, help="mcts/puct: candidate steps sampled per expansion")
    g.add_argument("--max-depth", type=int, help="steps per solution at most")
    g.add_argument("--errors", type=int, dest="error_threshold", help="consecutive failing steps before a node is cut")
    g.add_argument("--temperature", type=float)
    g.add_argument("--c", type=float, help="exploration constant (default: UCT 2, PUCT 1.25, MCTSr 1.4)")
    g.add_argument("--leaves", type=int, dest="leaves_per_tree", help="leaves per tree per model call (virtual loss)")
    g.add_argument("--max-tokens", type=int, help="tokens per step")
    g.add_argument("--max-rounds", type=int, help="model calls per problem at most")
    g.add_argument("--beam-width", type=int, help="beam: B1 beams kept")
    g.add_argument("--beam-samples", type=int, help="beam: B2 samples per beam and step")
    g.add_argument("--n", type=int, help="bon: whole solutions per problem")
    g.add_argument("--mctsr-rollouts", type=int, help="mctsr: critique + rewrite iterations")
    g.add_argument("--mctsr-children", type=int, dest="mctsr_max_children", help="mctsr: children per node at most")
    g.add_argument("--self-eval-samples", type=int, help="mctsr / --scorer self: grades per answer")
    g.add_argument("--select", choices=SELECTIONS, dest="answer_selection", help="answer selection (see below)")
    g.add_argument("--top-k", type=int, dest="top_k_vote", help="k of --select topk_vote")
    g.add_argument("--concurrent", type=int, dest="concurrent_problems",
                   help="problems searched at once, at most (default: sized to the engine's batch; 1 for "
                        "llama.cpp, whose single KV cache would be re-filled at every switch between problems)")
    g.add_argument("--seed", type=int)
    g.add_argument("--driver", choices=("async", "lockstep"),
                   help="async (default): each tree advances as its completions return; lockstep: one shared "
                        "model call per round (the same trees, slower)")


_KNOBS = ("rollouts", "children", "max_depth", "error_threshold", "temperature", "c", "leaves_per_tree",
          "max_tokens", "max_rounds", "beam_width", "beam_samples", "n", "mctsr_rollouts", "mctsr_max_children",
          "self_eval_samples", "answer_selection", "top_k_vote", "concurrent_problems", "seed", "driver")


def recipe_from_args(args):
    """The run's recipe: --config (or a fresh one), then --preset, then every flag given."""
    from rstar.policy import parse_backend_options
    from rstar.recipe import Recipe, load_recipe
    from rstar.search.config import preset

    try:
        recipe = load_recipe(args.config) if args.config else Recipe()
        if args.preset:
            recipe.search = preset(args.preset).replace(seed=recipe.search.seed)
        elif not args.config:
            recipe.search = preset("cpu")
        algo = args.algo or args.method
        if algo:
            recipe.algo = algo
        if args.model:
            recipe.model = args.model
        if args.template:
            recipe.template = args.template
        scorer = args.scorer or getattr(args, "reward", None)
        if scorer:
            recipe.scorer = scorer
        if args.backend_opt:
            recipe.backend_options.update(parse_backend_options(args.backend_opt))
        sb = dict(recipe.sandbox)
        if args.sandbox_size is not None:
            sb["size"] = args.sandbox_size
        if args.image is not None:
            sb["image"] = args.image
        if args.no_incremental:
            sb["incremental"] = False
        recipe.sandbox = sb
        recipe.search = recipe.search.replace(**{k: getattr(args, k, None) for k in _KNOBS})
    except ValueError as exc:
        raise RstarError(str(exc)) from None
    return recipe


def cmd_solve(args) -> int:
    from rstar.components import check_problems, open_components
    from rstar.results import Problem

    recipe = recipe_from_args(args)
    recipe.search = recipe.search.replace(concurrent_problems=1)
    problem = Problem(id="question", question=args.question, gold=args.answer)
    check_problems(recipe, [problem], "the question (give --answer)")
    with ExitStack() as stack:
        search = open_components(recipe, stack).search
        start = time.perf_counter()
        result = search.solve(problem)
        wall = time.perf_counter() - start
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_solution(result, wall)
    return 0 if result["answer"] is not None else 1


def describe_selection(result: dict) -> str:
    sel = result.get("selection") or {}
    if result.get("answer") is None:
        return "no finished solution"
    method, agree, finished = sel.get("method"), sel.get("agree", 0), sel.get("finished", 0)
    agreeing = f"{agree} of {finished} finished solution{'s' if finished != 1 else ''} agree{'s' if finished == 1 else ''}"
    if method == "best":
        v = sel.get("value")
        return f"highest value{'' if v is None else f' {v:+.2f}'}; {agreeing}"
    how = {"vote": "majority vote", "weighted_vote": "value-weighted vote",
           "topk_vote": "vote among the top by value"}.get(method, method)
    return f"{agreeing}; {how}"


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
    print(f"Answer: {result['answer']} ({describe_selection(result)})", file=out)
    if result.get("gold") is not None:
        verdict = {True: "correct", False: "wrong", None: "could not be graded"}[result["correct"]]
        print(f"Gold: {result['gold']}  ({verdict})", file=out)
    t = result["time"]
    print(f"Search: {result.get('algo', 'mcts')} with scorer {result.get('scorer', 'none')}, {result['rollouts']} "
          f"rollouts, {result['nodes']} nodes, {result['num_terminal']} finished solutions, {result['tokens']} tokens, "
          f"{wall:.1f}s (model {t['model_s']:.1f}s, sandbox {t['sandbox_s']:.2f}s)", file=out)


def cmd_run(args) -> int:
    from rstar.results import format_summary
    from rstar.runner import run_dataset

    recipe = recipe_from_args(args)
    if args.resume and not args.config and (Path(args.out) / "run.json").is_file() and not _gave_settings(args):
        from rstar.recipe import load_recipe

        recipe = load_recipe(str(Path(args.out) / "run.json"))  # resume exactly the saved recipe
    print(f"searching with {recipe.algo}, scorer {recipe.resolve().scorer}, model {recipe.model}", file=sys.stderr)
    try:
        summary = run_dataset(args.data, args.out, recipe, resume=args.resume, limit=args.limit,
                              progress=not args.no_progress, ray=args.ray)
    except KeyboardInterrupt:
        print(f"interrupted: finished problems are saved in {args.out}; continue with --resume", file=sys.stderr)
        return 130
    print(format_summary(summary))
    if summary.get("engine"):
        from rstar.search.driver import format_engine
        print(format_engine(summary["engine"]))
    return 0


def _gave_settings(args) -> bool:
    return any(getattr(args, k, None) is not None for k in _KNOBS + ("algo", "method", "scorer", "preset", "model",
                                                                     "template", "reward"))


def cmd_eval(args) -> int:
    from rstar.results import format_summary, load_results, summarize

    summary = summarize(load_results(args.out))
    from rstar.search.driver import format_engine, saved_engine
    if saved_engine(args.out):  # the engine's busy fraction and batch occupancy, from run.json
        summary["engine"] = saved_engine(args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
        if summary.get("engine"):
            print(format_engine(summary["engine"]))
    return 0
