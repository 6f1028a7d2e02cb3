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

import errno
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rstar.errors import DataError, RstarError
from rstar.train.base import DEFAULT_PRECISION, add_precision_flag, cpu_training_args


class TrainingDiverged(RstarError):
    """The loss (or the gradient norm) became NaN or infinite."""


class TrainingInterrupted(RstarError):
    """Training stopped (killed, interrupted, disk full) before it finished; it can resume."""


# ---------------------------------------------------------------- data


def read_jsonl(path: str | Path, required: Iterable[str]) -> list[dict]:
    """Records of a JSONL file; a malformed line or a missing/non-string field is a DataError
    naming the file and line."""
    path = Path(path)
    required = tuple(required)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc.args[0]}); fix or delete the line") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: a JSON object is expected, got {type(rec).__name__}")
        for key in required:
            if not isinstance(rec.get(key), str):
                raise DataError(f"{path}:{n}: field {key!r} must be a string "
                                f"(records need {', '.join(required)}; written by `rstar export`)")
        rec["_line"] = n
        records.append(rec)
    return records


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
    records = read_jsonl(path, ("prompt", "completion"))
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


# ---------------------------------------------------------------- training helpers shared with dpo


class DivergenceGuard:
    """A TrainerCallback that stops at the first NaN/inf loss or gradient norm and keeps the
    bad step from being checkpointed. Made lazily (transformers is imported on use)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Guard(TrainerCallback):
            def __init__(self):
                self.bad: tuple | None = None
                self.losses: list[tuple[int, float]] = []

            def on_step_end(self, args, state, control, model=None, **kwargs):
                # after the optimizer step, before any checkpoint of it: poisoned weights are never saved
                if model is not None and self.bad is None:
                    for p in model.parameters():
                        if p.requires_grad and not bool(p.detach().isfinite().all()):
                            self.bad = (state.global_step, "weights", "nan")
                            control.should_training_stop = True
                            control.should_save = False
                            break
                return control

            def on_log(self, args, state, control, logs=None, **kwargs):
                if self.bad is not None:
                    control.should_save = False
                    return control
                logs = logs or {}
                for key in ("loss", "grad_norm"):
                    v = logs.get(key)
                    if isinstance(v, (int, float)) and not math.isfinite(v):
                        self.bad = (state.global_step, key, v)
                        control.should_training_stop = True
                        control.should_save = False
                        return control
                if isinstance(logs.get("loss"), (int, float)):
                    self.losses.append((state.global_step, float(logs["loss"])))
                return control

        return _Guard()


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_dir.is_dir():
        return None
    last = get_last_checkpoint(str(ckpt_dir))
    return Path(last) if last else None


def check_resume(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from; refuses to train over checkpoints without --resume."""
    last = last_checkpoint(out / "checkpoints")
    if last is not None and not resume:
        raise RstarError(f"{out} already holds training checkpoints (last: {last.name}); pass --resume to "
                         "continue, or choose another --out")
    return last if resume else None


def run_trainer(trainer, guard, out: Path, resume_from: Path | None) -> None:
    """trainer.train() with the failure modes turned into one-line errors that say how to resume."""
    ckpts = out / "checkpoints"
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except KeyboardInterrupt:
        last = last_checkpoint(ckpts)
        raise TrainingInterrupted(
            f"training interrupted; {'last checkpoint ' + str(last) if last else 'no checkpoint yet'}; "
            "continue with --resume") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        last = last_checkpoint(ckpts)
        raise TrainingInterrupted(
            f"disk full while training ({exc}); free space, delete any incomplete checkpoint newer than "
            f"{last or 'none'} and continue with --resume") from None
    if guard.bad is not None:
        step, key, value = guard.bad
        last = last_checkpoint(ckpts)
        where = (f"the last good checkpoint is {last}" if last else
                 "no checkpoint was written before it")
        raise TrainingDiverged(
            f"training diverged at step {step} ({key} = {value}); stopped, {where}; lower --lr and train "
            "again (--resume starts from that checkpoint)")


