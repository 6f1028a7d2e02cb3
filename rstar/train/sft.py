"""`rstar train sft`: fine-tune the policy on its own verified solutions (LoRA, TRL's SFTTrainer).

Input: ``sft.jsonl`` from ``rstar export``, one record a line::

    {"prompt": "<chat-formatted question + assistant prefix>", "completion": "<the steps>",
     "mask_spans": [[start, end], ...],   # optional: character spans of the completion to mask
     ...provenance...}

The completion holds the policy's own steps and, where the template shows execution
output back to the model (the ``rstar`` template), the sandbox's output blocks. The
loss is taken only on the model's own tokens: the prompt and every output block get
label -100. Output blocks are the record's ``mask_spans`` when present, else the
output parts of its ``steps`` list (``rstar export`` writes each step's ``text``, what
the model wrote, and ``shown``, that text plus what the search showed back), else every
match of the template's ``output_block(...)`` in the completion.

The text is tokenized as one string, prompt + completion (as the search's backends
see it), with the tokenizer's BOS and nothing else: no special tokens are added and
no end-of-sequence token is appended (a solution ends with its template's stop string).

Output directory::

    OUT/checkpoints/checkpoint-N   Trainer checkpoints (``--resume`` continues from the last)
    OUT/adapter/, OUT/adapter.gguf, OUT/merged/ (``--merge``), OUT/rstar_model.json
                                   the trained policy in every form (see rstar.adapters)
    OUT/train_log.json             settings, losses, tokens, tokens/s, time

A loss or gradient norm that turns NaN/inf stops training with a message naming the
last good checkpoint (no checkpoint is written after the divergence).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rstar.errors import DataError, RstarError
from rstar.results import read_records
from rstar.train.base import (  # noqa: F401 - TrainingDiverged: what a failed run raises, named here for callers
    DEFAULT_PRECISION,
    DivergenceGuard,
    TrainingDiverged,
    check_resume,
    common_args,
    finish_policy,
    load_policy_for_training,
    run_trainer,
    settings_from_args,
    summary_line,
    training_arguments,
)


# ---------------------------------------------------------------- data


def output_block_spans(completion: str, template) -> list[tuple[int, int]]:
    """Character spans of the template's output blocks inside ``completion``."""
    sentinel = "\x00RSTAR-STDOUT\x00"
    block = template.output_block(sentinel) if template is not None else ""
    if not block or sentinel not in block:
        return []
    head, tail = block.split(sentinel, 1)
    pattern = re.compile(re.escape(head) + r".*?" + re.escape(tail), re.DOTALL)
    return [(m.start(), m.end()) for m in pattern.finditer(completion)]


def steps_mask_spans(rec: dict) -> list[tuple[int, int]] | None:
    """Spans from ``rstar export``'s ``steps`` list: each step is ``shown`` = the model's ``text``
    followed by what the search showed back (the output block). None when the list does not
    add up to the completion."""
    steps = rec.get("steps")
    if not isinstance(steps, list) or not steps:
        return None
    spans, pos = [], 0
    for st in steps:
        if not isinstance(st, dict) or not isinstance(st.get("text"), str) or not isinstance(st.get("shown"), str):
            return None
        text, shown = st["text"], st["shown"]
        if not shown.startswith(text):
            return None
        if len(shown) > len(text):
            spans.append((pos + len(text), pos + len(shown)))
        pos += len(shown)
    return spans if pos == len(rec["completion"]) else None


def record_mask_spans(rec: dict, template, where: str = "") -> list[tuple[int, int]]:
    """What to mask in the completion: ``mask_spans`` if given, else the output parts of the
    exported ``steps``, else every output block of the template found in the text."""
    spans = rec.get("mask_spans")
    if spans is None:
        from_steps = steps_mask_spans(rec)
        return from_steps if from_steps is not None else output_block_spans(rec["completion"], template)
    n = len(rec["completion"])
    out = []
    for s in spans:
        if (not isinstance(s, (list, tuple)) or len(s) != 2 or not all(isinstance(v, int) for v in s)
                or not 0 <= s[0] <= s[1] <= n):
            raise DataError(f"{where}: mask_spans entry {s!r} is not [start, end] within the completion "
                            f"(0..{n})")
        out.append((s[0], s[1]))
    return out


def encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text``, with the tokenizer's BOS when it adds one
    (and the text does not already start with it), like the llama.cpp backend."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids, offsets = [bos] + ids, [(0, 0)] + offsets
    return ids, offsets


