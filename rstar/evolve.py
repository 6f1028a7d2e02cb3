"""`rstar evolve DATA --out DIR --rounds N`: rStar-Math's self-evolution rounds, resumable.

Round k (docs/METHODS.md section 1, "Self-evolution")::

    search   DATA with policy_k (+ PPM_k)      round 0: gold terminal rewards only;
                                               later rounds: gold+ppm:PPM_k, finished
                                               solutions still back up +1 / -1 from the
                                               gold answer, PPM_k only initialises new
                                               intermediate steps (rStar-Math)
    export   trees -> sft.jsonl, ppm_pairs.jsonl, step_dpo.jsonl       (rstar.export)
    sft      policy_{k+1} = base + LoRA on the round's verified traces (rstar.train.sft)
    dpo      optional Step-DPO on top of it                             (rstar.train.dpo)
    ppm      PPM_{k+1} on the round's preference pairs                  (rstar.train.reward)
    eval     EVAL_DATA without gold rewards: policy_{k+1} + PPM_{k+1}; round 0 also
             evaluates policy_0 (no scorer, answers by vote), the baseline every
             later round is compared with

Everything of round k lives in ``DIR/round-K/`` (``search/``, ``data/``, ``sft/``,
``dpo/``, ``ppm/``, ``eval/``, ``eval-base/``), each with its own config file (run.json,
export.json, rstar_model.json + train_log.json, rstar_ppm.json). ``DIR/evolve.json``
is the state: the settings and, per round and stage, its status, time and figures.
A killed ``evolve`` run again with the same arguments resumes at the stage it was
in: a search continues at the next unfinished problem, training at its last
checkpoint; finished stages are not redone. The rounds table (accuracy with 95%
Wilson intervals, pass@k, tokens, traces, pairs, training loss, time per stage) is
printed, saved as ``DIR/rounds.json`` and drawn as ``DIR/rounds.png``.

Budgets come from ``--preset`` (``tiny``: minutes, for tests; ``cpu``: hours on two
cores; ``paper``: rStar-Math's values, for GPUs) and can be overridden by flags. Data
generation searches with a budget where the gold rewards steer the tree (``cpu``:
the ``cpu-generate`` search preset, 16 rollouts of 3 children; rStar-Math: 16 or
more), evaluation with the cheaper evaluation preset (rstar.search.config says which
budget each method needs for its values to act).
A round whose search solved nothing trains nothing: policy_{k+1} = policy_k, said so
in the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rstar.errors import DataError, RstarError
from rstar.train.base import DEFAULT_PRECISION, add_precision_flag

STATE_FILE = "evolve.json"
STAGES = ("search", "export", "sft", "dpo", "ppm", "eval")


@dataclass
class Budget:
    """Everything a round spends; a preset fills it, flags override single fields."""

    problems: int | None = None          # first N training problems of DATA (None: all)
    eval_problems: int | None = None     # first N problems of EVAL_DATA
    search_preset: str = "cpu-generate"  # rstar.search.config preset for data generation (values must steer)
    eval_preset: str = "cpu"             # ... and for evaluation
    rollouts: int | None = None          # overrides of the search presets
    children: int | None = None
    max_depth: int | None = None
    max_tokens: int | None = None
    sft_epochs: float = 2.0
    sft_max_steps: int = -1
    sft_lr: float = 1e-4
    sft_batch: int = 4                   # examples per optimizer step ...
    sft_micro_batch: int | None = None   # ... taken this many at a time (None: all at once; CPU presets: 1)
    lora_r: int = 16
    max_length: int = 2048
    dpo: bool = False
    dpo_epochs: float = 4.0
    dpo_max_steps: int = -1
    dpo_lr: float = 5e-7
    dpo_beta: float = 0.4
    ppm: bool = True
    ppm_kind: str = "head"               # head (llama.cpp features, GGUF base) or lm
    ppm_epochs: float | None = None
    ppm_max_steps: int = -1
    save_steps: int = 50
    precision: str = DEFAULT_PRECISION   # training arithmetic: rstar.train.base.use_bf16


PRESETS: dict[str, Budget] = {
    # a few problems and steps: every stage runs in minutes on the tiny test model
    "tiny": Budget(problems=3, eval_problems=3, rollouts=3, children=2, max_depth=4, max_tokens=64,
                   sft_epochs=1.0, sft_max_steps=3, sft_batch=2, lora_r=4, max_length=768, dpo=False,
                   dpo_max_steps=2, ppm_epochs=30, ppm_max_steps=3, save_steps=1),
    # the built-in 1.5B model on two CPU cores: hours for 100 problems
    # sft_micro_batch 1: four examples at once (padded to ~1,500 tokens) took all 24 GiB (OOM-killed)
    "cpu": Budget(problems=100, eval_problems=50, sft_epochs=2.0, sft_lr=1e-4, sft_batch=4, sft_micro_batch=1,
                  lora_r=16, max_length=1536, dpo=False, ppm_kind="head", save_steps=25),
    # rStar-Math's published settings (GPU): 16-rollout generation (8 in round 1), eval with 12 rollouts x 32
    # children; SFT 2 epochs (the paper fine-tunes fully at lr 7e-6; LoRA needs a larger rate); PPM as an LM
    "paper": Budget(problems=None, eval_problems=None, search_preset="rstar-generate", eval_preset="rstar-eval",
                    rollouts=16, sft_epochs=2.0, sft_lr=1e-4, sft_batch=8, lora_r=64, max_length=2048, dpo=True,
                    dpo_epochs=4.0, ppm_kind="lm", ppm_epochs=2.0, save_steps=200),
}


@dataclass
class EvolveConfig:
    data: str
    out: str
    rounds: int = 1
    eval_data: str | None = None
    preset: str = "cpu"
    model: str = "default"
    template: str = "default"
    seed: int = 0
    budget: Budget = dataclasses.field(default_factory=Budget)
    progress: bool = True
    ray: str | None = None           # search stages on a Ray cluster (an address, "auto", "" for local)

    def key(self) -> dict:
        """The settings that change results (a resumed evolve must match them)."""
        d = asdict(self)
        for k in ("out", "progress", "rounds", "ray"):
            d.pop(k)
        return d


class EvolveError(RstarError):
    """An evolve directory cannot be resumed with these settings."""


# ---------------------------------------------------------------- state


class State:
    """``DIR/evolve.json``: settings + per round, per stage ``{status, seconds, attempts, ...}``,
    rewritten atomically after every change."""

    def __init__(self, cfg: EvolveConfig):
        self.path = Path(cfg.out) / STATE_FILE
        self.cfg = cfg
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError as exc:
                raise EvolveError(f"{self.path}: unreadable state ({exc}); move it away to start over") from None
            saved = self.data.get("config", {})
            if saved != json.loads(json.dumps(cfg.key())):
                diffs = [k for k in sorted(set(saved) | set(cfg.key())) if saved.get(k) != cfg.key().get(k)]
                raise EvolveError(f"{cfg.out} was started with other settings ({', '.join(diffs)} differ); "
                                  "run evolve with the same arguments to resume, or choose another --out")
        else:
            self.data = {"config": cfg.key(), "rounds": {}}
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    def stage(self, k: int, name: str) -> dict:
        return self.data["rounds"].setdefault(str(k), {}).setdefault(name, {"status": "todo"})

    def round(self, k: int) -> dict:
        return self.data["rounds"].setdefault(str(k), {})


# ---------------------------------------------------------------- the rounds


class Evolve:
    def __init__(self, cfg: EvolveConfig):
        if cfg.rounds < 1:
            raise RstarError(f"--rounds must be at least 1, got {cfg.rounds}")
        for f, what in ((cfg.data, "DATA"), (cfg.eval_data, "--eval")):
            if f is not None and not Path(f).is_file():
                raise DataError(f"{what} {f}: no such file")
        self.cfg = cfg
        self.b = cfg.budget
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = State(cfg)

    # ---- paths

    def rdir(self, k: int) -> Path:
        return self.out / f"round-{k}"

    def policy_of(self, k: int) -> str:
        """policy_k: the base for k = 0, else what round k-1 trained (or its own policy when it trained none)."""
        if k == 0:
            return self.cfg.model
        got = self.state.round(k - 1).get("policy_out")
        return got or self.policy_of(k - 1)

    def ppm_of(self, k: int) -> str | None:
        if k == 0:
            return None
        got = self.state.round(k - 1).get("ppm_out")
        return got or self.ppm_of(k - 1)

    # ---- the driver

    def run(self) -> list[dict]:
        with _llama_without_amx_buffers():
            return self._run()

    def _run(self) -> list[dict]:
        for k in range(self.cfg.rounds):
            for name in STAGES:
                st = self.state.stage(k, name)
                if st["status"] in ("done", "skipped"):
                    continue
                if name == "dpo" and not self.b.dpo or name == "ppm" and not self.b.ppm or \
                        name == "eval" and not self.cfg.eval_data:
                    st.update(status="skipped", reason="not asked for")
                    self.state.save()
                    continue
                st["attempts"] = st.get("attempts", 0) + 1
                st["status"] = "running"
                self.state.save()
                self._say(f"round {k}: {name}" + (" (resuming)" if st["attempts"] > 1 else ""))
                t0 = time.perf_counter()
                info = getattr(self, f"_stage_{name}")(k) or {}
                st.update(info)
                st["seconds"] = st.get("seconds", 0.0) + (time.perf_counter() - t0)
                st.setdefault("status", "done")
                if st["status"] == "running":
                    st["status"] = "done"
                self.state.save()
        rows = self.table()
        self.save_table(rows)
        return rows

    def _say(self, msg: str) -> None:
        print(f"evolve: {msg}", file=sys.stderr, flush=True)

    # ---- stages

    def _recipe(self, model: str, scorer: str, preset: str):
        from rstar.recipe import Recipe
        from rstar.search.config import preset as search_preset

        b = self.b
        cfg = search_preset(preset)
        changes = {k: v for k, v in (("rollouts", b.rollouts), ("children", b.children), ("max_depth", b.max_depth),
                                     ("max_tokens", b.max_tokens)) if v is not None}
        cfg = cfg.replace(seed=self.cfg.seed, **changes)
        return Recipe(algo="mcts", scorer=scorer, model=model, template=self.cfg.template, search=cfg)

    def _search(self, data: str, out: Path, model: str, scorer: str, preset: str, limit: int | None) -> dict:
        from rstar.runner import run_dataset

        recipe = self._recipe(model, scorer, preset)
        resume = (out / "results.jsonl").exists()
        summary = run_dataset(data, out, recipe, resume=resume, limit=limit, progress=self.cfg.progress,
                              ray=self.cfg.ray)
        return {"summary": summary, "model": model, "scorer": scorer}

    def data_scorer(self, k: int) -> str:
        """Round k's data-generation scorer: the gold answer for finished solutions always; from
        round 1 on, the last PPM for new intermediate steps too (never the PPM alone: its scores
        of finished solutions would only confirm the PPM that gave them)."""
        ppm = self.ppm_of(k)
        return "gold" if ppm is None else f"gold+ppm:{ppm}"

    def data_recipe(self, k: int):
        """The recipe round k's data-generation search runs with."""
        return self._recipe(self.policy_of(k), self.data_scorer(k), self.b.search_preset)

    def _stage_search(self, k: int) -> dict:
        return self._search(self.cfg.data, self.rdir(k) / "search", self.policy_of(k), self.data_scorer(k),
                            self.b.search_preset, self.b.problems)

    def _stage_export(self, k: int) -> dict:
        from rstar.export import export_run

        try:
            counts = export_run(self.rdir(k) / "search", self.rdir(k) / "data", progress=False)
        except DataError as exc:
            if "no correct solution" not in str(exc):
                raise
            self._say(f"round {k}: {exc}; nothing to train this round")
            return {"status": "done", "counts": {"sft": 0, "ppm_pairs": 0, "step_dpo": 0}, "empty": True}
        return {"counts": counts}

    def _counts(self, k: int) -> dict:
        return self.state.stage(k, "export").get("counts") or {}

    def _stage_sft(self, k: int) -> dict:
        from rstar.train.sft import SFTSettings, train_sft

        if not self._counts(k).get("sft"):
            return {"status": "skipped", "reason": "no verified traces"}
        b = self.b
        out = self.rdir(k) / "sft"
        micro = min(b.sft_micro_batch or b.sft_batch, b.sft_batch)
        log = train_sft(SFTSettings(
            data=str(self.rdir(k) / "data" / "sft.jsonl"), out=str(out), base=self.cfg.model,
            template=self.cfg.template, epochs=b.sft_epochs, max_steps=b.sft_max_steps, lr=b.sft_lr,
            batch_size=micro, grad_accum=max(1, b.sft_batch // micro),
            max_length=b.max_length, save_steps=b.save_steps, lora_r=b.lora_r,
            lora_alpha=2 * b.lora_r, seed=self.cfg.seed, resume=True, no_progress=not self.cfg.progress,
            precision=b.precision))
        self.state.round(k)["policy_out"] = str(out)
        return {"log": _slim(log)}

    def _stage_dpo(self, k: int) -> dict:
        from rstar.train.dpo import DPOSettings, train_dpo

        sft = self.state.stage(k, "sft")
        if sft.get("status") != "done" or not self._counts(k).get("step_dpo"):
            return {"status": "skipped", "reason": "no SFT policy or no Step-DPO pairs"}
        b = self.b
        out = self.rdir(k) / "dpo"
        log = train_dpo(DPOSettings(
            data=str(self.rdir(k) / "data" / "step_dpo.jsonl"), out=str(out), base=str(self.rdir(k) / "sft"),
            beta=b.dpo_beta, epochs=b.dpo_epochs, max_steps=b.dpo_max_steps, lr=b.dpo_lr, batch_size=2,
            max_length=b.max_length, save_steps=b.save_steps, lora_r=b.lora_r, seed=self.cfg.seed, resume=True,
            no_progress=not self.cfg.progress, precision=b.precision))
        self.state.round(k)["policy_out"] = str(out)
        return {"log": _slim(log)}

    def _stage_ppm(self, k: int) -> dict:
        from rstar.adapters import base_gguf_path
        from rstar.train import reward

        if not self._counts(k).get("ppm_pairs"):
            return {"status": "skipped", "reason": "no PPM pairs"}
        b = self.b
        rows = reward.read_pairs(self.rdir(k) / "data" / "ppm_pairs.jsonl")
        train, held = reward.split_by_problem(rows, 0.2 if len({r.get("problem") for r in rows}) > 2 else 0.0,
                                              self.cfg.seed)
        if not train:
            train, held = rows, []
        out = self.rdir(k) / "ppm"
        kind = b.ppm_kind
        base = self.cfg.model
        if kind == "head" and base_gguf_path(base) is None:
            kind = "lm"  # hidden states are read with llama.cpp: needs a GGUF base
        if kind == "head":
            res = reward.train_head("ppm", train, held, str(base_gguf_path(base)), out,
                                    progress=self.cfg.progress, source=str(self.rdir(k) / "data"),
                                    epochs=b.ppm_epochs, seed=self.cfg.seed)
        else:
            res = reward.train_lm("ppm", train, held, base, out, progress=self.cfg.progress,
                                  source=str(self.rdir(k) / "data"), epochs=b.ppm_epochs, lr=None,
                                  batch_size=4, grad_accum=1, max_steps=b.ppm_max_steps, lora_r=b.lora_r,
                                  max_length=b.max_length, weight_decay=None, seed=self.cfg.seed,
                                  resume=(out / "checkpoints").is_dir(), precision=b.precision)
        self.state.round(k)["ppm_out"] = str(out)
        return {"kind": kind, "metrics": res.get("metrics", {}), "pairs": len(rows)}

    def _stage_eval(self, k: int) -> dict:
        info: dict[str, Any] = {}
        if k == 0:  # the baseline: policy_0 without a scorer (answers by vote)
            info["base"] = self._search(self.cfg.eval_data, self.rdir(0) / "eval-base", self.policy_of(0), "none",
                                        self.b.eval_preset, self.b.eval_problems)
        ppm = self.ppm_of(k + 1)
        if k == 0 and ppm is None and self.policy_of(1) == self.policy_of(0):
            info["new"] = dict(info["base"], same_as="base")  # nothing was trained: the same run
            return info
        info["new"] = self._search(self.cfg.eval_data, self.rdir(k) / "eval", self.policy_of(k + 1),
                                   "none" if ppm is None else f"ppm:{ppm}", self.b.eval_preset, self.b.eval_problems)
        return info

    # ---- the table

    def table(self) -> list[dict]:
        rows = []
        for k in range(self.cfg.rounds):
            r = self.state.data["rounds"].get(str(k), {})
            search = (r.get("search") or {}).get("summary") or {}
            counts = (r.get("export") or {}).get("counts") or {}
            sft = (r.get("sft") or {}).get("log") or {}
            dpo = (r.get("dpo") or {}).get("log") or {}
            ppm = r.get("ppm") or {}
            ev = r.get("eval") or {}
            row = {
                "round": k,
                "policy": self.policy_of(k), "policy_next": self.policy_of(k + 1),
                "search_accuracy": search.get("accuracy"), "search_accuracy_ci95": search.get("accuracy_ci95"),
                "search_pass_at_k": search.get("pass_at_k"), "search_tokens": search.get("tokens"),
                "problems": search.get("problems"),
                "traces": counts.get("sft"), "ppm_pairs": counts.get("ppm_pairs"), "dpo_pairs": counts.get("step_dpo"),
                "sft_loss": sft.get("final_loss"), "sft_tokens_per_s": sft.get("tokens_per_s"),
                "dpo_loss": dpo.get("final_loss"),
                "ppm_eval_accuracy": (ppm.get("metrics") or {}).get("eval_accuracy"),
                "time_s": {s: round((r.get(s) or {}).get("seconds", 0.0), 1) for s in STAGES},
                "status": {s: (r.get(s) or {}).get("status", "todo") for s in STAGES},
            }
            for tag in ("base", "new"):
                summ = ((ev.get(tag) or {}).get("summary")) or {}
                if summ:
                    row[f"eval_{tag}"] = {"accuracy": summ.get("accuracy"), "ci95": summ.get("accuracy_ci95"),
                                          "pass_at_k": summ.get("pass_at_k"), "tokens": summ.get("tokens"),
                                          "problems": summ.get("problems"), "scorer": ev[tag].get("scorer"),
                                          "model": ev[tag].get("model")}
            rows.append(row)
        return rows

    def save_table(self, rows: list[dict]) -> None:
        tmp = self.out / "rounds.json.tmp"
        tmp.write_text(json.dumps(rows, indent=2, default=str))
        tmp.replace(self.out / "rounds.json")
        print(format_table(rows))
        try:
            plot_rounds(rows, self.out / "rounds.png")
        except ImportError as exc:  # matplotlib is optional
            self._say(f"no plot ({exc}); pip install matplotlib")


@contextlib.contextmanager
def _llama_without_amx_buffers():
    """llama.cpp's AMX weight buffers crash (SIGSEGV) on multi-token batches of some quantizations
    (SmolLM2's Q4_1); every model an evolve loads gets them off on a CPU with AMX, through the one
    patch in rstar.ppm. (To be dropped once LlamaCppPolicy does this itself.)"""
    try:
        import llama_cpp  # noqa: F401
        from rstar.ppm import no_amx_buffers
    except ImportError:
        yield
        return
    with no_amx_buffers():
        yield


def _slim(log: dict) -> dict:
    return {k: v for k, v in log.items() if k not in ("losses", "settings")}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:.0f},{100 * ci[1]:.0f}]"


