"""transformers backend on a tiny random-init Llama saved to a temp dir (real from_pretrained path).

The model's weights are random (its text is gibberish), which is enough to check what the
backend itself does: batching with left padding, n samples, seeds, stop strings detected and
cut, token counts, and summed log-probabilities against an independent forward pass.
"""

from __future__ import annotations

import pytest

from conftest import need_module

torch = need_module("torch")
transformers = need_module("transformers")
need_module("tokenizers")

from rstar.policy import CHATML_TEMPLATE, load_policy  # noqa: E402
from rstar.policy.hf import HFPolicy  # noqa: E402

CORPUS = [
    "x = 12\nprint(x * 3)\n", "The answer is 42.", "def f(a, b):\n    return a + b\n",
    "import sympy as sp\nsp.solve(x**2 - 4, x)\n", "total = sum(range(10))\nprint(total)\n",
] * 20


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("tiny_llama")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                               pad_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id, bos_token_id=None)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def policy(tiny_dir):
    p = load_policy(str(tiny_dir), n_threads=2)  # a local HF dir -> transformers
    yield p
    p.close()


def test_loads_as_hf_policy_and_formats_chat(policy):
    assert isinstance(policy, HFPolicy)
    s = policy.format_chat([{"role": "user", "content": "What is 2+2?"}])
    assert s == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_n_samples_batched_and_seeded(policy):
    prompts = ["x = 12\n", "The answer", "def f(a, b):\n    return"]  # different lengths: left padding
    out = policy.generate(prompts, n=3, max_tokens=12, temperature=1.0, seed=5)
    assert [len(r) for r in out] == [3, 3, 3]
    for row in out:
        for c in row:
            assert c.finish_reason in ("length", "eos")
            assert 1 <= c.num_tokens <= 12
            assert c.logprob_sum is not None and c.logprob_sum < 0
    again = policy.generate(prompts, n=3, max_tokens=12, temperature=1.0, seed=5)
    assert [[c.text for c in r] for r in again] == [[c.text for c in r] for r in out]
    texts = {c.text for r in out for c in r}
    assert len(texts) > 3  # samples differ


def test_greedy_is_deterministic_and_copied_n_times(policy):
    [[a, b]] = policy.generate(["total = "], n=2, max_tokens=10, temperature=0)
    assert a == b
    [[c]] = policy.generate(["total = "], n=1, max_tokens=10, temperature=0)
    assert c == a


def test_stop_string_detected_and_cut(policy):
    [[full]] = policy.generate(["import sympy"], n=1, max_tokens=30, temperature=0)
    text = full.text
    assert len(text) >= 6, text
    # a stop string taken from the middle of the greedy text: greedy again must stop there
    start = len(text) // 2
    stop = text[start:start + 3]
    cut = text.find(stop)
    [[c]] = policy.generate(["import sympy"], n=1, max_tokens=30, temperature=0, stop=["@@never@@", stop])
    assert c.stop == stop and c.finish_reason == "stop"
    assert c.text == text[:cut]
    assert c.num_tokens <= full.num_tokens


def test_logprob_sum_matches_a_forward_pass(policy):
    prompt = "print("
    [[c]] = policy.generate([prompt], n=1, max_tokens=8, temperature=0)
    tok, model = policy.tokenizer, policy.model
    ids = tok(prompt)["input_ids"]
    with torch.inference_mode():  # the same greedy tokens, straight from transformers
        seq = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)[0].tolist()
        gen = seq[len(ids):len(ids) + c.num_tokens]
        assert tok.decode(gen, skip_special_tokens=True).startswith(c.text)
        logits = model(torch.tensor([seq[:len(ids) + len(gen)]])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    expected = sum(float(lp[len(ids) - 1 + k, t]) for k, t in enumerate(gen))
    assert c.logprob_sum == pytest.approx(expected, abs=1e-3)