def tokenize_sft(rec: dict, tokenizer, template=None, max_length: int | None = None,
                 where: str = "") -> dict | None:
    """``{"input_ids", "labels"}``: labels -100 on the prompt, on masked spans and on any token
    overlapping them. None when nothing is left to learn (e.g. cut by ``max_length``)."""
    prompt, completion = rec["prompt"], rec["completion"]
    p = len(prompt)
    spans = [(p + s, p + e) for s, e in record_mask_spans(rec, template, where) if e > s]
    ids, offsets = encode(tokenizer, prompt + completion)
    labels = []
    for tid, (s, e) in zip(ids, offsets):
        masked = e <= s or s < p or any(s < me and e > ms for ms, me in spans)
        labels.append(-100 if masked else tid)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(v == -100 for v in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def build_sft_dataset(path: str | Path, tokenizer, template=None, max_length: int | None = 2048):
    """Tokenized examples of ``path`` and a count of records dropped (nothing left to learn)."""
    records = read_records(path, ("prompt", "completion"), "SFT", line_key="_line")
    if not records:
        raise DataError(f"{path}: no SFT records: the search solved no problem, so there is nothing to "
                        "fine-tune on; search with more rollouts or more problems first")
    examples, dropped = [], 0
    for rec in records:
        ex = tokenize_sft(rec, tokenizer, template, max_length, where=f"{path}:{rec['_line']}")
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
    if not examples:
        raise DataError(f"{path}: all {len(records)} records are fully masked or cut by --max-length "
                        f"{max_length}; nothing to train on")
    return examples, dropped


# ---------------------------------------------------------------- SFT


@dataclass
class SFTSettings:
    data: str
    out: str
    base: str = "default"
    template: str = "default"
    epochs: float = 2.0
    max_steps: int = -1
    lr: float = 1e-4
    # 4 examples an optimizer step, one per forward/backward pass: 4 at once (padded to ~1,500 tokens) took
    # all 24 GiB of a CPU machine with the built-in 1.5B model (activations, 151k-wide logits; OOM-killed)
    batch_size: int = 1
    grad_accum: int = 4
    max_length: int = 2048
    save_steps: int = 50
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0
    resume: bool = False
    merge: bool = False
    no_progress: bool = False
    weight_decay: float = 0.0
    precision: str = DEFAULT_PRECISION
    extra: dict = field(default_factory=dict)


def train_sft(settings: SFTSettings | None = None, **kw) -> dict:
    """Fine-tune with LoRA on ``settings.data``; returns the training log (also OUT/train_log.json)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rstar.templates import get_template

    s = settings or SFTSettings(**kw)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = check_resume(out, s.resume)
    try:
        template = get_template(s.template)
    except ValueError as exc:
        raise RstarError(str(exc)) from None
    model, tok, peft_config, base_spec = load_policy_for_training(s.base, s.lora_r, s.lora_alpha)
    examples, dropped = build_sft_dataset(s.data, tok, template, s.max_length)
    n_tokens = sum(len(e["input_ids"]) for e in examples)
    n_trained = sum(sum(v != -100 for v in e["labels"]) for e in examples)
    args = SFTConfig(**training_arguments(out, asdict(s), max_length=s.max_length, packing=False,
                                          weight_decay=s.weight_decay, lr_scheduler_type="cosine",
                                          warmup_steps=0.03, dataset_num_proc=None))
    guard = DivergenceGuard()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tok, peft_config=peft_config, callbacks=[guard])
    start = time.perf_counter()
    run_trainer(trainer, guard, out, resume_from)
    return finish_policy("sft", asdict(s), trainer, guard, tok, base_spec, time.perf_counter() - start,
                         examples=len(examples), dropped=dropped, tokens=n_tokens, trained_tokens=n_trained,
                         card={"template": s.template})


# ---------------------------------------------------------------- CLI


def register(tsub) -> None:
    p = tsub.add_parser(
        "sft", help="fine-tune the policy (LoRA) on its verified solutions (sft.jsonl)",
        description="Supervised fine-tuning of the policy with LoRA (TRL SFTTrainer) on sft.jsonl from "
                    "`rstar export`. Loss only on the model's own step tokens: the prompt and the sandbox "
                    "output blocks are masked. Writes OUT/adapter (peft), OUT/adapter.gguf (llama.cpp, when "
                    "the base is a GGUF), OUT/rstar_model.json (pass OUT as --model to rstar run/solve), "
                    "checkpoints (--resume) and OUT/train_log.json.")
    p.add_argument("data", help="sft.jsonl (records with prompt, completion, optional mask_spans)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--template", default="default",
                   help="step template whose output blocks are masked when a record has no mask_spans")
    d = SFTSettings
    common_args(p, lr=d.lr, epochs=d.epochs, batch=d.batch_size, grad_accum=d.grad_accum)
    p.set_defaults(func=cmd_sft)


def cmd_sft(args) -> int:
    log = train_sft(settings_from_args(SFTSettings, args))
    print(summary_line(log, args.out))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: rstar train sft --help")