def format_table(rows: list[dict]) -> str:
    head = (f"{'round':>5} {'search acc% [95%]':>18} {'pass@k%':>7} {'tokens':>8} {'traces':>6} {'pairs':>6} "
            f"{'dpo':>4} {'sft loss':>8} {'eval acc% [95%] (policy k+1)':>29} {'time s (search/export/sft/dpo/ppm/eval)'}")
    lines = [head]
    for r in rows:
        if r.get("eval_base"):
            e = r["eval_base"]
            lines.append(f"{'base':>5} {'':>18} {'':>7} {'':>8} {'':>6} {'':>6} {'':>4} {'':>8} "
                         f"{_pct(e['accuracy']) + _ci(e['ci95']):>29}")
        e = r.get("eval_new") or {}
        t = r["time_s"]
        loss = "-" if r["sft_loss"] is None else f"{r['sft_loss']:.3f}"
        lines.append(
            f"{r['round']:>5} {_pct(r['search_accuracy']) + _ci(r['search_accuracy_ci95']):>18} "
            f"{_pct(r['search_pass_at_k']):>7} {r['search_tokens'] or 0:>8} {r['traces'] or 0:>6} "
            f"{r['ppm_pairs'] or 0:>6} {r['dpo_pairs'] or 0:>4} {loss:>8} "
            f"{(_pct(e.get('accuracy')) + _ci(e.get('ci95'))) if e else '-':>29} "
            + "/".join(f"{t[s]:.0f}" for s in STAGES))
    return "\n".join(lines)