def common_args(p, *, lr: float, epochs: float, batch: int, grad_accum: int = 1) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--base", default="default",
                   help="base model: 'default' (the built-in GGUF, dequantized by transformers), a .gguf path, "
                        "an HF model directory or id, or a directory written by rstar train (its adapter is "
                        "trained further)")
    g.add_argument("--merge", action="store_true",
                   help="also save base+adapter merged into OUT/merged (for transformers/vLLM without peft)")
    g.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    g.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default 32)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=epochs, help=f"passes over the data (default {epochs})")
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (overrides --epochs)")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    g.add_argument("--batch-size", type=int, default=batch,
                   help=f"examples per forward/backward pass (default {batch}); memory grows with it")
    g.add_argument("--grad-accum", type=int, default=grad_accum,
                   help=f"passes accumulated per optimizer step (default {grad_accum}): an optimizer step "
                        "sees batch-size x grad-accum examples")
    g.add_argument("--max-length", type=int, default=2048, help="tokens per example at most (default 2048)")
    g.add_argument("--save-steps", type=int, default=50, help="checkpoint every N optimizer steps (default 50)")
    add_precision_flag(g)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT/checkpoints")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(cls, args):
    """A settings dataclass filled from parsed ``common_args`` flags (same names, dashes as underscores)."""
    import dataclasses

    given = vars(args)
    return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given})


def training_arguments(out: Path, a: dict, **extra) -> dict:
    """Common TrainingArguments fields (CPU-safe, checkpoints, logging every step)."""
    kw = dict(cpu_training_args(a.get("precision", DEFAULT_PRECISION)))
    kw.update(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=a["epochs"], max_steps=a["max_steps"], learning_rate=a["lr"],
        per_device_train_batch_size=a["batch_size"], gradient_accumulation_steps=a["grad_accum"],
        save_strategy="steps", save_steps=max(1, a["save_steps"]), save_total_limit=2,
        logging_steps=1, logging_nan_inf_filter=False, seed=a["seed"], data_seed=a["seed"],
        disable_tqdm=a.get("no_progress", False), remove_unused_columns=False,
    )
    kw.update(extra)
    return kw


def set_threads() -> None:
    """RSTAR_THREADS caps torch's CPU threads, as it does llama.cpp's: on a shared, oversubscribed
    machine fewer threads train faster (measured: one fwd+bwd of SmolLM2 at load 18 on 2 cores,
    46-69 s with 2 threads, 13-16 s with 1)."""
    import os

    n = int(os.environ.get("RSTAR_THREADS") or 0)
    if n > 0:
        import torch

        torch.set_num_threads(n)


def load_policy_for_training(base: str, lora_r: int, lora_alpha: int):
    """(model, tokenizer, peft_config_or_None, base_spec): a plain base gets a fresh LoRA config;
    a directory written by rstar train loads its adapter as trainable (peft_config None)."""
    set_threads()
    from rstar.adapters import is_trained_policy, load_dense_base as load_base, lora_config, read_card

    if is_trained_policy(base):
        from peft import PeftModel

        card = read_card(base)
        model, tok = load_base(card["base"])
        adapter = Path(base) / card.get("adapter_hf", "adapter")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        return model, tok, None, card["base"]
    model, tok = load_base(base)
    return model, tok, lora_config(model, r=lora_r, alpha=lora_alpha), base


def write_log(out: Path, log: dict) -> None:
    tmp = out / "train_log.json.tmp"
    tmp.write_text(json.dumps(log, indent=2, default=str))
    tmp.replace(out / "train_log.json")


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

    from rstar.adapters import save_trained_policy
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
    train_s = time.perf_counter() - start
    steps = trainer.state.global_step
    epochs_done = float(trainer.state.epoch or 0.0)
    log = {
        "trainer": "sft", "settings": asdict(s), "base": base_spec, "examples": len(examples),
        "dropped": dropped, "tokens": n_tokens, "trained_tokens": n_trained, "steps": steps,
        "epochs": epochs_done, "train_s": train_s,
        # tokens seen per second of this run (a resumed run counts only its own part)
        "tokens_per_s": n_tokens * epochs_done / train_s if train_s > 0 else None,
        "losses": guard.losses, "final_loss": _final_loss(guard.losses),
    }
    save_trained_policy(trainer.model, tok, out, base_spec, trainer="sft", merge=s.merge,
                        extra={"data": str(s.data), "template": s.template})
    write_log(out, log)
    return log


def _final_loss(losses: list[tuple[int, float]], last: int = 5) -> float | None:
    if not losses:
        return None
    tail = [v for _, v in losses[-last:]]
    return sum(tail) / len(tail)


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


def summary_line(log: dict, out: Any) -> str:
    parts = [f"{log['trainer']}: {log['examples']} examples, {log['steps']} steps"]
    if log.get("final_loss") is not None:
        parts.append(f"final loss {log['final_loss']:.4f}")
    if log.get("tokens_per_s"):
        parts.append(f"{log['tokens_per_s']:.0f} tokens/s")
    return ", ".join(parts) + f"; policy saved in {out} (use --model {out})"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: rstar train sft --help")
