"""`rstar train ppm PAIRS` and `rstar train value VALUES`: the scorers the search reads (rstar.ppm).

Two architectures (``--kind``):

* ``lm``: a LoRA-adapted language model with a scalar score head, trained with TRL's
  ``RewardTrainer`` (PPM: pairwise Bradley-Terry, each pair weighted by rStar's
  1/(pos*neg) through ``WeightedRewardTrainer``) or a ``transformers.Trainer`` subclass
  (value: ``MSE(tanh(v), Q)``); peft LoRA on every linear layer, the score head trained
  whole (``modules_to_save``). Checkpoints every epoch in ``OUT/checkpoints``;
  ``--resume`` continues from the last one. CPU-safe arguments from
  ``rstar.train.base.training_arguments``; CUDA is used where there is one.
* ``head``: a linear head on the frozen base's last-token hidden state read with
  llama.cpp (the base must be a GGUF, normally the policy's own): features are computed
  once per distinct text, then the head is fitted in seconds (``rstar.train.head``).

Both train until they converge (``rstar.train.base.Convergence``), ``--epochs`` at most:
training stops once the monitored loss (lm: the held-out loss where there is a held-out
set, else the epoch's mean training loss; head: the full-batch training loss, checked every
25 epochs) has not fallen by ``--tol`` (relative) below its best for ``--patience`` epochs
(checks), after at least ``--min-steps`` optimizer steps. ``--max-steps`` caps the steps.
Each epoch (check) is reported, printed and kept in the manifest's ``history``: lm: its
first and last training loss, the optimizer steps so far, the held-out loss and pairwise
accuracy; head: the loss, the training and held-out accuracy. ``metrics.convergence`` says
what stopped training (``converged``, ``max_epochs`` or ``max_steps``) and after how many
epochs and steps.

A held-out split (by problem, ``--eval-frac``, or an explicit ``--eval-file``) is scored
every epoch: pairwise accuracy for a PPM, MSE and sign accuracy for a value head. A
non-finite loss stops training with one line and saves nothing. The output directory is
written only when training finished (see rstar.ppm for its layout).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np

from rstar.basemodel import base_identity
from rstar.errors import DataError
from rstar.ppm import FORMAT, LinearHead, LlamaFeatures, PPMError, write_manifest
from rstar.results import read_records
from rstar.train.base import (
    DEFAULT_PRECISION,
    Convergence,
    ConvergenceStop,
    DivergenceGuard,
    add_precision_flag,
    epoch_rows,
    format_row,
    last_checkpoint,
    run_trainer,
    training_arguments,
)
from rstar.train.head import fit_pair_head, fit_value_head

# what --epochs, --lr, --weight-decay and the convergence flags default to, per architecture
DEFAULTS = {
    "lm": {"epochs": 20, "lr": 1e-4, "weight_decay": 0.0, "patience": 2, "tol": 0.01, "min_steps": 30},
    "head": {"epochs": 300, "lr": 1e-2, "weight_decay": 0.01, "patience": 2, "tol": 0.01, "min_steps": 100},
}
HEAD_CHECK_EVERY = 25  # head: epochs between two checks (loss, accuracies, convergence)


# ---------------------------------------------------------------- reading the exported files

def _read(path: str | Path, required: dict, what: str) -> list[dict]:
    rows = read_records(path, required, what)
    if not rows:
        raise DataError(f"{path}: no {what} records")
    return rows


def read_pairs(path: str | Path) -> list[dict]:
    rows = _read(path, {"prompt": str, "chosen": str, "rejected": str}, "PPM pair")
    for i, r in enumerate(rows):
        w = r.get("weight", 1.0)
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise DataError(f"{path}: record {i + 1}: weight must be a positive number, not {w!r}")
        r["weight"] = float(w)
    return rows


def read_values(path: str | Path) -> list[dict]:
    rows = _read(path, {"prompt": str, "completion": str, "q": (int, float)}, "value")
    for i, r in enumerate(rows):
        if not (math.isfinite(r["q"]) and -1.0 <= r["q"] <= 1.0):
            raise DataError(f"{path}: record {i + 1}: q must lie in [-1, 1], not {r['q']!r}")
    return rows


def split_by_problem(rows: list[dict], frac: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Hold out whole problems (no problem's pairs on both sides); by rows when only one problem."""
    if frac <= 0:
        return rows, []
    problems = sorted({str(r.get("problem")) for r in rows})
    rng = random.Random(seed)
    if len(problems) >= 2:
        rng.shuffle(problems)
        k = min(len(problems) - 1, max(1, round(frac * len(problems))))
        held = set(problems[:k])
        return ([r for r in rows if str(r.get("problem")) not in held],
                [r for r in rows if str(r.get("problem")) in held])
    idx = list(range(len(rows)))
    rng.shuffle(idx)
    k = min(len(rows) - 1, max(1, round(frac * len(rows)))) if len(rows) >= 2 else 0
    held = set(idx[:k])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


