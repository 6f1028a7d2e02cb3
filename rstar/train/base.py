"""What every trainer shares (``rstar train sft | dpo | ppm | value``): the CPU-safe training
arguments and precision, the divergence guard, resuming, the convergence criterion and the log.

Base models are loaded by :mod:`rstar.basemodel` (the runtime loads them too); its loaders are
named here as well, for the trainers' convenience. Trainers set CPU-safe defaults (bf16 only
where the machine has fast bf16, no gradient checkpointing unless asked): see
:func:`cpu_training_args`.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

# the base-model loaders, named here too for the trainers and their callers (defined in rstar.basemodel)
from rstar.basemodel import device, load_base, load_tokenizer, resolve_base  # noqa: F401
from rstar.errors import RstarError


class TrainingDiverged(RstarError):
    """The loss (or the gradient norm) became NaN or infinite: training stopped."""


class TrainingInterrupted(RstarError):
    """Training stopped (killed, interrupted, disk full) before it finished; it can resume."""


# ---------------------------------------------------------------- arithmetic and arguments

PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_PRECISION = "auto"


def fast_bf16() -> bool:
    """Whether this machine computes in bfloat16 faster than in float32: a CUDA GPU that supports
    it, or a CPU with AMX-BF16 or AVX512-BF16 (oneDNN runs torch's bf16 matmuls on them)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def use_bf16(precision: str = DEFAULT_PRECISION) -> bool:
    """``precision`` -> train with bfloat16 autocast? ``auto``: where :func:`fast_bf16`. The
    weights and the LoRA adapter stay float32 (mixed precision); only matmuls run in bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return fast_bf16()
    return precision == "bf16"


def add_precision_flag(p, default: str | None = DEFAULT_PRECISION, scope: str = "") -> None:
    """The ``--precision`` flag of every trainer (and of ``rstar evolve``, where None keeps the preset's)."""
    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help=f"{scope}training arithmetic: bf16 (bfloat16 matmuls, float32 weights and LoRA adapter), "
                        "fp32, or auto: bf16 where the GPU or CPU has fast bf16 (AMX-BF16, AVX512-BF16) "
                        + ("(default %(default)s)" if default else "(default: the preset's)"))


def cpu_training_args(precision: str = DEFAULT_PRECISION) -> dict:
    """TrainingArguments fields that trainers' GPU defaults get wrong on a CPU. ``precision``:
    see :func:`use_bf16` (TRL's configs default to bf16 even where it is slow or missing)."""
    on_gpu = device() == "cuda"
    return {
        "bf16": use_bf16(precision),
        "fp16": False,
        "gradient_checkpointing": False,
        "use_cpu": not on_gpu,
        "dataloader_num_workers": 0,
        "report_to": [],
    }


# ---------------------------------------------------------------- guard, resume, settings, log


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


def run_trainer(trainer, guard, out: Path, resume_from: Path | None):
    """trainer.train() with the failure modes turned into one-line errors that say how to resume;
    returns what trainer.train() returns."""
    ckpts = out / "checkpoints"
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
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
    return result


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
        save_strategy="steps", save_steps=max(1, a.get("save_steps", 50)), save_total_limit=2,
        logging_steps=1, logging_nan_inf_filter=False, seed=a["seed"], data_seed=a["seed"],
        disable_tqdm=a.get("no_progress", False), remove_unused_columns=False,
    )
    kw.update(extra)
    return kw


def set_threads() -> None:
    """RSTAR_THREADS caps torch's CPU threads, as it does llama.cpp's: on a shared, oversubscribed
    machine fewer threads train faster (measured: one fwd+bwd of SmolLM2 at load 18 on 2 cores,
    46-69 s with 2 threads, 13-16 s with 1)."""
    n = int(os.environ.get("RSTAR_THREADS") or 0)
    if n > 0:
        import torch

        torch.set_num_threads(n)


def load_policy_for_training(base: str, lora_r: int, lora_alpha: int):
    """(model, tokenizer, peft_config_or_None, base_spec): a plain base gets a fresh LoRA config;
    a directory written by rstar train loads its adapter as trainable (peft_config None)."""
    set_threads()
    from rstar.adapters import is_trained_policy, load_dense_base, lora_config, read_card

    if is_trained_policy(base):
        from peft import PeftModel

        card = read_card(base)
        model, tok = load_dense_base(card["base"])
        adapter = Path(base) / card.get("adapter_hf", "adapter")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        return model, tok, None, card["base"]
    model, tok = load_dense_base(base)
    return model, tok, lora_config(model, r=lora_r, alpha=lora_alpha), base


def write_log(out: Path, log: dict) -> None:
    tmp = out / "train_log.json.tmp"
    tmp.write_text(json.dumps(log, indent=2, default=str))
    tmp.replace(out / "train_log.json")


def finish_policy(name: str, settings: dict, trainer, guard, tok, base_spec: str, train_s: float, *,
                  examples: int, dropped: int, tokens: int, card: dict, **extra) -> dict:
    """After a policy trainer (sft, dpo) ran: its log, the policy saved in every form the backends
    load (``rstar.adapters.save_trained_policy``, with ``card`` added to its card) and
    ``OUT/train_log.json``; returns the log (``extra`` added to it)."""
    from rstar.adapters import save_trained_policy

    out = Path(settings["out"])
    epochs_done = float(trainer.state.epoch or 0.0)
    log = {
        "trainer": name, "settings": settings, "base": base_spec, "examples": examples, "dropped": dropped,
        "tokens": tokens, "steps": trainer.state.global_step, "epochs": epochs_done, "train_s": train_s,
        # tokens seen per second of this run (a resumed run counts only its own part)
        "tokens_per_s": tokens * epochs_done / train_s if train_s > 0 else None,
        "losses": guard.losses, "final_loss": final_loss(guard.losses), **extra,
    }
    save_trained_policy(trainer.model, tok, out, base_spec, trainer=name, merge=settings.get("merge", False),
                        extra={"data": str(settings["data"]), **card})
    write_log(out, log)
    return log


