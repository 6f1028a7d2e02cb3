"""The same workload on every policy backend that starts here: tokens/s, search rollouts/s,
peak memory, start-up time.

Backends (``--backends``, comma-separated): ``llamacpp`` (in process, the GGUF), ``llamacpp_server``
(``python -m llama_cpp.server`` + the OpenAI client), ``hf`` (transformers), ``vllm`` (offline
engine: the backend's default, in this process on CPU), ``vllm_mp`` (the same engine in child processes,
vLLM's default, ``deterministic=false``), ``vllm_server`` (``python -m vllm.entrypoints.openai.api_server``
+ the OpenAI client).
The model is the built-in one (``--model default``) or any GGUF; transformers and vLLM load it
converted to a model directory (``rstar model convert``, cached; the conversion is not timed).

Each backend runs in its own child process (``--worker``), so start-up is a cold load and peak
memory is that backend's alone: the parent samples the summed RSS of the child's process tree
(servers and engine processes included) every 0.2 s. Workload, with fixed seeds:

1. generation: ``--prompts`` chat prompts (GSM8K questions) x ``--n`` samples, ``--max-tokens``
   each, temperature 0.7: generated tokens / wall seconds;
2. search: MCTS (blind, ``--rollouts``, ``--children``) on the first ``--problems`` GSM8K
   training problems: rollouts / wall seconds.

Speeds are also given as ratios to the ``--baseline`` backend (default ``llamacpp``) measured
in the same run.

    python benchmarks/bench_backends.py --json
    python benchmarks/bench_backends.py --backends llamacpp,vllm --model path/to/model.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl"
BACKENDS = ("llamacpp", "llamacpp_server", "hf", "vllm", "vllm_mp", "vllm_server")


# ------------------------------------------------------------------ worker (one backend)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 900) -> None:
    import requests

    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(url + "/models", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not answer in {limit_s:.0f} s")
        time.sleep(0.5)


def start_backend(name: str, gguf: Path, args):
    """(policy, stop_fn or None)."""
    from rstar.policy import load_policy

    threads = args.threads
    if name == "llamacpp":
        return load_policy(str(gguf), options={"n_threads": threads, "n_ctx": 4096}), None
    if name in ("hf", "vllm", "vllm_mp", "vllm_server"):
        from rstar.models import ensure_converted

        model_dir, _ = ensure_converted(gguf, progress=True)
    if name == "hf":
        return load_policy(f"hf:{model_dir}", options={"n_threads": threads}), None
    if name in ("vllm", "vllm_mp"):
        opts = {"max_model_len": 4096, "kv_cache_space": 4}
        if name == "vllm_mp":
            opts["deterministic"] = False  # vLLM's default; "vllm" keeps the backend's (in process on CPU)
        return load_policy(f"vllm:{model_dir}", options=opts), None
    port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="bench_server.")) / "server.log"
    if name == "llamacpp_server":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads),
               "--n_threads_batch", str(threads)]
        env = dict(os.environ)
        extra = {"extra_body": {"repeat_penalty": 1.0}}
    elif name == "vllm_server":
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--max-model-len", "4096",
               "--enable-prefix-caching"]
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="4")
        extra = {}
    else:
        raise SystemExit(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    _wait_http(url, proc, log)
    policy = load_policy(f"openai:{url}", **extra)

    def stop():
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        fh.close()

    return policy, stop


def worker(name: str, args) -> dict:
    from rstar.results import read_problems, summarize
    from rstar.sandbox import SandboxPool
    from rstar.search import MCTS, preset
    from rstar.templates import get_template

    gguf = Path(args.gguf)
    problems = list(read_problems(args.data))
    template = get_template(args.template)
    t0 = time.perf_counter()
    policy, stop = start_backend(name, gguf, args)
    startup = time.perf_counter() - t0
    try:
        questions = [p.question for p in problems[: args.prompts]]
        prompts = [policy.format_chat([{"role": "user", "content": q}]) for q in questions]
        policy.generate(prompts[:1], max_tokens=4, temperature=0, seed=0)  # warm-up
        t0 = time.perf_counter()
        rows = policy.generate(prompts, n=args.n, max_tokens=args.max_tokens, temperature=0.7,
                               seed=list(range(len(prompts))))
        gen_s = time.perf_counter() - t0
        tokens = sum(c.num_tokens for r in rows for c in r)
        cfg = preset("cpu").replace(rollouts=args.rollouts, children=args.children,
                                    answer_selection="vote", seed=0)
        if policy.preferred_concurrency:
            cfg = cfg.replace(concurrent_problems=policy.preferred_concurrency)
        with SandboxPool(size=args.sandbox_size) as pool:
            search = MCTS(policy, template, pool, cfg)  # no scorer: blind, gold answers only grade
            t0 = time.perf_counter()
            results = list(search.search(problems[: args.problems]))
            search_s = time.perf_counter() - t0
        s = summarize(results)
        rollouts = sum(int(r.get("rollouts") or 0) for r in results)
    finally:
        policy.close()
        if stop:
            stop()
    return {"backend": name, "startup_s": round(startup, 1), "gen_tokens": tokens,
            "gen_s": round(gen_s, 1), "tokens_per_s": round(tokens / gen_s, 2),
            "search_problems": len(results), "rollouts": rollouts, "search_s": round(search_s, 1),
            "rollouts_per_s": round(rollouts / search_s, 4), "search_tokens": s["tokens"],
            "search_accuracy": s["accuracy"]}


# ------------------------------------------------------------------ parent: one child per backend


def run_with_peak_rss(cmd: list[str]) -> tuple[int, int]:
    """Run ``cmd`` (its output on our stderr) to the end: its exit status and the peak summed RSS
    (bytes) of its process tree, sampled every 0.2 s."""
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    return rc, peak


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of ``root`` and its descendants."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(d))
        rss[int(d)] = int(fields[21]) * page
    total, todo, seen = 0, [root], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss.get(p, 0)
        todo.extend(kids.get(p, []))
    return total


def run_child(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--gguf", str(args.gguf)] + _pass_through(args)
    out = tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False)
    rc, peak = run_with_peak_rss(cmd + ["--out", out.name])
    if rc != 0:
        return {"backend": name, "error": f"worker exited {rc} (see its output above)"}
    row = json.loads(Path(out.name).read_text())
    os.unlink(out.name)
    row["peak_rss_gib"] = round(peak / 2**30, 2)
    return row


def _pass_through(args) -> list[str]:
    return ["--template", args.template, "--data", str(args.data), "--prompts", str(args.prompts),
            "--n", str(args.n), "--max-tokens", str(args.max_tokens), "--problems", str(args.problems),
            "--rollouts", str(args.rollouts), "--children", str(args.children),
            "--threads", str(args.threads)] + (["--sandbox-size", str(args.sandbox_size)]
                                               if args.sandbox_size else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, from " + ", ".join(BACKENDS))
    ap.add_argument("--model", default="default", help="'default' (the built-in model) or a .gguf")
    ap.add_argument("--template", default="default")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--prompts", type=int, default=4, help="generation: prompts (GSM8K questions)")
    ap.add_argument("--n", type=int, default=2, help="generation: samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=64, help="generation: tokens per sample")
    ap.add_argument("--problems", type=int, default=2, help="search: GSM8K problems")
    ap.add_argument("--rollouts", type=int, default=2)
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (llama.cpp, torch)")
    ap.add_argument("--sandbox-size", type=int, default=None)
    ap.add_argument("--baseline", default="llamacpp", help="the backend the speed ratios are taken against")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args.worker, args)))
        return
    if args.model == "default":
        from rstar.models import ensure_default_model

        args.gguf = ensure_default_model(progress=True)
    else:
        args.gguf = Path(args.model).expanduser().resolve()
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows = []
    for name in names:
        print(f"== {name}", file=sys.stderr)
        rows.append(run_child(name, args))
        print(json.dumps(rows[-1]), file=sys.stderr)
    base = next((r for r in rows if r["backend"] == args.baseline and "error" not in r), None)
    print(f"{'backend':16} {'start s':>8} {'tok/s':>8} {'x base':>8} {'rollouts/s':>11} {'x base':>8} {'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['backend']:16} {r['error']}")
            continue
        if base:
            r["baseline"] = args.baseline
            r["tokens_per_s_vs_baseline"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            r["rollouts_per_s_vs_baseline"] = round(r["rollouts_per_s"] / base["rollouts_per_s"], 2) \
                if base["rollouts_per_s"] else None
        print(f"{r['backend']:16} {r['startup_s']:8.1f} {r['tokens_per_s']:8.1f} "
              f"{r.get('tokens_per_s_vs_baseline', float('nan')):8.2f} {r['rollouts_per_s']:11.3f} "
              f"{r.get('rollouts_per_s_vs_baseline') or float('nan'):8.2f} {r['peak_rss_gib']:9.2f}")
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"load average (1, 5, 15 min): {load}; model {Path(args.gguf).name}; workload: {args.prompts} prompts x "
          f"{args.n} x {args.max_tokens} tokens; MCTS {args.problems} problems, {args.rollouts} rollouts, "
          f"{args.children} children")
    if args.json:
        print(json.dumps({"model": Path(args.gguf).name, "load_avg": load, "rows": rows,
                          "workload": vars(args) | {"gguf": str(args.gguf)}}, default=str))


if __name__ == "__main__":
    main()