# ---------------------------------------------------------------- CLI

def register(tsub) -> None:
    for what in ("ppm", "value"):
        if what == "ppm":
            p = tsub.add_parser(
                "ppm", help="train a process preference model from ppm_pairs.jsonl",
                description="Train a PPM on the pairs `rstar export` writes (ppm_pairs.jsonl): a scalar reward of a "
                            "partial solution, loss -log sigmoid(r(chosen) - r(rejected)) weighted 1/(pos*neg) per "
                            "step (rStar-Math). Use it in the search with --scorer ppm:OUT.")
            p.add_argument("data", metavar="PAIRS", help="ppm_pairs.jsonl from `rstar export`")
        else:
            p = tsub.add_parser(
                "value", help="train a value head from values.jsonl",
                description="Train a value head on the step Q values `rstar export` writes (values.jsonl): "
                            "loss MSE(tanh(v), Q) (AlphaMath). Use it in the search with --scorer value:OUT.")
            p.add_argument("data", metavar="VALUES", help="values.jsonl from `rstar export`")
        p.add_argument("--base", default="default",
                       help="base model: 'default' (the built-in GGUF), a .gguf path, a model directory or an HF id "
                            "(for --kind head: the policy's GGUF)")
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--kind", choices=("lm", "head"), default="lm",
                       help="lm: LoRA + score head on the base, trained with TRL (slow on CPU); head: a linear head on "
                            "the frozen base's last-token hidden state via llama.cpp (seconds; cheap to score)")
        lm, hd = DEFAULTS["lm"], DEFAULTS["head"]
        p.add_argument("--epochs", type=float, default=None,
                       help=f"most epochs; training stops earlier once it converges (default: lm {lm['epochs']}, "
                            f"head {hd['epochs']})")
        p.add_argument("--patience", type=int, default=None,
                       help=f"converged: no improvement by --tol for this many epochs (head: checks of "
                            f"{HEAD_CHECK_EVERY} epochs) (default {lm['patience']})")
        p.add_argument("--tol", type=float, default=None,
                       help=f"converged: the smallest relative fall of the monitored loss that counts as improving "
                            f"(default {lm['tol']})")
        p.add_argument("--min-steps", type=int, default=None,
                       help=f"optimizer steps before convergence may stop training (head: epochs) "
                            f"(default: lm {lm['min_steps']}, head {hd['min_steps']})")
        p.add_argument("--lr", type=float, default=None, help=f"learning rate (default: lm {lm['lr']}, head {hd['lr']})")
        p.add_argument("--batch-size", type=int, default=4, help="lm: pairs (or steps) per device batch")
        p.add_argument("--grad-accum", type=int, default=1, help="lm: gradient accumulation steps")
        p.add_argument("--max-steps", type=int, default=-1, help="lm: stop after N optimizer steps at most")
        p.add_argument("--lora-r", type=int, default=16, help="lm: LoRA rank")
        p.add_argument("--max-length", type=int, default=1024, help="tokens per text (the start is cut, the end kept)")
        p.add_argument("--eval-frac", type=float, default=0.1, help="share of problems held out (default 0.1)")
        p.add_argument("--eval-file", default=None, help="held-out records from another file (instead of --eval-frac)")
        p.add_argument("--weight-decay", type=float, default=None,
                       help=f"default: lm {lm['weight_decay']}, head {hd['weight_decay']}")
        add_precision_flag(p, scope="lm: ")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--resume", action="store_true", help="lm: continue from the last checkpoint in OUT/checkpoints")
        p.add_argument("--overwrite", action="store_true", help="replace an existing trained model in --out")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=cmd_train, train_kind=what)


