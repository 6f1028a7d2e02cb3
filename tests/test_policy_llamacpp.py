"""llama.cpp backend on the tiny SmolLM2-135M-Instruct GGUF (and one test on the built-in model).

SmolLM2-135M cannot do math; these tests check the backend: n samples, seeds, stop strings
detected and cut, EOS, token counts, log-probabilities, KV prefix reuse, the chat template.
"""

from __future__ import annotations

import os
import time

import pytest

from conftest import need_module, need_smol

llama_cpp = need_module("llama_cpp")

from rstar.policy import load_policy  # noqa: E402
from rstar.policy.llamacpp import LlamaCppPolicy  # noqa: E402


SMOL = need_smol()


@pytest.fixture(scope="module")
def policy():
    # the sequential backend (engine=sequential); the batched default engine has its own tests
    # (test_policy_llamacpp_batch.py): its greedy text can change on a near-tie when a prompt's
    # prefix comes from its KV cache instead of a fresh prefill
    p = load_policy(str(SMOL), options={"engine": "sequential"}, n_ctx=1024, n_threads=2)
    yield p
    p.close()


def chat(policy, text):
    return policy.format_chat([{"role": "user", "content": text}])


def test_loads_and_formats_chat_from_gguf_template(policy):
    assert isinstance(policy, LlamaCppPolicy)
    assert policy.name == SMOL.name
    s = chat(policy, "What is 2+2?")
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in s  # SmolLM2's GGUF template is ChatML
    assert s.endswith("<|im_start|>assistant\n")
    assert "tokenizer.chat_template" in policy.llm.metadata


def test_n_samples_shapes_tokens_and_logprobs(policy):
    prompts = [chat(policy, "Write a Python line that adds two numbers."), "def add(a, b):\n"]
    out = policy.generate(prompts, n=3, max_tokens=16, temperature=1.0, seed=11)
    assert [len(r) for r in out] == [3, 3]
    for row in out:
        for c in row:
            assert c.finish_reason in ("length", "eos", "stop")
            assert 1 <= c.num_tokens <= 16
            assert c.logprob_sum is not None and c.logprob_sum <= 0
            if c.finish_reason == "length":
                assert c.num_tokens == 16
    assert len({c.text for c in out[1]}) > 1  # samples differ


def test_seed_reproducible(policy):
    prompts = ["x = 3\ny = ", "The capital of France is"]
    a = policy.generate(prompts, n=2, max_tokens=10, temperature=0.9, seed=42)
    c = policy.generate(prompts, n=2, max_tokens=10, temperature=0.9, seed=42)
    assert [[x.text for x in r] for r in a] == [[x.text for x in r] for r in c]
    d = policy.generate(prompts, n=2, max_tokens=10, temperature=0.9, seed=43)
    assert [[x.text for x in r] for r in a] != [[x.text for x in r] for r in d]


def test_greedy_copies_and_is_deterministic(policy):
    p = "def fibonacci(n):\n"
    [[a, b, c]] = policy.generate([p], n=3, max_tokens=20, temperature=0)
    assert a == b == c
    [[d]] = policy.generate([p], n=1, max_tokens=20, temperature=0, seed=123)
    assert d == a


def test_stop_string_detected_and_excluded(policy):
    p = "def fibonacci(n):\n"
    [[full]] = policy.generate([p], n=1, max_tokens=40, temperature=0)
    text = full.text
    assert full.finish_reason == "length" and len(text) > 20
    stop = text[len(text) // 2: len(text) // 2 + 4]
    expected = text[: text.find(stop)]
    [[c]] = policy.generate([p], n=1, max_tokens=40, temperature=0, stop=["@@never@@", stop])
    assert (c.text, c.stop, c.finish_reason) == (expected, stop, "stop")
    assert c.num_tokens < full.num_tokens
    assert stop not in c.text
    # two stop strings: the earliest in the text wins, whatever their order in the list
    s1, s2 = text[5:8], text[len(text) - 6:len(text) - 2]
    first = min((s1, s2), key=text.find)
    [[c2]] = policy.generate([p], n=1, max_tokens=40, temperature=0, stop=[s2, s1])
    assert c2.stop == first and c2.text == text[: text.find(first)]


def test_eos_ends_a_chat_answer(policy):
    [[c]] = policy.generate([chat(policy, "Say hello.")], n=1, max_tokens=64, temperature=0)
    assert c.finish_reason == "eos", c
    assert c.stop is None and "<|im_end|>" not in c.text and c.text.strip()


def test_logprob_sum_matches_llama_cpp_own_logprobs():
    """Our per-token log-softmax of the raw logits vs llama_cpp's create_completion(logprobs=...)."""
    prompt = "import math\n"
    mine = LlamaCppPolicy(SMOL, n_ctx=512, n_threads=2)
    try:
        [[c]] = mine.generate([prompt], n=1, max_tokens=12, temperature=0)
    finally:
        mine.close()
    ref = llama_cpp.Llama(model_path=str(SMOL), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    try:
        r = ref.create_completion(prompt, max_tokens=12, temperature=0.0, logprobs=1, top_k=0, top_p=1.0,
                                  min_p=0.0, repeat_penalty=1.0)
    finally:
        ref.close()
    choice = r["choices"][0]
    assert choice["text"] == c.text
    lps = [x for x in choice["logprobs"]["token_logprobs"] if x is not None]
    assert len(lps) == c.num_tokens
    assert c.logprob_sum == pytest.approx(sum(lps), abs=2e-3)


def test_prefix_kv_reuse(policy):
    base = chat(policy, "Compute the sum of the first ten squares step by step, using Python code.")
    before = dict(policy.stats)
    policy.generate([base + "x = 1", base + "y = 2"], n=3, max_tokens=4, temperature=1.0, seed=1)
    used = policy.stats["prompt_tokens"] - before["prompt_tokens"]
    reused = policy.stats["prompt_tokens_reused"] - before["prompt_tokens_reused"]
    # 6 samples over two prompts sharing a long prefix: all but the first decode are mostly reuse
    assert reused >= 0.75 * used, (reused, used)


def test_prompt_longer_than_context_does_not_raise(policy):
    long = "1 + " * 1200
    out = policy.generate([long, "x ="], n=2, max_tokens=4, temperature=0.5, seed=0)
    assert [c.finish_reason for c in out[0]] == ["length", "length"]
    assert out[0][0].num_tokens == 0 and out[0][0].text == ""
    assert out[1][0].num_tokens >= 1


def test_empty_inputs(policy):
    assert policy.generate([], n=3) == []
    assert policy.generate(["x"], n=0) == [[]]


@pytest.mark.model
def test_builtin_model_chatml_and_short_generation():
    p = load_policy("default", n_ctx=2048, n_threads=min(2, os.cpu_count() or 1))
    try:
        s = p.format_chat([{"role": "user", "content": "What is 2+3? Reply with only the number."}])
        assert s.startswith("<|im_start|>system\n") and "<|im_start|>user\nWhat is 2+3?" in s
        assert s.endswith("<|im_start|>assistant\n")
        t = time.perf_counter()
        [[c]] = p.generate([s], n=1, max_tokens=8, temperature=0)
        dt = time.perf_counter() - t
        assert "5" in c.text and c.finish_reason in ("eos", "length")
        print(f"built-in model: {c.num_tokens} tokens in {dt:.2f}s: {c.text!r}")
    finally:
        p.close()
