"""`rstar evolve --preset tiny --dpo` end to end on the SmolLM2-135M test model, with the real sandbox:
every stage (Step-DPO included) runs and its artifacts load, round 1's policy (the LoRA adapter) is what the
evaluation searches with, and a run killed in the search and again in training resumes
without redoing finished work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import need_module, need_smol, spawn, tail

need_module("trl")
need_module("peft")
need_module("llama_cpp")


SMOL = need_smol()

# Problems a 135M model can solve by sampling (it cannot do real math)
TRAIN = [("Add 4 and 4.", "8"), ("Add 5 and 2.", "7"), ("Add 3 and 6.", "9")]
EVAL = [("Add 2 and 2.", "4"), ("Add 6 and 1.", "7")]


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "question": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate(rows)))
    return path


def evolve_cmd(tmp: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "rstar.cli", "evolve", str(tmp / "train.jsonl"), "--out", str(out),
            "--rounds", "1", "--eval", str(tmp / "eval.jsonl"), "--preset", "tiny", "--model", str(SMOL),
            "--rollouts", "8", "--children", "3", "--max-steps", "6", "--dpo", "--no-progress"]


def run_until(cmd, condition, log: Path, timeout=900) -> str:
    """Start ``cmd``, SIGKILL it (its whole process group) once ``condition()`` holds."""
    proc = spawn(cmd, log, start_new_session=True, env={**os.environ, "RSTAR_THREADS": "2"})
    try:
        deadline = time.monotonic() + timeout  # a hang guard only (a loaded 2-core machine needs minutes)
        while not condition():
            if proc.poll() is not None:
                return "exited: " + tail(log)
            assert time.monotonic() < deadline, "the condition never held; its output ends:\n" + tail(log)
            time.sleep(0.2)
        return "killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def evolved(tmp_path_factory, sandbox_pool):
    tmp = tmp_path_factory.mktemp("evolve")
    write(tmp / "train.jsonl", TRAIN)
    write(tmp / "eval.jsonl", EVAL)
    out = tmp / "out"
    cmd = evolve_cmd(tmp, out)
    results = out / "round-0" / "search" / "results.jsonl"
    # 1. killed after the first problem of the search
    first = run_until(cmd, lambda: len(lines(results)) >= 1, tmp / "run1.log")
    assert first == "killed", first
    done_before = [r["id"] for r in lines(results)]
    # 2. killed in training, after its first checkpoint
    ckpt = out / "round-0" / "sft" / "checkpoints" / "checkpoint-1" / "trainer_state.json"
    second = run_until(cmd, ckpt.is_file, tmp / "run2.log")
    if "no correct solution" in second or "nothing to train" in second:
        pytest.fail("SmolLM2 solved none of the toy problems; the test needs at least one verified trace:\n" + second)
    # 3. to the end
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RSTAR_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "stdout": r.stdout, "stderr": r.stderr, "done_before": done_before, "second": second}


def test_every_stage_ran_and_resumed_without_redoing_work(evolved):
    out = evolved["out"]
    state = json.loads((out / "evolve.json").read_text())
    st = state["rounds"]["0"]
    assert st["export"]["counts"]["step_dpo"] >= 1, "no Step-DPO pairs: the DPO stage cannot be checked"
    assert {k: st[k]["status"] for k in ("search", "export", "sft", "dpo", "ppm", "eval")} == dict.fromkeys(
        ("search", "export", "sft", "dpo", "ppm", "eval"), "done")
    assert st["search"]["attempts"] == 2  # killed once inside it, resumed
    if evolved["second"] == "killed":
        assert st["sft"]["attempts"] == 2
        log = json.loads((out / "round-0" / "sft" / "train_log.json").read_text())
        assert log["losses"][0][0] > 1  # the resumed run started after its checkpoint
    ids = [r["id"] for r in lines(out / "round-0" / "search" / "results.jsonl")]
    assert sorted(ids) == ["p0", "p1", "p2"]  # every problem exactly once
    for pid in evolved["done_before"]:
        assert pid in ids
    # the first problem's result was not searched again: "resuming" was reported
    assert "resuming" in evolved["stderr"] or st["search"]["attempts"] == 2


def test_artifacts_load(evolved):
    out = evolved["out"] / "round-0"
    from rstar.adapters import trained_policy_spec
    from rstar.ppm import load_ppm_scorer

    assert json.loads((out / "search" / "run.json").read_text())["recipe"]["scorer"] == "gold"
    counts = json.loads((out / "data" / "export.json").read_text())
    assert counts["sft"] >= 1
    for stage in ("sft", "dpo"):  # Step-DPO trains the SFT adapter further; both load on the GGUF base
        spec, opts = trained_policy_spec(out / stage)
        assert spec == f"llamacpp:{SMOL}" and Path(opts["lora_path"]).is_file()
    scorer = load_ppm_scorer(out / "ppm")
    scorer.close()
    table = json.loads((evolved["out"] / "rounds.json").read_text())
    assert len(table) == 1 and table[0]["traces"] == counts["sft"]
    assert table[0]["eval_base"]["problems"] == 2 and table[0]["eval_new"]["problems"] == 2
    assert table[0]["sft_loss"] is not None and table[0]["time_s"]["search"] > 0
    assert (evolved["out"] / "rounds.png").stat().st_size > 1000
    assert "round" in evolved["stdout"] and "search acc%" in evolved["stdout"]


def test_round_one_searches_with_the_adapter(evolved):
    out = evolved["out"] / "round-0"
    recipe = json.loads((out / "eval" / "run.json").read_text())["recipe"]
    assert Path(recipe["model"]) == out / "dpo"  # policy_1 = SFT then Step-DPO (base + GGUF LoRA)
    assert recipe["scorer"] == f"ppm:{out / 'ppm'}"
    for r in lines(out / "eval" / "results.jsonl"):
        assert r["gold_rewards"] is False  # evaluation never rewards with the gold answer
    base = json.loads((out / "eval-base" / "run.json").read_text())["recipe"]
    assert base["model"] == str(SMOL) and base["scorer"] == "none"


def test_resume_with_other_settings_is_refused(evolved, tmp_path):
    cmd = evolve_cmd(evolved["out"].parent, evolved["out"])
    cmd[cmd.index("--rollouts") + 1] = "7"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "other settings" in r.stderr and "Traceback" not in r.stderr
