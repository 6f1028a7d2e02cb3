"""`rstar train dpo`: Step-DPO on step-level preference pairs (LoRA, TRL's DPOTrainer).

Input: ``step_dpo.jsonl`` from ``rstar export``, one pair a line::

    {"prompt": "<chat-formatted question + the earlier steps>",
     "chosen": "<one step>", "rejected": "<one step>", ...provenance...}

Step-DPO's loss is DPO's, on one step given the question and the correct steps
before it. Unlike TRL's default, **no end-of-sequence token is appended** to the
chosen or rejected step: a step is not the end of a solution, and teaching the
policy to stop after every step would break the search. The pairs are tokenized
here (prompt + step as one string, as the backends see it; the prompt part is the
tokens shared by both sequences that lie wholly inside the prompt) and handed to
the trainer pre-tokenized (:class:`StepDPOTrainer` skips TRL's text preparation).

Reference model: with a plain base, the adapter-disabled base; with ``--base`` a
directory written by ``rstar train sft``, the SFT policy itself (its adapter is
trained further and TRL keeps a frozen copy of it as the reference).

Defaults follow Step-DPO: beta 0.4, learning rate 5e-7, cosine schedule, warmup 0.1.
Output directory: as for ``rstar train sft`` (adapter, adapter.gguf, rstar_model.json,
checkpoints, train_log.json).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rstar.errors import DataError, RstarError
from rstar.results import read_records
from rstar.train.base import (
    DEFAULT_PRECISION,
    DivergenceGuard,
    check_resume,
    common_args,
    finish_policy,
    load_policy_for_training,
    run_trainer,
    settings_from_args,
    summary_line,
    training_arguments,
)
from rstar.train.sft import encode

DEFAULT_BETA = 0.4  # Step-DPO: beta 0.4 to 0.5
DEFAULT_LR = 5e-7  # Step-DPO's learning rate


def tokenize_pair(rec: dict, tokenizer, max_length: int | None = None) -> dict | None:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` with no EOS after either step; None for a
    pair with nothing to compare (identical or empty steps)."""
    prompt, chosen, rejected = rec["prompt"], rec["chosen"], rec["rejected"]
    if not chosen.strip() or not rejected.strip() or chosen == rejected:
        return None
    p = len(prompt)
    c_ids, c_off = encode(tokenizer, prompt + chosen)
    r_ids, r_off = encode(tokenizer, prompt + rejected)
    # the shared prompt: tokens equal in both sequences that end within the prompt text
    n = 0
    while (n < len(c_ids) and n < len(r_ids) and c_ids[n] == r_ids[n]
           and c_off[n][1] <= p and r_off[n][1] <= p):
        n += 1
    out = {"prompt_ids": c_ids[:n], "chosen_ids": c_ids[n:], "rejected_ids": r_ids[n:]}
    if max_length is not None and len(out["prompt_ids"]) >= max_length:
        return None
    return out


def build_dpo_dataset(path: str | Path, tokenizer, max_length: int | None = 2048):
    records = read_records(path, ("prompt", "chosen", "rejected"), "Step-DPO pair")
    if not records:
        raise DataError(f"{path}: no preference pairs: no step in the search had both a correct and a wrong "
                        "continuation; search more problems or with more rollouts")
    pairs, dropped = [], 0
    for rec in records:
        ex = tokenize_pair(rec, tokenizer, max_length)
        if ex is None:
            dropped += 1
        else:
            pairs.append(ex)
    if not pairs:
        raise DataError(f"{path}: all {len(records)} pairs have identical or empty steps, or prompts longer "
                        f"than --max-length {max_length}")
    return pairs, dropped


def step_dpo_trainer_class():
    """DPOTrainer that takes pairs already tokenized by :func:`tokenize_pair` as they are
    (TRL would append an EOS token to each step)."""
    from trl import DPOTrainer

    class StepDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" not in dataset.column_names:
                raise DataError(f"{dataset_name}: Step-DPO expects pairs tokenized by rstar.train.dpo.tokenize_pair")
            return dataset

    return StepDPOTrainer


@dataclass
class DPOSettings:
    data: str
    out: str
    base: str = "default"
    beta: float = DEFAULT_BETA
    epochs: float = 4.0
    max_steps: int = -1
    lr: float = DEFAULT_LR
    batch_size: int = 2
    grad_accum: int = 1
    max_length: int = 2048
    save_steps: int = 50
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0
    resume: bool = False
    merge: bool = False
    precision: str = DEFAULT_PRECISION
    no_progress: bool = False


def build_trainer(s: DPOSettings, model, tok, peft_config, pairs: list[dict], guard=None):
    from datasets import Dataset
    from trl import DPOConfig

    args = DPOConfig(**training_arguments(Path(s.out), asdict(s), beta=s.beta, max_length=s.max_length,
                                          lr_scheduler_type="cosine", warmup_steps=0.1,
                                          precompute_ref_log_probs=False))
    cls = step_dpo_trainer_class()
    return cls(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok,
               peft_config=peft_config, callbacks=[guard] if guard is not None else None)


def train_dpo(settings: DPOSettings | None = None, **kw) -> dict:
    """Step-DPO with LoRA on ``settings.data``; returns the training log (also OUT/train_log.json)."""
    s = settings or DPOSettings(**kw)
    if s.beta <= 0:
        raise RstarError(f"--beta must be positive, got {s.beta}")
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = check_resume(out, s.resume)
    model, tok, peft_config, base_spec = load_policy_for_training(s.base, s.lora_r, s.lora_alpha)
    pairs, dropped = build_dpo_dataset(s.data, tok, s.max_length)
    guard = DivergenceGuard()
    trainer = build_trainer(s, model, tok, peft_config, pairs, guard)
    start = time.perf_counter()
    run_trainer(trainer, guard, out, resume_from)
    train_s = time.perf_counter() - start
    n_tokens = sum(len(p["prompt_ids"]) * 2 + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
    last = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
    return finish_policy("dpo", asdict(s), trainer, guard, tok, base_spec, train_s, examples=len(pairs),
                         dropped=dropped, tokens=n_tokens, card={"beta": s.beta},
                         reward_accuracy=last.get("rewards/accuracies"), reward_margin=last.get("rewards/margins"))


def register(tsub) -> None:
    p = tsub.add_parser(
        "dpo", help="Step-DPO on step-level preference pairs (step_dpo.jsonl)",
        description="Step-DPO (TRL DPOTrainer with LoRA) on step_dpo.jsonl from `rstar export`: prompt = question "
                    "+ earlier steps, chosen/rejected = one step each, no end-of-sequence token after a step. "
                    "Reference: the adapter-disabled base, or the SFT policy when --base is an `rstar train sft` "
                    "output. Defaults from Step-DPO: beta 0.4, lr 5e-7, cosine, warmup 0.1. Writes the same "
                    "files as `rstar train sft`.")
    p.add_argument("data", help="step_dpo.jsonl (records with prompt, chosen, rejected)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--beta", type=float, default=DEFAULT_BETA, help=f"DPO beta (default {DEFAULT_BETA})")
    common_args(p, lr=DEFAULT_LR, epochs=4.0, batch=2)
    p.set_defaults(func=cmd_dpo)


def cmd_dpo(args) -> int:
    log = train_dpo(settings_from_args(DPOSettings, args))
    print(summary_line(log, args.out))
    return 0
