"""How often the built-in model's steps parse under each step template.

Greedy (temperature 0), one step per generation, up to ``max_steps`` steps per
problem, on the first N problems of a GSM8K-style JSONL file.  After each code
step the program so far is executed with a plain local ``python3`` subprocess
(NOT the hardened sandbox: this is a measurement of the format, run on trusted
output of a local model; the search itself uses ``rstar.sandbox``).  For the
rstar template the step ending with ``<end_of_code>`` is followed by the
``<output>`` block and one more generation for the ``\\boxed{}`` answer.

Per template it reports:

* steps parsed   -- generated steps whose ``parse`` kind is not "invalid"
* terminal       -- solutions that reached a terminal answer step
* programs run   -- solutions that reached the step ending the program and
                    whose program ran without error at every step (a
                    solution stops at its first invalid step or failing
                    program; greedy, no retries)
* accuracy       -- final answer equal to the gold answer (rstar.grader)

Usage::

    python benchmarks/bench_parse.py [--n 10] [--templates default,rstar] [--model PATH] [--json]

Generation uses llama_cpp.Llama directly (n_threads=2, n_ctx=4096) and the
model's own chat template from the GGUF metadata.  Stop strings are detected
on the streamed text, so the stop string that ended a step (or end of
sequence / max_tokens) is known exactly.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rstar.grader import answers_equal, normalize_gold  # noqa: E402
from rstar.templates import get_template  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gsm8k_train.jsonl"


def find_model(path: str | None) -> str:
    if path:
        return path
    for marker in ("/tmp/setup/MODEL_READY", "/root/setup/MODEL_READY"):
        if os.path.exists(marker):
            p = open(marker).read().strip()
            if p and os.path.exists(p):
                return p
    cands = sorted(glob.glob(os.path.expanduser("~/.cache/rstar/models/*.gguf")))
    if cands:
        return cands[0]
    raise SystemExit("no model: pass --model PATH to a GGUF file")


class Generator:
    """Greedy step generation with llama.cpp, stop strings matched on the stream."""

    def __init__(self, model_path: str, n_threads: int = 2, n_ctx: int = 4096):
        from llama_cpp import Llama

        self.llm = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=n_threads,
                         n_threads_batch=n_threads, verbose=False)
        self.n_ctx = n_ctx
        tmpl = self.llm.metadata.get("tokenizer.chat_template")
        self._jinja = None
        if tmpl:
            try:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                eos = self.llm.detokenize([self.llm.token_eos()]).decode("utf-8", "ignore")
                self._jinja = Jinja2ChatFormatter(template=tmpl, eos_token=eos, bos_token="",
                                                  add_generation_prompt=True)
            except Exception:
                self._jinja = None
        self.tokens = 0
        self.gen_s = 0.0

    def format_chat(self, messages: list[dict]) -> str:
        if self._jinja is not None:
            return self._jinja(messages=messages).prompt
        out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return out + "<|im_start|>assistant\n"

    def generate(self, prompt: str, stop: list[str], max_tokens: int) -> tuple[str, str | None, str, int]:
        """(text without stop, stop hit or None, finish_reason, tokens)."""
        t0 = time.perf_counter()
        n_prompt = len(self.llm.tokenize(prompt.encode(), add_bos=False, special=True))
        max_tokens = max(1, min(max_tokens, self.n_ctx - n_prompt - 8))
        text, ntok, finish, hit = "", 0, "length", None
        stream = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0,
                                            top_k=1, stream=True, stop=[])
        for chunk in stream:
            ch = chunk["choices"][0]
            text += ch.get("text") or ""
            ntok += 1
            found = [(text.find(s), s) for s in stop if s in text]
            if found:
                idx, hit = min(found)
                text = text[:idx]
                finish = "stop"
                break
            if ch.get("finish_reason"):
                finish = "eos" if ch["finish_reason"] == "stop" else ch["finish_reason"]
                break
        try:
            stream.close()
        except Exception:
            pass
        self.tokens += ntok
        self.gen_s += time.perf_counter() - t0
        return text, hit, finish, ntok


def run_program(code: str, timeout: float = 10.0) -> tuple[bool, str, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
        path = f.name
    try:
        r = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=timeout)
        err = (r.stderr.strip().splitlines() or [""])[-1]
        return r.returncode == 0, r.stdout, err
    except subprocess.TimeoutExpired:
        return False, "", "timeout"
    finally:
        os.unlink(path)


def solve(gen: Generator, t, question: str, max_step_tokens: int, log=None) -> dict:
    steps_text: list[str] = []
    codes: list[str] = []
    rec = {"steps": 0, "parsed": 0, "invalid_reasons": [], "terminal": False, "ran": False,
           "answer": None, "end": None}
    for _ in range(t.max_steps + 1):
        prompt = t.render(gen.format_chat, question, steps_text)
        text, hit, finish, _ = gen.generate(prompt, t.stop, max_step_tokens)
        st = t.parse(text, hit, finish)
        rec["steps"] += 1
        if log:
            log.write(json.dumps({"text": text, "stop": hit, "finish": finish, "kind": st.kind,
                                  "error": st.error}) + "\n")
        if st.kind == "invalid":
            rec["invalid_reasons"].append(st.error)
            rec["end"] = f"invalid: {st.error}"
            return rec
        rec["parsed"] += 1
        steps_text.append(t.step_text(text, hit))
        if st.kind == "answer":
            rec["terminal"] = True
            rec["answer"] = st.answer
            rec["end"] = "answer"
            return rec
        codes.append(st.code)
        ok, out, err = run_program(t.program(codes))
        if not ok:
            rec["ran"] = False
            rec["end"] = f"program failed: {err}"
            return rec
        if st.kind == "final":
            rec["ran"] = True
            if st.is_terminal:
                rec["terminal"] = True
                rec["answer"] = t.answer_from_output(out, st)
                rec["end"] = "final"
                return rec
            steps_text.append(t.output_block(out))
        if len(codes) >= t.max_steps:
            break
    rec["end"] = "max_steps"
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="problems (first N of the file)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default=None, help="GGUF path (default: the built-in model in the cache)")
    ap.add_argument("--templates", default="default,rstar")
    ap.add_argument("--max-step-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", default=None, help="write every generated step to this JSONL file")
    ap.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = ap.parse_args(argv)

    rows = [json.loads(x) for x in open(args.data) if x.strip()][: args.n]
    model = find_model(args.model)
    gen = Generator(model, n_threads=args.threads)
    log = open(args.log, "w") if args.log else None
    results = {}
    for name in args.templates.split(","):
        t = get_template(name)
        recs, t0, tok0 = [], time.perf_counter(), gen.tokens
        for i, row in enumerate(rows):
            gold = normalize_gold(row.get("answer") if row.get("answer") is not None else row.get("solution"))
            if log:
                log.write(json.dumps({"template": name, "problem": i}) + "\n")
            r = solve(gen, t, row["question"], args.max_step_tokens, log)
            r["correct"] = bool(r["answer"] is not None and answers_equal(r["answer"], gold))
            r["gold"] = gold
            recs.append(r)
            print(f"[{name}] {i}: steps={r['steps']} end={r['end']} answer={r['answer']!r} gold={gold} "
                  f"{'OK' if r['correct'] else 'x'}", file=sys.stderr, flush=True)
        steps = sum(r["steps"] for r in recs)
        parsed = sum(r["parsed"] for r in recs)
        n = len(recs)
        results[name] = {
            "problems": n,
            "steps": steps,
            "steps_parsed_pct": round(100.0 * parsed / steps, 1) if steps else 0.0,
            "terminal_pct": round(100.0 * sum(r["terminal"] for r in recs) / n, 1) if n else 0.0,
            "programs_run_pct": round(100.0 * sum(r["ran"] for r in recs) / n, 1) if n else 0.0,
            "accuracy_pct": round(100.0 * sum(r["correct"] for r in recs) / n, 1) if n else 0.0,
            "mean_steps": round(steps / n, 2) if n else 0.0,
            "invalid_reasons": dict(Counter(x for r in recs for x in r["invalid_reasons"])),
            "seconds": round(time.perf_counter() - t0, 1),
            "tokens": gen.tokens - tok0,
        }
    if log:
        log.close()

    hdr = f"{'template':<10}{'problems':>9}{'steps':>7}{'parsed%':>9}{'terminal%':>11}{'ran%':>7}{'acc%':>7}{'steps/sol':>10}{'sec':>7}"
    print(hdr)
    for name, r in results.items():
        print(f"{name:<10}{r['problems']:>9}{r['steps']:>7}{r['steps_parsed_pct']:>9}{r['terminal_pct']:>11}"
              f"{r['programs_run_pct']:>7}{r['accuracy_pct']:>7}{r['mean_steps']:>10}{r['seconds']:>7}")
        if r["invalid_reasons"]:
            print(f"  {name} invalid: {r['invalid_reasons']}")
    print(f"model: {os.path.basename(model)}; greedy; programs run with a local python3 subprocess")
    if args.json:
        print(json.dumps({"model": os.path.basename(model), "n": len(rows), "templates": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