def plot_rounds(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys, lo, hi, labels = [], [], [], [], []

    def add(x, label, e):
        if not e or e.get("accuracy") is None:
            return
        acc = 100 * e["accuracy"]
        ci = e.get("ci95") or [e["accuracy"], e["accuracy"]]
        xs.append(x)
        ys.append(acc)
        lo.append(acc - 100 * ci[0])
        hi.append(100 * ci[1] - acc)
        labels.append(label)

    for r in rows:
        if r.get("eval_base"):
            add(0, "policy 0", r["eval_base"])
        add(r["round"] + 1, f"policy {r['round'] + 1}", r.get("eval_new"))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if xs:
        ax1.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=4)
        ax1.set_xticks(xs, labels)
    ax1.set_ylabel("eval accuracy % (95% Wilson)")
    ax1.set_ylim(0, 100)
    ax1.set_title("evaluation without gold")
    rk = [r["round"] for r in rows if r.get("search_accuracy") is not None]
    ax2.plot(rk, [100 * r["search_accuracy"] for r in rows if r.get("search_accuracy") is not None], "o-",
             label="search accuracy")
    ax2.plot(rk, [100 * (r["search_pass_at_k"] or 0) for r in rows if r.get("search_accuracy") is not None],
             "s--", label="pass@k")
    ax2.set_xticks(rk)
    ax2.set_xlabel("round")
    ax2.set_ylabel("%")
    ax2.set_ylim(0, 100)
    ax2.set_title("data-generation search (gold rewards)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- CLI


def budget_from_args(args) -> Budget:
    b = dataclasses.replace(PRESETS[args.preset])
    for name in ("problems", "eval_problems", "rollouts", "children", "max_depth", "max_tokens", "lora_r",
                 "precision"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(b, name, v)
    for flag, field in (("epochs", "sft_epochs"), ("max_steps", "sft_max_steps"), ("lr", "sft_lr"),
                        ("ppm_kind", "ppm_kind")):
        v = getattr(args, flag, None)
        if v is not None:
            setattr(b, field, v)
    if args.dpo is not None:
        b.dpo = args.dpo
    return b


def register(sub) -> None:
    p = sub.add_parser(
        "evolve", help="self-evolution rounds: search -> export -> train policy and PPM -> evaluate (resumable)",
        description="rStar-Math's self-evolution: each round searches DATA with the current policy (gold rewards "
                    "for finished solutions in every round; from round 1 on the last PPM also values new steps), "
                    "exports the trees, fine-tunes the next "
                    "policy (LoRA SFT, optional Step-DPO) and trains the next PPM, then evaluates the new policy "
                    "with its PPM on EVAL_DATA without gold rewards against the previous one. Everything per round "
                    "is kept in OUT/round-K/ with its config; OUT/evolve.json is the state: run the same command "
                    "again after a kill and it resumes at the stage and problem it was in. The rounds table is "
                    "printed and saved as OUT/rounds.json and OUT/rounds.png.")
    p.add_argument("data", help="JSONL training problems (question, answer)")
    p.add_argument("--out", required=True, help="output directory (resumes when it holds an evolve state)")
    p.add_argument("--rounds", type=int, default=1, help="rounds to run (default 1; more can be added later)")
    p.add_argument("--eval", dest="eval_data", default=None, help="JSONL problems to evaluate each round on "
                   "(graded against their answers, never rewarded by them)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="budgets: tiny (minutes, tests), cpu (hours on 2 cores), paper (rStar-Math, GPU)")
    p.add_argument("--model", default="default", help="policy_0 and the base every round fine-tunes "
                   "(default: the built-in GGUF)")
    p.add_argument("--template", default="default", help="step template (default or rstar)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("budgets (override the preset)")
    g.add_argument("--problems", type=int, help="first N problems of DATA per round")
    g.add_argument("--eval-problems", type=int, help="first N problems of --eval")
    g.add_argument("--rollouts", type=int, help="search rollouts per problem")
    g.add_argument("--children", type=int, help="candidate steps per expansion")
    g.add_argument("--max-depth", type=int, help="steps per solution at most")
    g.add_argument("--max-tokens", type=int, help="tokens per step")
    g.add_argument("--epochs", type=float, help="SFT epochs")
    g.add_argument("--max-steps", type=int, help="SFT optimizer steps at most")
    g.add_argument("--lr", type=float, help="SFT learning rate")
    g.add_argument("--lora-r", type=int, help="LoRA rank")
    add_precision_flag(g, default=None)
    g.add_argument("--dpo", action=_Bool, default=None, help="also run Step-DPO (--no-dpo to turn off)")
    g.add_argument("--no-dpo", dest="dpo", action="store_false", help="no Step-DPO")
    g.add_argument("--ppm-kind", choices=("head", "lm"), help="PPM architecture (head: llama.cpp features)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the search stages on a Ray cluster ('auto', an address, or no value for a local one)")
    p.set_defaults(func=cmd_evolve)


class _Bool:
    """argparse action factory for a bare --flag meaning True (None when absent)."""

    def __new__(cls, option_strings, dest, **kw):
        import argparse

        kw.pop("nargs", None)
        return argparse._StoreTrueAction(option_strings, dest, default=kw.pop("default", None),
                                         help=kw.pop("help", None))


def config_from_args(args) -> EvolveConfig:
    return EvolveConfig(data=args.data, out=args.out, rounds=args.rounds, eval_data=args.eval_data,
                        preset=args.preset, model=args.model, template=args.template, seed=args.seed,
                        budget=budget_from_args(args), progress=not args.no_progress,
                        ray=args.ray)


def cmd_evolve(args) -> int:
    Evolve(config_from_args(args)).run()
    print(f"evolve: rounds table in {Path(args.out) / 'rounds.json'} and {Path(args.out) / 'rounds.png'}",
          file=sys.stderr)
    return 0
