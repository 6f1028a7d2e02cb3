"""Trained policies in every backend (SmolLM2-135M GGUF as the base): a LoRA trained by
`rstar train sft` changes the model's output, llama.cpp (GGUF adapter on the quantized base)
and transformers (peft adapter / merged directory) agree on its greedy tokens, the card maps
to load_policy specs, and adapters llama.cpp cannot apply are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import need_module, need_smol

need_module("trl")
need_module("peft")
llama_cpp = need_module("llama_cpp")

from rstar.adapters import (  # noqa: E402
    AdapterError,
    load_trained_hf,
    lora_to_gguf,
    merge_adapter,
    trained_policy_spec,
)
from rstar.errors import ModelUnavailable  # noqa: E402
from rstar.train.sft import SFTSettings, train_sft  # noqa: E402

SMOL = need_smol()

PROMPT = "<|im_start|>user\nWhat is the secret word?<|im_end|>\n<|im_start|>assistant\n"
TAUGHT = "The secret word is zanzibar-quokka, spelled z-a-n-z-i-b-a-r."
N_NEW = 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SmolLM2 + a LoRA (all block linears) taught one answer by a few SFT steps."""
    d = tmp_path_factory.mktemp("adapter")
    data = d / "sft.jsonl"
    data.write_text(json.dumps({"prompt": PROMPT, "completion": TAUGHT}) + "\n")
    out = d / "out"
    train_sft(SFTSettings(data=str(data), out=str(out), base=str(SMOL), max_steps=30, batch_size=1, grad_accum=1,
                          lr=3e-3, lora_r=8, lora_alpha=16, save_steps=100, no_progress=True))
    return out


def no_amx():
    """llama.cpp's AMX weight buffers crash on multi-token batches of SmolLM2's Q4_1 (see rstar.ppm)."""
    from rstar.ppm import _no_amx_buffers

    return _no_amx_buffers(llama_cpp)


def llama_greedy(lora: Path | None) -> tuple[list[int], list[int]]:
    kw = {"lora_path": str(lora)} if lora else {}
    with no_amx():
        llm = llama_cpp.Llama(model_path=str(SMOL), n_ctx=256, n_threads=2, verbose=False, **kw)
    try:
        prompt_ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
        out = []
        for t in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
            out.append(int(t))
            if len(out) == N_NEW or t == llm.token_eos():
                break
        return prompt_ids, out
    finally:
        llm.close()


def hf_greedy(model, tok) -> tuple[list[int], list[int]]:
    import torch

    ids = tok(PROMPT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=N_NEW,
                             pad_token_id=tok.pad_token_id)
    return ids[0].tolist(), gen[0, ids.shape[1]:].tolist()


def test_gguf_adapter_file(trained):
    import gguf

    r = gguf.GGUFReader(str(trained / "adapter.gguf"))
    assert r.get_field("general.type").contents() == "adapter"
    assert r.get_field("adapter.type").contents() == "lora"
    assert r.get_field("adapter.lora.alpha").contents() == 16.0
    assert r.get_field("general.architecture").contents() == "llama"
    names = {t.name for t in r.tensors}
    cfg = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    n_layers = 30  # SmolLM2-135M
    assert len(names) == 2 * n_layers * len(cfg["target_modules"])
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.29.ffn_down.weight.lora_b"} <= names
    assert not any(n.startswith(("token_embd", "output")) for n in names)


def test_adapter_changes_output_and_backends_agree(trained):
    base_prompt, base_out = llama_greedy(None)
    prompt, with_lora = llama_greedy(trained / "adapter.gguf")
    assert with_lora != base_out  # the adapter is applied on the quantized base
    model, tok = load_trained_hf(trained)
    hf_prompt, hf_out = hf_greedy(model, tok)
    assert hf_prompt == prompt == base_prompt
    assert tok.decode(hf_out).startswith("The secret word is")  # it learned what it was taught
    assert with_lora == hf_out  # llama.cpp (GGUF LoRA on Q4 base) == transformers (peft, dequantized base)


def test_load_policy_through_the_card(trained):
    spec, opts = trained_policy_spec(trained)
    assert spec == f"llamacpp:{SMOL}" and opts == {"lora_path": str(trained / "adapter.gguf")}
    with pytest.raises(ModelUnavailable, match="--merge"):
        trained_policy_spec(trained, backend="vllm")
    with pytest.raises(ModelUnavailable, match="no rstar_model.json"):
        trained_policy_spec(trained / "adapter")
    from rstar.policy import load_policy

    with no_amx():
        policy = load_policy(str(trained), options={"n_ctx": 256, "n_threads": 2})
    try:
        out = policy.generate([PROMPT], n=1, max_tokens=N_NEW, temperature=0.0)[0][0]
    finally:
        policy.close()
    assert out.text.startswith("The secret word is")


def test_merged_directory_loads_as_plain_transformers_model(trained, tmp_path):
    import transformers

    merged = merge_adapter(str(SMOL), trained / "adapter", tmp_path / "merged")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(merged))
    tok = transformers.AutoTokenizer.from_pretrained(str(merged))
    model_p, tok_p = load_trained_hf(trained)
    assert hf_greedy(model, tok) == hf_greedy(model_p, tok_p)
    card = json.loads((trained / "rstar_model.json").read_text())
    card["merged"] = str(merged)
    (tmp_path / "rstar_model.json").write_text(json.dumps(card))
    assert trained_policy_spec(tmp_path, backend="hf") == (f"hf:{merged}", {})
    assert trained_policy_spec(tmp_path, backend="vllm") == (f"vllm:{merged}", {})


def test_adapters_llamacpp_cannot_apply_are_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    from rstar.adapters import load_dense_base as load_base

    model, _ = load_base(str(SMOL))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    peft_model.save_pretrained(str(tmp_path / "bad"))
    with pytest.raises(AdapterError, match="output head"):
        lora_to_gguf(tmp_path / "bad", SMOL, tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()
    with pytest.raises(AdapterError, match="not a peft adapter"):
        lora_to_gguf(tmp_path, SMOL, tmp_path / "x.gguf")
