"""`rstar export RUN_DIR --out DIR`: search trees -> training data (docs/METHODS.md sections 1, 3-5).

Pure functions of one trace record (read through ``rstar.trace``), one per kind:

* ``sft_records``: per problem the top-k (2) correct traces by mean Q, then min Q;
  traces through a failed step are left out (rStar-Math's SFT data);
* ``ppm_pairs``: two kinds of pairs, marked ``"kind"``:

  - ``"step"``: at every node with both correct and wrong endings below it, the 2
    children with the highest Q that lead to a correct answer are chosen, the 2 with the
    lowest Q that lead only to wrong endings are rejected (4 on a side when the other side
    has one); a pair is kept when its Q margin is at least ``min_margin`` (0.5) and the
    two steps differ by an edit distance of at least ``min_edit`` (20). Each kept pair
    carries ``weight`` = 1 / (pairs kept at that node): rStar's 1/(pos*neg) average;
  - ``"solution"``: per problem, the ``per_side`` (2) correct finished solutions with the
    highest mean Q against the ``per_side`` wrong finished solutions with the lowest mean Q
    (rStar-Math's final-answer pairs: the comparison a PPM makes when it picks an answer).
    ``prompt`` is the question's prompt, ``chosen``/``rejected`` the whole shown solutions;
    the label comes from the gold grade, so no Q margin is asked, only ``min_edit``;
* ``step_dpo_pairs``: at every node on a correct path (a correct ending below it), each
  child that is a first wrong step (its code failed, or every ending below it is wrong)
  is rejected against the correct-leading sibling with the highest Q;
* ``value_records``: every visited step with its Q (AlphaMath's value targets).

**Cut steps** (a step that did not parse, whose code raised, timed out, ran out of memory
or broke the sandbox, cut at the token limit or at the depth limit: ``kind == "invalid"``
for any reason but ``no_answer``) were never scored by the search: they are cut before a
scorer sees them, so they are no PPM pair and no value target (``export.json`` counts them
as ``cut_steps``). Nor do they label their ancestors: the endings that make a step correct
or wrong are its finished descendants only, and the Q read for PPM pairs, SFT ranking and
value targets is the tree's Q with the cut descendants' back-ups (-1 each) taken out
(``clean_q``). A step whose only endings were crashes has no label and is left out.
Step-DPO keeps failed steps as rejected ones: it teaches the policy, which wrote them.

Every record carries provenance: ``run``, ``problem`` (id), ``nodes`` (local node ids).
Texts are as the scorer read them: ``prompt`` is ``rstar.trace.node_prompt`` (for MCTSr's
whole-solution nodes, the question's prompt: the search scores ``prompt + shown``, not the
critique-and-rewrite prompt that wrote the node), steps are ``shown`` texts (PPM, values,
SFT: what a scorer reads) or ``text`` (Step-DPO: what the policy wrote).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rstar import trace
from rstar.errors import DataError

KINDS = ("sft", "ppm_pairs", "step_dpo", "values")


@dataclass
class ExportConfig:
    min_margin: float = 0.5     # PPM pairs: Q(chosen) - Q(rejected) at least this
    min_edit: int = 20          # PPM pairs: edit distance between the two steps at least this
    per_side: int = 2           # PPM pairs: children taken on each side (doubled when the other has one)
    sft_per_problem: int = 2    # SFT: correct traces per problem
    min_visits: int = 1         # a child's Q counts only with this many visits


def edit_distance(a: str, b: str) -> int:
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


def _q(node: dict) -> float | None:
    q = node.get("q")
    return float(q) if isinstance(q, (int, float)) else None


def _base(record: dict, run: str, node_ids: list[int]) -> dict:
    return {"run": run, "problem": record.get("id"), "nodes": node_ids}


# ---------------------------------------------------------------- cut steps and clean labels

def is_cut(node: dict) -> bool:
    """A step the search cut before any scorer saw it: parse error, failed code, sandbox error,
    token or depth limit (not a finished solution without an answer: that one the policy ended)."""
    return node.get("kind") == trace.KIND_INVALID and node.get("status") != "no_answer"


def cut_steps(record: dict) -> list[int]:
    return [n["id"] for n in trace.nodes(record)[1:] if is_cut(n)]


def clean_outcomes(record: dict) -> list[trace.Outcome]:
    """``trace.outcomes`` with cut steps counting as no ending: a crashed sample does not make
    its ancestors wrong."""
    return trace.outcomes(record, skip=is_cut)


def clean_q(record: dict) -> list[float | None]:
    """Per node, Q with the back-ups of its cut descendants taken out: (W - W_cut) / (N - N_cut),
    ``None`` for a cut step or a node whose every visit came from cut descendants. A node
    with no cut descendant keeps the tree's Q as saved. Back-ups add along the whole path
    (MCTS, PUCT), so each cut node's W = Q * N is in every ancestor's W."""
    ns = trace.nodes(record)
    cut_w = [0.0] * len(ns)
    cut_n = [0] * len(ns)
    has_cut = [False] * len(ns)
    for n in reversed(ns):
        i = n["id"]
        if is_cut(n):
            q, v = _q(n), int(n.get("visits") or 0)
            if q is not None and v:
                cut_w[i] += q * v
                cut_n[i] += v
            has_cut[i] = True
        p = n["parent"]
        if p >= 0:
            cut_w[p] += cut_w[i]
            cut_n[p] += cut_n[i]
            has_cut[p] = has_cut[p] or has_cut[i]
    out: list[float | None] = []
    for n in ns:
        i = n["id"]
        q = _q(n)
        if is_cut(n):
            out.append(None)
        elif q is None or not has_cut[i] or not cut_n[i]:
            out.append(q)
        else:
            v = int(n.get("visits") or 0)
            left = v - cut_n[i]
            out.append((q * v - cut_w[i]) / left if left > 0 else None)
    return out


def _visits(node: dict) -> int:
    return int(node.get("visits") or 0)


def scored_prompt(record: dict, node: int) -> str:
    """The prompt a scorer read ``node`` after: ``trace.node_prompt``, except for an MCTSr node
    (a whole solution), which the search scores as the question's prompt + its shown text."""
    n = trace.nodes(record)[node]
    if n.get("kind") == trace.KIND_WHOLE and record.get("prompt") is not None:
        return record["prompt"]
    return trace.node_prompt(record, node)


