"""`rstar train dpo` (Step-DPO) on the tiny SmolLM2-135M GGUF: no end-of-sequence token after a
step in the data the trainer really uses, the reference model, Step-DPO's defaults, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import need_module, need_smol

need_module("trl")
need_module("peft")

from rstar.errors import DataError  # noqa: E402
from rstar.train.dpo import DPOSettings, build_dpo_dataset, build_trainer, tokenize_pair, train_dpo  # noqa: E402

SMOL = need_smol()

PROMPT = ("<|im_start|>user\nTom has 3 apples and buys 4 more. How many?<|im_end|>\n<|im_start|>assistant\n"
          "```python\n# Step 1: apples at the start\nstart = 3\n# Step")
CHOSEN = " 2: add the apples he buys\ntotal = start + 4\n# Step"
REJECTED = " 2: subtract the apples he buys\ntotal = start - 4\n# Step"


@pytest.fixture(scope="module")
def tok():
    from rstar.basemodel import load_tokenizer

    return load_tokenizer(str(SMOL))


def write_pairs(path, n=4):
    rows = [{"prompt": PROMPT.replace("3 apples", f"{k} apples"), "chosen": CHOSEN, "rejected": REJECTED}
            for k in range(3, 3 + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pair_tokenized_without_eos(tok):
    ex = tokenize_pair({"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}, tok)
    whole_c = tok(PROMPT + CHOSEN, add_special_tokens=False)["input_ids"]
    whole_r = tok(PROMPT + REJECTED, add_special_tokens=False)["input_ids"]
    assert ex["prompt_ids"] + ex["chosen_ids"] == whole_c  # exactly the text, nothing appended
    assert ex["prompt_ids"] + ex["rejected_ids"] == whole_r
    assert tok.eos_token_id not in ex["chosen_ids"] + ex["rejected_ids"]
    assert tok.decode(ex["chosen_ids"]).endswith("# Step") and tok.decode(ex["rejected_ids"]).endswith("# Step")
    assert "start + 4" in tok.decode(ex["chosen_ids"]) and "start - 4" in tok.decode(ex["rejected_ids"])
    assert tok.decode(ex["prompt_ids"]) in PROMPT


def test_trainer_data_and_batches_have_no_eos_and_step_dpo_defaults(tmp_path, tok):
    from rstar.adapters import load_dense_base as load_base
    from rstar.adapters import lora_config

    pairs, dropped = build_dpo_dataset(write_pairs(tmp_path / "d.jsonl"), tok)
    assert dropped == 0 and len(pairs) == 4
    model, tok2 = load_base(str(SMOL))
    s = DPOSettings(data="-", out=str(tmp_path / "o"), base=str(SMOL), no_progress=True)
    trainer = build_trainer(s, model, tok2, lora_config(model, r=4), pairs)
    assert trainer.args.beta == 0.4 and trainer.args.learning_rate == 5e-7
    assert getattr(trainer.args.lr_scheduler_type, "value", trainer.args.lr_scheduler_type) == "cosine" and trainer.args.warmup_steps == 0.1
    row = trainer.train_dataset[0]
    assert row["chosen_ids"] == pairs[0]["chosen_ids"] and row["chosen_ids"][-1] != tok.eos_token_id
    assert row["rejected_ids"][-1] != tok.eos_token_id
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for i in range(ids.shape[0]):
        last = int(mask[i].nonzero().max())
        seq = ids[i, : last + 1].tolist()
        assert seq[-1] != tok.eos_token_id and tok.decode(seq).endswith("# Step")
    assert trainer.ref_model is None  # peft: the reference is the adapter-disabled base


def test_training_moves_toward_the_chosen_step(tmp_path):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    log = train_dpo(DPOSettings(data=str(data), out=str(out), base=str(SMOL), max_steps=4, batch_size=2,
                                lr=2e-3, beta=0.4, lora_r=4, save_steps=10, no_progress=True))
    # step 1: the fresh adapter is zero, so policy == reference and the DPO loss is log 2
    assert abs(log["losses"][0][1] - 0.6931) < 1e-3
    assert log["losses"][-1][1] < 0.6931 and log["reward_margin"] > 0
    card = json.loads((out / "rstar_model.json").read_text())
    assert card["trainer"] == "dpo" and (out / card["adapter_gguf"]).is_file()


def test_bad_input(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": PROMPT, "chosen": CHOSEN}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'rejected'"):
        build_dpo_dataset(f, tok)
    f.write_text(json.dumps({"prompt": PROMPT, "chosen": CHOSEN, "rejected": CHOSEN}) + "\n")
    with pytest.raises(DataError, match="identical or empty"):
        build_dpo_dataset(f, tok)
    f.write_text("")
    with pytest.raises(DataError, match="no preference pairs"):
        build_dpo_dataset(f, tok)
    r = subprocess.run([sys.executable, "-m", "rstar.cli", "train", "dpo", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--beta" in r.stdout and "0.4" in r.stdout
