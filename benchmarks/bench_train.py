"""Training arithmetic: LoRA SFT of the built-in model in float32 vs bfloat16 mixed precision.

Both runs are ``rstar train sft`` (TRL SFTTrainer + peft LoRA) in this process, on the same
examples, in the same order (same seed), for the same number of optimizer steps; only
``precision`` differs. Reported per run: tokens/s (tokens seen / training seconds, model
loading excluded), seconds per step, the loss of every step; then the ratio of bf16's
tokens/s to fp32's (the baseline) and how far bf16's losses are from fp32's.

On a CPU with AMX-BF16 (this machine's Xeon) or AVX512-BF16, oneDNN runs the bf16 matmuls
on those units; elsewhere bf16 can be slower than fp32, which is why ``--precision auto``
picks it only where the machine has them.

    python benchmarks/bench_train.py --data /tmp/bp/data/sft.jsonl --json   # an `rstar export` sft.jsonl
    python benchmarks/bench_train.py --steps 3 --batch 2                    # GSM8K reference solutions
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl"


def gsm8k_records(path: Path, n: int) -> list[dict]:
    """SFT records from GSM8K's reference solutions (ChatML prompt, the solution as the completion):
    realistic lengths for a throughput figure when no export is at hand."""
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()][:n]
    return [{"prompt": f"<|im_start|>user\n{r['question']}<|im_end|>\n<|im_start|>assistant\n",
             "completion": f"{r.get('solution') or ''}\nThe answer is {r['answer']}.<|im_end|>"} for r in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="an sft.jsonl from `rstar export` (default: GSM8K reference solutions)")
    ap.add_argument("--base", default="default", help="base model (default: the built-in GGUF)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    ap.add_argument("--batch", type=int, default=2, help="examples per step")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--precisions", default="fp32,bf16", help="runs, in order; the first is the baseline")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from rstar.train.base import fast_bf16
    from rstar.train.sft import SFTSettings, train_sft

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = Path(a.data) if a.data else work / "sft.jsonl"
    if not a.data:
        recs = gsm8k_records(DATA, a.steps * a.batch)
        data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    report: dict = {"base": a.base, "steps": a.steps, "batch": a.batch, "max_length": a.max_length,
                    "lora_r": a.lora_r, "data": str(data), "fast_bf16": fast_bf16(), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg(), "runs": {}}
    for prec in a.precisions.split(","):
        print(f"training {a.steps} steps in {prec} ...", file=sys.stderr, flush=True)
        log = train_sft(SFTSettings(data=str(data), out=str(work / prec), base=a.base, max_steps=a.steps,
                                    batch_size=a.batch, grad_accum=1, max_length=a.max_length,
                                    lora_r=a.lora_r, lora_alpha=2 * a.lora_r, save_steps=10**6, seed=0,
                                    no_progress=True, precision=prec))
        report["runs"][prec] = {"tokens_per_s": log["tokens_per_s"], "train_s": round(log["train_s"], 1),
                                "s_per_step": round(log["train_s"] / max(1, log["steps"]), 1),
                                "steps": log["steps"], "losses": [round(v, 4) for _, v in log["losses"]]}
        run = report["runs"][prec]
        print(f"  {prec}: {run['tokens_per_s']:.1f} tokens/s, {run['s_per_step']} s/step, losses {run['losses']}",
              file=sys.stderr, flush=True)
    runs = report["runs"]
    names = list(runs)
    base = runs[names[0]]
    for name in names[1:]:
        r = runs[name]
        r["speed_vs_" + names[0]] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
        pairs = list(zip(base["losses"], r["losses"]))
        r["max_loss_rel_diff_vs_" + names[0]] = round(max(abs(x - y) / abs(x) for x, y in pairs), 4) if pairs else None
    report["loadavg_end"] = os.getloadavg()
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        for name in names:
            print(name, runs[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