def solution_steps(record: dict, leaf: int) -> list[int]:
    """The nodes whose steps make up the solution ending at ``leaf``: the path below the root, or
    the node alone when it is a whole solution (MCTSr: a child rewrites its parent, it does not
    continue it)."""
    if trace.nodes(record)[leaf].get("kind") == trace.KIND_WHOLE:
        return [leaf]
    return trace.path(record, leaf)[1:]


# ---------------------------------------------------------------- SFT

def sft_records(record: dict, run: str = "", cfg: ExportConfig | None = None) -> list[dict]:
    cfg = cfg or ExportConfig()
    ns = trace.nodes(record)
    cq = clean_q(record)
    traces = []
    for leaf in trace.correct_endings(record):
        ids = solution_steps(record, leaf)
        if any(trace.is_failed(ns[i]) for i in ids):
            continue
        qs = [cq[i] for i in ids]
        if any(q is None for q in qs):
            continue
        traces.append((sum(qs) / len(qs), min(qs), leaf, ids))
    traces.sort(key=lambda t: (-t[0], -t[1], t[2]))
    out = []
    for mean_q, min_q, leaf, ids in traces[:cfg.sft_per_problem]:
        steps = [ns[i] for i in ids]
        out.append({
            **_base(record, run, ids),
            "question": record.get("question"),
            "prompt": scored_prompt(record, ids[0]),
            "completion": "".join(trace.shown(s) for s in steps),
            "steps": [{"text": s.get("text", ""), "shown": trace.shown(s)} for s in steps],
            "answer": ns[leaf].get("answer"),
            "mean_q": mean_q, "min_q": min_q,
        })
    return out


# ---------------------------------------------------------------- PPM pairs

def ppm_pairs(record: dict, run: str = "", cfg: ExportConfig | None = None) -> list[dict]:
    """Step pairs, then whole-solution pairs (see the module docstring)."""
    return step_pairs(record, run, cfg) + solution_pairs(record, run, cfg)


def step_pairs(record: dict, run: str = "", cfg: ExportConfig | None = None) -> list[dict]:
    cfg = cfg or ExportConfig()
    ns = trace.nodes(record)
    kids = trace.children(record)
    out_of = clean_outcomes(record)
    cq = clean_q(record)
    pairs = []
    for parent in range(len(ns)):
        if not (out_of[parent].correct and out_of[parent].wrong) or len(kids[parent]) < 2:
            continue
        scored = [c for c in kids[parent] if cq[c] is not None and _visits(ns[c]) >= cfg.min_visits]
        pos = [c for c in scored if out_of[c].correct]
        neg = [c for c in scored if out_of[c].wrong and not out_of[c].correct]
        if not pos or not neg:
            continue
        pos.sort(key=lambda c: (-cq[c], c))
        neg.sort(key=lambda c: (cq[c], c))
        pos = pos[:cfg.per_side * (2 if len(neg) == 1 else 1)]
        neg = neg[:cfg.per_side * (2 if len(pos) == 1 else 1)]
        here = []
        for c in pos:
            for r in neg:
                margin = cq[c] - cq[r]
                a, b = trace.shown(ns[c]), trace.shown(ns[r])
                if margin < cfg.min_margin or edit_distance(a, b) < cfg.min_edit:
                    continue
                here.append((c, r, margin, a, b))
        prompt = scored_prompt(record, kids[parent][0]) if here else ""
        for c, r, margin, a, b in here:
            pairs.append({
                **_base(record, run, [parent, c, r]),
                "kind": "step",
                "question": record.get("question"),
                "prompt": prompt, "chosen": a, "rejected": b,
                "q_chosen": cq[c], "q_rejected": cq[r], "margin": margin,
                "weight": 1.0 / len(here),
                "final": trace.is_answer(ns[c]) and trace.is_answer(ns[r]),
            })
    return pairs


