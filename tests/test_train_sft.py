"""`rstar train sft` on the tiny SmolLM2-135M GGUF (transformers dequantizes it): masking of the
prompt and of the sandbox output blocks on hand-built records, bad input, training, resume
after a kill, and a diverging run stopped with the last good checkpoint kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import need_module, need_smol, spawn, tail, write_data

need_module("trl")
need_module("peft")

from rstar.errors import DataError, RstarError  # noqa: E402
from rstar.templates import get_template  # noqa: E402
from rstar.train.sft import (  # noqa: E402
    SFTSettings,
    TrainingDiverged,
    build_sft_dataset,
    output_block_spans,
    tokenize_sft,
    train_sft,
)

SMOL = need_smol()

PROMPT = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n<code>\n"
RSTAR = get_template("rstar")
STEP1 = "# Step 1: add the numbers\ns = 2 + 3\n<end_of_step>"
STEP2 = "# Step 2: print it\nprint(s)\n<end_of_code>"
ANSWER = "The sum is \\boxed{5}.<end_of_answer>"
BLOCK = RSTAR.output_block("5")  # the sandbox's output, shown back to the model
COMPLETION = STEP1 + STEP2 + BLOCK + ANSWER


@pytest.fixture(scope="module")
def tok():
    from rstar.basemodel import load_tokenizer

    return load_tokenizer(str(SMOL))


def trained_text(tok, ex) -> str:
    return "".join(tok.decode([t]) for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100)


def masked_text(tok, ex) -> str:
    return "".join(tok.decode([t]) for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == -100)


def test_output_block_found_with_the_template():
    spans = output_block_spans(COMPLETION, RSTAR)
    start = COMPLETION.index(BLOCK)
    assert spans == [(start, start + len(BLOCK))]
    assert output_block_spans(COMPLETION, get_template("default")) == []  # default shows no output back


def test_masking_prompt_and_output_block(tok):
    ex = tokenize_sft({"prompt": PROMPT, "completion": COMPLETION}, tok, RSTAR)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels)
    assert ids == tok(PROMPT + COMPLETION, add_special_tokens=False)["input_ids"]  # one string, nothing added
    assert ids[-1] != tok.eos_token_id and tok.eos_token_id not in [t for t, lab in zip(ids, labels) if lab != -100]
    trained = trained_text(tok, ex)
    # the model's own steps and answer are trained ...
    for part in ("s = 2 + 3", "<end_of_step>", "print(s)", "<end_of_code>", "\\boxed{5}", "<end_of_answer>"):
        assert part in trained
    # ... the prompt and the output block are not (tokens straddling a boundary stay masked)
    assert "What is 2 + 3" not in trained and "<|im_start|>" not in trained
    assert "<output>" not in trained and "<end_of_output>" not in trained
    masked = masked_text(tok, ex)
    assert "<output>" in masked and "<end_of_output>" in masked and "What is 2 + 3" in masked
    # every trained token lies wholly inside the model-written text
    enc = tok(PROMPT + COMPLETION, add_special_tokens=False, return_offsets_mapping=True)
    p = len(PROMPT)
    b0 = p + COMPLETION.index(BLOCK)
    b1 = b0 + len(BLOCK)
    for (s, e), lab in zip(enc["offset_mapping"], labels):
        if lab != -100:
            assert s >= p and (e <= b0 or s >= b1)


def test_explicit_mask_spans_and_exported_steps_win(tok):
    # mask_spans given: exactly those characters are masked, whatever the template finds
    s0 = COMPLETION.index("print(s)")
    ex = tokenize_sft({"prompt": PROMPT, "completion": COMPLETION, "mask_spans": [[s0, s0 + len("print(s)")]]},
                      tok, RSTAR)
    assert "print(s)" not in trained_text(tok, ex) and "<end_of_output>" in trained_text(tok, ex)
    # rstar export's steps list: shown = text + what the search showed back
    steps = [{"text": STEP1, "shown": STEP1}, {"text": STEP2, "shown": STEP2 + BLOCK},
             {"text": ANSWER, "shown": ANSWER}]
    ex2 = tokenize_sft({"prompt": PROMPT, "completion": COMPLETION, "steps": steps}, tok, None)
    assert ex2 == tokenize_sft({"prompt": PROMPT, "completion": COMPLETION}, tok, RSTAR)


def test_bad_input_names_file_and_line(tmp_path, tok):
    f = tmp_path / "sft.jsonl"
    f.write_text(json.dumps({"prompt": PROMPT, "completion": COMPLETION}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"sft.jsonl:2: not (valid )?JSON"):
        build_sft_dataset(f, tok, RSTAR)
    f.write_text(json.dumps({"prompt": PROMPT}) + "\n")
    with pytest.raises(DataError, match=r"sft.jsonl:1: field 'completion'"):
        build_sft_dataset(f, tok, RSTAR)
    f.write_text(json.dumps({"prompt": PROMPT, "completion": "abc", "mask_spans": [[0, 9]]}) + "\n")
    with pytest.raises(DataError, match=r"sft.jsonl:1: mask_spans entry \[0, 9\]"):
        build_sft_dataset(f, tok, RSTAR)
    f.write_text("")
    with pytest.raises(DataError, match="no SFT records.*solved no problem"):
        build_sft_dataset(f, tok, RSTAR)


def sft_rows(n: int = 4) -> list[dict]:
    return [{"prompt": PROMPT.replace("2 + 3", f"2 + {k}"),
             "completion": COMPLETION.replace("2 + 3", f"2 + {k}")} for k in range(n)]


def test_train_writes_policy_and_log(tmp_path):
    data = write_data(tmp_path / "sft.jsonl", sft_rows())
    out = tmp_path / "out"
    log = train_sft(SFTSettings(data=str(data), out=str(out), base=str(SMOL), template="rstar", max_steps=3,
                                batch_size=2, grad_accum=1, lr=1e-3, lora_r=4, lora_alpha=8, save_steps=2,
                                no_progress=True))
    assert log["steps"] == 3 and log["examples"] == 4 and log["tokens_per_s"] > 0
    assert len(log["losses"]) == 3 and all(v > 0 for _, v in log["losses"])
    card = json.loads((out / "rstar_model.json").read_text())
    assert card["kind"] == "lora" and card["adapter_gguf"] == "adapter.gguf" and card["base"] == str(SMOL)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter.gguf").stat().st_size > 0
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert not any(t in ("lm_head", "embed_tokens") for t in cfg["target_modules"])
    assert json.loads((out / "train_log.json").read_text())["steps"] == 3
    # a second run into the same directory refuses to overwrite the checkpoints
    with pytest.raises(RstarError, match="--resume"):
        train_sft(SFTSettings(data=str(data), out=str(out), base=str(SMOL), max_steps=3, no_progress=True))


def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    data = write_data(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rstar.cli", "train", "sft", str(data), "--out", str(out), "--base", str(SMOL),
           "--template", "rstar", "--max-steps", "40", "--save-steps", "2", "--batch-size", "1",
           "--grad-accum", "1", "--lora-r", "4", "--no-progress"]
    proc = spawn(cmd, tmp_path / "train.log", start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
            assert proc.poll() is None, tail(tmp_path / "train.log")
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "rstar_model.json").exists()  # it did not finish
    done = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())
    assert done and done[-1] < 40
    # keep only complete checkpoints (a kill can land in the middle of writing one)
    for p in (out / "checkpoints").glob("checkpoint-*"):
        if not (p / "trainer_state.json").is_file():
            import shutil

            shutil.rmtree(p)
    log = train_sft(SFTSettings(data=str(data), out=str(out), base=str(SMOL), template="rstar",
                                max_steps=done[-1] + 2, save_steps=2, batch_size=1, grad_accum=1, lora_r=4,
                                resume=True, no_progress=True))
    assert log["steps"] == done[-1] + 2
    assert [s for s, _ in log["losses"]] == [done[-1] + 1, done[-1] + 2]  # only the remaining steps ran
    assert (out / "rstar_model.json").is_file()


def test_divergence_stops_and_saves_nothing_after_it(tmp_path):
    data = write_data(tmp_path / "sft.jsonl", sft_rows())
    out = tmp_path / "out"
    # an infinite learning rate poisons the weights at the first update
    with pytest.raises(TrainingDiverged, match=r"diverged at step 1 \((loss|grad_norm|weights) = (nan|inf)") as info:
        train_sft(SFTSettings(data=str(data), out=str(out), base=str(SMOL), template="rstar", max_steps=4,
                              batch_size=2, grad_accum=1, lr=float("inf"), save_steps=1, lora_r=4,
                              no_progress=True))
    assert "no checkpoint was written before it" in str(info.value) and "--lr" in str(info.value)
    assert not list((out / "checkpoints").glob("checkpoint-*"))  # the poisoned step was not saved
    assert not (out / "rstar_model.json").exists()


def test_cli_help_and_empty_data(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rstar.cli", "train", "sft", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "output blocks are masked" in r.stdout.replace("\n", " ").replace("  ", " ")
    empty = tmp_path / "sft.jsonl"
    empty.write_text("")
    r = subprocess.run([sys.executable, "-m", "rstar.cli", "train", "sft", str(empty), "--out", str(tmp_path / "o"),
                        "--base", str(SMOL)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "no SFT records" in r.stderr and "Traceback" not in r.stderr


def test_precision_choices():
    from rstar.train.base import cpu_training_args, fast_bf16, use_bf16

    assert use_bf16("bf16") is True and use_bf16("fp32") is False and use_bf16("auto") is fast_bf16()
    assert cpu_training_args("bf16")["bf16"] is True and cpu_training_args("fp32")["bf16"] is False
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        use_bf16("fp16")
    r = subprocess.run([sys.executable, "-m", "rstar.cli", "train", "sft", "x.jsonl", "--out", "o",
                        "--precision", "fp16"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'fp16'" in r.stderr


def test_bf16_training_autocasts_and_keeps_a_float32_adapter(tmp_path):
    """--precision bf16: the trainer runs with bf16 autocast (its saved arguments say so), the
    adapter it writes is float32, and its losses on the same batches track float32's."""
    import torch
    from safetensors import safe_open

    data = write_data(tmp_path / "sft.jsonl", sft_rows())
    logs = {}
    for prec in ("fp32", "bf16"):
        logs[prec] = train_sft(SFTSettings(data=str(data), out=str(tmp_path / prec), base=str(SMOL),
                                           template="rstar", max_steps=2, batch_size=2, grad_accum=1, lr=1e-3,
                                           lora_r=4, lora_alpha=8, save_steps=2, no_progress=True, precision=prec))
        args = torch.load(tmp_path / prec / "checkpoints" / "checkpoint-2" / "training_args.bin", weights_only=False)
        assert args.bf16 is (prec == "bf16")
    with safe_open(str(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    f32, b16 = [v for _, v in logs["fp32"]["losses"]], [v for _, v in logs["bf16"]["losses"]]
    assert len(f32) == len(b16) == 2
    # same weights, same batches: bf16 matmuls move the first loss by rounding only
    assert b16[0] == pytest.approx(f32[0], rel=0.05) and b16[0] != f32[0]


def test_cli_defaults_take_an_optimizer_step_of_four_examples_one_at_a_time(tmp_path):
    """`rstar train sft` without batch flags: 4 examples an optimizer step, one per forward/backward
    pass (four at once, padded, took all 24 GiB with the built-in 1.5B model on a CPU)."""
    import torch

    data = write_data(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "rstar.cli", "train", "sft", str(data), "--out", str(out), "--base",
                    str(SMOL), "--template", "rstar", "--max-steps", "1", "--save-steps", "1", "--lora-r", "4",
                    "--no-progress"], check=True, capture_output=True, timeout=900)
    args = torch.load(out / "checkpoints" / "checkpoint-1" / "training_args.bin", weights_only=False)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 4)
    state = json.loads((out / "checkpoints" / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and state["epoch"] == pytest.approx(0.5)  # 4 of the 8 examples