def cmd_train(args) -> int:
    out = Path(args.out)
    if (out / "rstar_ppm.json").exists() and not (args.overwrite or args.resume):
        raise PPMError(f"{out} already holds a trained model; pass --overwrite to replace it")
    rows = read_pairs(args.data) if args.train_kind == "ppm" else read_values(args.data)
    if args.eval_file:
        train = rows
        held = read_pairs(args.eval_file) if args.train_kind == "ppm" else read_values(args.eval_file)
    else:
        train, held = split_by_problem(rows, args.eval_frac, args.seed)
    opts = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "grad_accum", "max_steps", "lora_r",
                                            "max_length", "weight_decay", "seed", "resume", "precision",
                                            "patience", "tol", "min_steps")}
    fn = train_head if args.kind == "head" else train_lm
    result = fn(args.train_kind, train, held, args.base, out, progress=not args.no_progress,
                source=str(args.data), **opts)
    m = result["metrics"]
    for row in result["history"]:
        print(format_row(row))
    c = m["convergence"]
    print(f"stopped: {c['stopped_by']} after {c['epochs']} epochs, {c['steps']} optimizer steps ({c['rule']})")
    held_txt = ""
    if "eval_accuracy" in m:
        held_txt = f", held-out pairwise accuracy {m['eval_accuracy']:.3f} on {m['eval_records']} pairs"
    elif "eval_mse" in m:
        held_txt = f", held-out MSE {m['eval_mse']:.4f} on {m['eval_records']} steps"
    print(f"{args.train_kind} ({args.kind}) trained on {len(train)} records{held_txt} -> {out} "
          f"(use --scorer {args.train_kind}:{out})")
    return 0