def solution_pairs(record: dict, run: str = "", cfg: ExportConfig | None = None) -> list[dict]:
    """The ``per_side`` correct finished solutions with the highest mean Q against the ``per_side``
    wrong ones with the lowest mean Q; ``nodes`` = [root, chosen ending, rejected ending]."""
    cfg = cfg or ExportConfig()
    ns = trace.nodes(record)
    cq = clean_q(record)
    good, bad = [], []
    for n in ns[1:]:
        if not trace.is_answer(n) or not isinstance(n.get("correct"), bool):
            continue
        ids = solution_steps(record, n["id"])
        qs = [cq[i] for i in ids]
        if any(q is None for q in qs) or _visits(n) < cfg.min_visits:
            continue
        (good if n["correct"] else bad).append((sum(qs) / len(qs), n["id"], ids))
    if not good or not bad:
        return []
    good.sort(key=lambda t: (-t[0], t[1]))
    bad.sort(key=lambda t: (t[0], t[1]))
    here = []
    for mc, c, cids in good[:cfg.per_side]:
        a = "".join(trace.shown(ns[i]) for i in cids)
        for mr, r, rids in bad[:cfg.per_side]:
            b = "".join(trace.shown(ns[i]) for i in rids)
            if edit_distance(a, b) < cfg.min_edit:
                continue
            here.append((c, r, mc, mr, a, b))
    prompt = scored_prompt(record, good[0][2][0]) if here else ""
    return [{
        **_base(record, run, [0, c, r]),
        "kind": "solution",
        "question": record.get("question"),
        "prompt": prompt, "chosen": a, "rejected": b,
        "q_chosen": mc, "q_rejected": mr, "margin": mc - mr,
        "weight": 1.0 / len(here),
        "final": True,
    } for c, r, mc, mr, a, b in here]


# ---------------------------------------------------------------- Step-DPO

def step_dpo_pairs(record: dict, run: str = "", cfg: ExportConfig | None = None) -> list[dict]:
    ns = trace.nodes(record)
    kids = trace.children(record)
    out_of = trace.outcomes(record)
    pairs = []
    for parent in range(len(ns)):
        if not out_of[parent].correct:
            continue
        good = [c for c in kids[parent] if out_of[c].correct]
        bad = [c for c in kids[parent]
               if not out_of[c].correct and (trace.is_failed(ns[c]) or out_of[c].wrong)]
        if not good or not bad:
            continue
        best = min(good, key=lambda c: (-(_q(ns[c]) if _q(ns[c]) is not None else -2.0), c))
        prompt = trace.node_prompt(record, best)
        steps = [ns[i].get("text", "") for i in trace.path(record, parent)[1:]]
        for r in bad:
            pairs.append({
                **_base(record, run, [parent, best, r]),
                "question": record.get("question"),
                "prompt": prompt,
                "initial_reason_steps": "".join(steps),
                "chosen": ns[best].get("text", ""), "rejected": ns[r].get("text", ""),
                "rejected_reason": "failed" if trace.is_failed(ns[r]) else "wrong",
                "q_chosen": _q(ns[best]), "q_rejected": _q(ns[r]),
            })
    return pairs


# ---------------------------------------------------------------- values

def value_records(record: dict, run: str = "", cfg: ExportConfig | None = None) -> list[dict]:
    cfg = cfg or ExportConfig()
    ns = trace.nodes(record)
    cq = clean_q(record)
    out = []
    for n in ns[1:]:
        q = cq[n["id"]]
        if q is None or _visits(n) < cfg.min_visits:
            continue
        out.append({
            **_base(record, run, [n["id"]]),
            "question": record.get("question"),
            "prompt": scored_prompt(record, n["id"]),
            "completion": trace.shown(n),
            "q": q, "visits": n.get("visits"), "depth": n.get("depth"),
        })
    return out


EXPORTERS = {"sft": sft_records, "ppm_pairs": ppm_pairs, "step_dpo": step_dpo_pairs, "values": value_records}