def final_loss(losses: list[tuple[int, float]], last: int = 5) -> float | None:
    """The mean of the last few logged losses (one step's loss is noisy)."""
    if not losses:
        return None
    tail = [v for _, v in losses[-last:]]
    return sum(tail) / len(tail)


def summary_line(log: dict, out: Any) -> str:
    parts = [f"{log['trainer']}: {log['examples']} examples, {log['steps']} steps"]
    if log.get("final_loss") is not None:
        parts.append(f"final loss {log['final_loss']:.4f}")
    if log.get("tokens_per_s"):
        parts.append(f"{log['tokens_per_s']:.0f} tokens/s")
    return ", ".join(parts) + f"; policy saved in {out} (use --model {out})"


# ---------------------------------------------------------------- convergence


EVAL_KEYS = ("eval_loss", "eval_accuracy", "eval_mse", "eval_sign_accuracy")


class Convergence:
    """When training has converged: the monitored loss (held-out where there is a held-out set,
    else training) has not fallen below ``(1 - tol) x`` its best before the last ``patience``
    checks during those checks, and at least ``min_steps`` optimizer steps were taken."""

    def __init__(self, patience: int = 2, tol: float = 0.01, min_steps: int = 0) -> None:
        if patience < 1:
            raise RstarError(f"--patience must be at least 1, got {patience}")
        if not (math.isfinite(tol) and tol >= 0):
            raise RstarError(f"--tol must be a number >= 0, got {tol}")
        self.patience, self.tol, self.min_steps = int(patience), float(tol), max(0, int(min_steps))

    def met(self, losses: list[float], steps: int) -> bool:
        if steps < self.min_steps or len(losses) <= self.patience:
            return False
        best_before = min(losses[:-self.patience])
        return min(losses[-self.patience:]) > best_before - self.tol * abs(best_before)

    def describe(self, check: str = "epoch") -> str:
        return (f"stop when the monitored loss has not fallen by {self.tol:g} (relative) below its best for "
                f"{self.patience} {check}{'s' if self.patience != 1 else ''}, after at least {self.min_steps} "
                f"optimizer steps")

    def as_dict(self) -> dict:
        return {"patience": self.patience, "tol": self.tol, "min_steps": self.min_steps}


def epoch_rows(log_history: list[dict]) -> list[dict]:
    """One row per epoch from a Trainer's log history (a loss logged every step): the epoch's first
    and last training loss, its mean, the optimizer steps taken by its end, and the held-out metrics
    of the evaluation that closed it."""
    rows: dict[int, dict] = {}
    for h in log_history:
        e = h.get("epoch")
        if e is None:
            continue
        if "loss" in h:
            r = rows.setdefault(max(1, math.ceil(e - 1e-6)), {})
            r.setdefault("first_loss", float(h["loss"]))
            r["last_loss"] = float(h["loss"])
            r["_sum"], r["_n"] = r.get("_sum", 0.0) + float(h["loss"]), r.get("_n", 0) + 1
            r["steps"] = int(h["step"])
        elif any(k in h for k in EVAL_KEYS):
            r = rows.setdefault(max(1, round(e)), {})
            r.update({k: float(h[k]) for k in EVAL_KEYS if k in h})
    out = []
    for k in sorted(rows):
        r = rows[k]
        n = r.pop("_n", 0)
        mean = r.pop("_sum", 0.0) / n if n else None
        out.append({"epoch": k, "first_loss": r.pop("first_loss", None), "last_loss": r.pop("last_loss", None),
                    "mean_loss": mean, "steps": r.pop("steps", None), **r})
    return out


def format_row(row: dict) -> str:
    return "epoch " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items() if v is not None)


class ConvergenceStop:
    """A TrainerCallback (made lazily) that closes each epoch into a row (:func:`epoch_rows`),
    prints it, and stops training when ``criterion`` is met: on the held-out loss when the
    trainer evaluates every epoch, else on the epoch's mean training loss. ``stopped`` holds
    the epoch and step where the criterion stopped it (None: it ran to its limit)."""

    def __new__(cls, criterion: Convergence, held_out: bool, progress: bool = True):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def __init__(self):
                self.criterion, self.held_out, self.progress = criterion, held_out, progress
                self.stopped: dict | None = None
                self.active = True

            def _close(self, state, control) -> None:
                rows = epoch_rows(state.log_history)
                if not rows:
                    return
                if self.progress:
                    import sys

                    print(format_row(rows[-1]), file=sys.stderr)
                key = "eval_loss" if self.held_out else "mean_loss"
                losses = [r[key] for r in rows if r.get(key) is not None]
                if self.criterion.met(losses, state.global_step):
                    self.stopped = {"epoch": rows[-1]["epoch"], "step": state.global_step, "monitored": key}
                    control.should_training_stop = True

            def on_epoch_end(self, args, state, control, **kw):
                if self.active and not self.held_out:
                    self._close(state, control)
                return control

            def on_evaluate(self, args, state, control, **kw):
                if self.active and self.held_out:
                    self._close(state, control)
                return control

            def on_train_end(self, args, state, control, **kw):
                self.active = False  # a later trainer.evaluate() is a report, not an epoch's end
                return control

        return _Stop()