def _manifest(kind: str, arch: str, base: dict, config: dict, metrics: dict, history: list) -> dict:
    return {"kind": kind, "arch": arch, "base": base, "config": config, "metrics": metrics, "history": history,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    return stage


def _publish(stage: Path, out: Path) -> None:
    """Move the finished files of ``stage`` into ``out`` (the manifest last, so a reader never sees a
    manifest without its weights)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(stage.iterdir(), key=lambda f: f.name == "rstar_ppm.json"):
        dest = out / f.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(f, dest)
    shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------- head: llama.cpp features + linear head

def _feature_table(feats: LlamaFeatures, texts: list[str], progress: bool) -> dict[str, np.ndarray]:
    uniq = list(dict.fromkeys(texts))
    it = uniq
    if progress:
        from tqdm import tqdm

        it = tqdm(uniq, desc="hidden states", unit="text")
    return {t: feats.features([t])[0] for t in it}


def pair_accuracy(head: LinearHead, xc: np.ndarray, xr: np.ndarray) -> float:
    return float(np.mean(head(xc) > head(xr))) if len(xc) else float("nan")


def train_head(kind: str, train: list[dict], held: list[dict], base: str, out: Path, *, progress: bool = True,
               source: str = "", epochs=None, lr=None, weight_decay=None, seed: int = 0, patience=None, tol=None,
               min_steps=None, **_ignored) -> dict:
    ident = base_identity(base)
    if not ident.get("gguf"):
        raise PPMError(f"--kind head reads hidden states with llama.cpp: --base must be a GGUF file "
                       f"(the policy's model), not {base}")
    d = DEFAULTS["head"]
    epochs = int(epochs or d["epochs"])
    lr = lr or d["lr"]
    weight_decay = d["weight_decay"] if weight_decay is None else weight_decay
    criterion = _criterion("head", patience, tol, min_steps)
    t0 = time.perf_counter()
    feats = LlamaFeatures(ident["path"])
    try:
        if kind == "ppm":
            texts = [r["prompt"] + r[s] for r in train + held for s in ("chosen", "rejected")]
        else:
            texts = [r["prompt"] + r["completion"] for r in train + held]
        table = _feature_table(feats, texts, progress)
        n_tokens = sum(len(feats.tokenize(t)) for t in table)
    finally:
        feats.close()
    feat_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if kind == "ppm":
        xc = np.stack([table[r["prompt"] + r["chosen"]] for r in train])
        xr = np.stack([table[r["prompt"] + r["rejected"]] for r in train])
        w = np.array([r.get("weight", 1.0) for r in train])
        hc = np.stack([table[r["prompt"] + r["chosen"]] for r in held]) if held else np.zeros((0, xc.shape[1]))
        hr = np.stack([table[r["prompt"] + r["rejected"]] for r in held]) if held else np.zeros((0, xc.shape[1]))
        hw = np.array([r.get("weight", 1.0) for r in held])

        def eval_fn(h):
            if not held:
                return {}
            margin = (h(hc) - h(hr)).astype(np.float64)
            loss = float(np.sum(np.logaddexp(0.0, -margin) * hw) / np.sum(hw))  # -log sigmoid, weighted
            return {"eval_loss": loss, "eval_accuracy": pair_accuracy(h, hc, hr)}

        head, history, stopped_by = fit_pair_head(xc, xr, w, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                                  eval_every=HEAD_CHECK_EVERY, eval_fn=eval_fn, progress=progress,
                                                  seed=seed, criterion=criterion)
        metrics = {"train_accuracy": pair_accuracy(head, xc, xr), **eval_fn(head)}
    else:
        x = np.stack([table[r["prompt"] + r["completion"]] for r in train])
        q = np.array([r["q"] for r in train], dtype=np.float32)
        hx = np.stack([table[r["prompt"] + r["completion"]] for r in held]) if held else None
        hq = np.array([r["q"] for r in held], dtype=np.float32) if held else None

        def eval_fn(h):
            if not held:
                return {}
            v = np.tanh(h(hx))
            return {"eval_mse": float(np.mean((v - hq) ** 2)), "eval_sign_accuracy": float(np.mean((v > 0) == (hq > 0)))}

        head, history, stopped_by = fit_value_head(x, q, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                                   eval_every=HEAD_CHECK_EVERY, eval_fn=eval_fn, progress=progress,
                                                   seed=seed, criterion=criterion)
        metrics = {"train_mse": float(np.mean((np.tanh(head(x)) - q) ** 2))}
        metrics.update(eval_fn(head))
    fit_s = time.perf_counter() - t1
    done = history[-1]["epoch"] if history else 0
    metrics["convergence"] = {"stopped_by": stopped_by, "epochs": done, "steps": done, "max_epochs": epochs,
                              "first_loss": history[0]["loss"] if history else None,
                              "last_loss": history[-1]["loss"] if history else None,
                              "rule": criterion.describe(f"check of {HEAD_CHECK_EVERY} epochs"),
                              **criterion.as_dict()}
    metrics.update({"train_records": len(train), "eval_records": len(held), "feature_seconds": round(feat_s, 2),
                    "fit_seconds": round(fit_s, 2), "texts": len(table), "feature_tokens": n_tokens,
                    "feature_tokens_per_s": round(n_tokens / feat_s, 1) if feat_s > 0 else None})
    stage = _staging(out)
    head.save(stage)
    config = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "seed": seed, "source": source,
              "check_every": HEAD_CHECK_EVERY, **criterion.as_dict(),
              "n_ctx": 4096, "features": "llama.cpp last-token hidden state (after the final norm)"}
    write_manifest(stage, _manifest(kind, "head", ident, config, metrics, history))
    _publish(stage, out)
    return {"metrics": metrics, "history": history}


# ---------------------------------------------------------------- lm: LoRA + score head with TRL

def _tokenize(tok, text: str, max_length: int) -> list[int]:
    ids = tok(text, add_special_tokens=True)["input_ids"]
    return ids[:1] + ids[-(max_length - 1):] if len(ids) > max_length else ids


def _lora(r: int):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=2 * r, lora_dropout=0.05,
                      target_modules="all-linear", modules_to_save=["score"])


def _criterion(arch: str, patience, tol, min_steps) -> Convergence:
    d = DEFAULTS[arch]
    return Convergence(patience=d["patience"] if patience is None else patience, tol=d["tol"] if tol is None else tol,
                       min_steps=d["min_steps"] if min_steps is None else min_steps)


def train_lm(kind: str, train: list[dict], held: list[dict], base: str, out: Path, *, progress: bool = True,
             source: str = "", epochs=None, lr=None, batch_size: int = 4, grad_accum: int = 1, max_steps: int = -1,
             lora_r: int = 16, max_length: int = 1024, weight_decay=None, seed: int = 0, resume: bool = False,
             precision: str = DEFAULT_PRECISION, patience=None, tol=None, min_steps=None, **_ignored) -> dict:
    import torch
    from datasets import Dataset

    from rstar.basemodel import load_base

    d = DEFAULTS["lm"]
    epochs = float(epochs or d["epochs"])
    lr = lr or d["lr"]
    weight_decay = d["weight_decay"] if weight_decay is None else weight_decay
    criterion = _criterion("lm", patience, tol, min_steps)
    ident = base_identity(base)
    torch.manual_seed(seed)
    model, tok = load_base(base, kind="score")
    tok.truncation_side = "left"
    ckpt = out / "checkpoints"
    resume_from = None
    if resume:
        resume_from = last_checkpoint(ckpt)
        if resume_from is None:
            raise PPMError(f"{ckpt}: no checkpoint to resume from; run without --resume")
    guard = DivergenceGuard()
    stop = ConvergenceStop(criterion, held_out=bool(held), progress=progress)
    settings = {"epochs": epochs, "max_steps": max_steps, "lr": lr, "batch_size": batch_size, "grad_accum": grad_accum,
                "seed": seed, "precision": precision, "no_progress": not progress}
    common = training_arguments(out, settings, per_device_eval_batch_size=batch_size, weight_decay=weight_decay,
                                lr_scheduler_type="cosine", save_strategy="epoch",
                                eval_strategy="epoch" if held else "no")
    t0 = time.perf_counter()
    if kind == "ppm":
        from trl import RewardConfig

        def prep(rows):
            return Dataset.from_list([{
                "chosen_ids": _tokenize(tok, r["prompt"] + r["chosen"], max_length),
                "rejected_ids": _tokenize(tok, r["prompt"] + r["rejected"], max_length),
                "weight": float(r.get("weight", 1.0))} for r in rows])

        args = RewardConfig(**common, max_length=None, disable_dropout=True)
        trainer = _weighted_reward_trainer()(model=model, args=args, train_dataset=prep(train),
                                             eval_dataset=prep(held) if held else None, processing_class=tok,
                                             peft_config=_lora(lora_r), callbacks=[guard, stop])
    else:
        from transformers import TrainingArguments

        def prep(rows):
            return Dataset.from_list([{"input_ids": _tokenize(tok, r["prompt"] + r["completion"], max_length),
                                       "labels": float(r["q"])} for r in rows])

        from peft import get_peft_model

        model = get_peft_model(model, _lora(lora_r))
        args = TrainingArguments(**common)
        trainer = _value_trainer()(model=model, args=args, train_dataset=prep(train),
                                   eval_dataset=prep(held) if held else None, processing_class=tok,
                                   callbacks=[guard, stop])
    result = run_trainer(trainer, guard, out, resume_from)
    train_s = time.perf_counter() - t0
    metrics = {"train_records": len(train), "eval_records": len(held), "train_seconds": round(train_s, 2),
               "train_loss": float(result.training_loss)}
    tokens = getattr(trainer, "_total_train_tokens", None) or getattr(trainer, "total_tokens", None)
    if tokens:
        metrics["train_tokens"] = int(tokens)
        metrics["train_tokens_per_s"] = round(tokens / train_s, 1)
    if held:
        ev = trainer.evaluate()
        metrics.update({k: float(v) for k, v in ev.items() if k in ("eval_loss", "eval_accuracy", "eval_mse",
                                                                    "eval_sign_accuracy")})
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics["first_loss"], metrics["last_loss"] = (losses[0], losses[-1]) if losses else (None, None)
    history = epoch_rows(trainer.state.log_history)
    steps = trainer.state.global_step
    if stop.stopped is not None:
        stopped_by = "converged"
    elif max_steps > 0 and steps >= max_steps:
        stopped_by = "max_steps"
    else:
        stopped_by = "max_epochs"
    metrics["convergence"] = {"stopped_by": stopped_by, "epochs": round(float(trainer.state.epoch or 0), 3),
                              "steps": steps, "max_epochs": epochs, "max_steps": max_steps,
                              "monitored": "eval_loss" if held else "mean training loss",
                              "rule": criterion.describe(), **criterion.as_dict()}
    stage = _staging(out)
    trainer.model.save_pretrained(str(stage / "adapter"))
    config = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "grad_accum": grad_accum,
              "max_steps": max_steps, "lora_r": lora_r, "max_length": max_length, "weight_decay": weight_decay,
              "seed": seed, "source": source, **criterion.as_dict(),
              "trainer": "trl.RewardTrainer" if kind == "ppm" else "transformers.Trainer"}
    write_manifest(stage, _manifest(kind, "lm", ident, config, metrics, history))
    _publish(stage, out)
    return {"metrics": metrics, "history": history, "log_history": trainer.state.log_history}


def _weighted_reward_trainer():
    """TRL's RewardTrainer with rStar's per-pair weights: the loss is the weighted mean of
    -log sigmoid(r_chosen - r_rejected), weights 1/(pos*neg) from the export."""
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class WeightedCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            out = super().torch_call([{k: v for k, v in e.items() if k != "weight"} for e in examples])
            out["weight"] = torch.tensor([float(e.get("weight", 1.0)) for e in examples])
            return out

    class WeightedRewardTrainer(RewardTrainer):
        def __init__(self, *a, processing_class=None, **kw):
            pad = processing_class.pad_token_id if processing_class.pad_token_id is not None \
                else processing_class.eos_token_id
            super().__init__(*a, processing_class=processing_class, data_collator=WeightedCollator(pad_token_id=pad),
                             **kw)

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "weight"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight")
            _, outputs = super().compute_loss(model, inputs, return_outputs=True)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            # TRL logs the mean of per-batch accuracies, which weighs a short last batch like a full one;
            # keep one 0/1 per pair instead, so the logged (held-out) accuracy is per pair
            acc = self._metrics["train" if model.training else "eval"]["accuracy"]
            if acc:
                acc.pop()
            acc.extend(self.accelerator.gather_for_metrics((chosen > rejected).float().detach()).tolist())
            per_pair = -torch.nn.functional.logsigmoid(chosen - rejected)
            weight = weight.to(per_pair.dtype)
            loss = (per_pair * weight).sum() / weight.sum()
            return (loss, outputs) if return_outputs else loss

    return WeightedRewardTrainer


def _value_trainer():
    """transformers' Trainer with AlphaMath's value loss MSE(tanh(v), Q) on a one-label score head."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer

    class ValueTrainer(Trainer):
        def __init__(self, *a, processing_class=None, **kw):
            super().__init__(*a, processing_class=processing_class,
                             data_collator=DataCollatorWithPadding(processing_class), **kw)
            self.can_return_loss = True
            self._total_train_tokens = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            q = inputs.pop("labels").float()
            if model.training:
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            outputs = model(**inputs)
            v = torch.tanh(outputs.logits[:, 0].float())
            loss = torch.mean((v - q) ** 2)
            return (loss, {"v": v}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            q = inputs["labels"].float()
            with torch.no_grad():
                loss, out = self.compute_loss(model, dict(inputs), return_outputs=True)
            return loss.detach(), out["v"].detach(), q

        def evaluate(self, *a, **kw):
            self.compute_metrics = _value_metrics
            return super().evaluate(*a, **kw)

    return ValueTrainer


def _value_metrics(pred) -> dict:
    v = np.asarray(pred.predictions, dtype=np.float64).reshape(-1)
    q = np.asarray(pred.label_ids, dtype=np.float64).reshape(-1)
    return {"mse": float(np.mean((v - q) ** 2)), "sign_accuracy": float(np.mean((v > 0) == (q > 0)))}


__all__ = ["register", "read_pairs", "read_values", "split_by_problem", "train_head", "train_lm", "FORMAT"]