# ---------------------------------------------------------------- run -> files

def export_run(run_dir: str | Path, out_dir: str | Path, cfg: ExportConfig | None = None,
               progress: bool = False) -> dict:
    """Export every problem of ``run_dir`` into ``out_dir/{sft,ppm_pairs,step_dpo,values}.jsonl``.

    Files are written to temporaries and renamed only when the whole export succeeded, so an
    error leaves no half-written file. Returns counts per kind and per problem total.
    """
    cfg = cfg or ExportConfig()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir)
    records = list(trace.iter_results(run_dir))  # errors (missing dir, bad schema) before any file is opened
    if not records:
        raise DataError(f"{run_dir / 'results.jsonl'}: no finished problems to export")
    if not any(trace.correct_endings(rec) for _, rec in records):
        raise DataError(f"{run_dir}: no correct solution anywhere in {len(records)} searched problem(s): "
                        f"nothing to learn from; search with gold answers (`rstar run --reward gold`) "
                        f"or more rollouts")
    run_name = str(run_dir.resolve())
    out_dir.mkdir(parents=True, exist_ok=True)
    tmps = {k: tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out_dir, prefix=f".{k}.",
                                           suffix=".tmp", delete=False) for k in KINDS}
    counts = {k: 0 for k in KINDS}
    solved = 0
    cut = 0
    pair_kinds = {"step": 0, "solution": 0}
    try:
        it = records
        if progress:
            from tqdm import tqdm

            it = tqdm(records, desc="export", unit="problem")
        for where, rec in it:
            if trace.correct_endings(rec):
                solved += 1
            cut += len(cut_steps(rec))
            for k in KINDS:
                try:
                    rows = EXPORTERS[k](rec, run_name, cfg)
                except DataError as exc:
                    raise DataError(f"{where}: {exc}") from None
                for row in rows:
                    tmps[k].write(json.dumps(row, ensure_ascii=False) + "\n")
                    if k == "ppm_pairs":
                        pair_kinds[row["kind"]] += 1
                counts[k] += len(rows)
        for k, fh in tmps.items():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        for k, fh in tmps.items():
            os.replace(fh.name, out_dir / f"{k}.jsonl")
    except BaseException:
        for fh in tmps.values():
            fh.close()
            Path(fh.name).unlink(missing_ok=True)
        raise
    summary = {"run": run_name, "problems": len(records), "solved": solved, **counts,
               "step_pairs": pair_kinds["step"], "solution_pairs": pair_kinds["solution"],
               "cut_steps": cut}
    tmp = out_dir / ".export.json.tmp"
    tmp.write_text(json.dumps({**summary, "config": cfg.__dict__}, indent=1) + "\n")
    os.replace(tmp, out_dir / "export.json")
    return summary


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="turn a run's search trees into training data (SFT, PPM pairs, Step-DPO, values)",
        description="Read RUN_DIR/results.jsonl (written by `rstar run`, ideally with --reward gold) and write "
                    "OUT/sft.jsonl (top correct traces per problem), OUT/ppm_pairs.jsonl (rStar-Math's process "
                    "preference pairs: sibling steps, kind 'step', and whole solutions, kind 'solution'; steps the "
                    "search cut before scoring them are left out and counted), OUT/step_dpo.jsonl (first-wrong-step pairs found in the trees), "
                    "OUT/values.jsonl (every visited step with its Q) and OUT/export.json (counts). Every record "
                    "names its run, problem and node ids. Nothing is written unless the whole export succeeds.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory of a search run (holds results.jsonl)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--min-margin", type=float, default=0.5, help="PPM pairs: smallest Q margin kept (default 0.5)")
    p.add_argument("--min-edit", type=int, default=20,
                   help="PPM pairs: smallest edit distance between chosen and rejected steps (default 20)")
    p.add_argument("--per-side", type=int, default=2, help="PPM pairs: children chosen/rejected per node (default 2)")
    p.add_argument("--sft-per-problem", type=int, default=2, help="SFT: correct traces per problem (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    cfg = ExportConfig(min_margin=args.min_margin, min_edit=args.min_edit, per_side=args.per_side,
                       sft_per_problem=args.sft_per_problem)
    s = export_run(args.run_dir, args.out, cfg, progress=not args.no_progress)
    print(f"{s['problems']} problems ({s['solved']} with a correct solution) -> {args.out}: "
          f"{s['sft']} SFT traces, {s['ppm_pairs']} PPM pairs ({s['step_pairs']} step, "
          f"{s['solution_pairs']} solution), {s['step_dpo']} Step-DPO pairs, {s['values']} value targets; "
          f"{s['cut_steps']} cut steps left out of PPM pairs and values")
    return 0
