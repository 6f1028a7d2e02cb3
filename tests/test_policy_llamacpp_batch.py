"""The batched llama.cpp engine (rstar.policy.llamacpp_batch) on SmolLM2-135M-Instruct (Q4_1).

What holds, measured here (CPU, llama-cpp-python 0.3.36): with flash attention (the default) a
sequence's logits do not depend on which other sequences share its decode as long as a decode
step holds fewer than 16 generating sequences: 1, 4, 6, 8 and 12 greedy copies of one prompt gave
bit-identical log-probabilities, 16 and 32 copies another value (llama.cpp's CPU kernels change
with the batch's row count). Without flash attention even 4 copies differ. So these tests compare
batches under 16 sequences for exact equality; a search decoding 16-64 sequences at once gets
samples that agree with a lone run except where the last digits decide a near-tie.
"""

from __future__ import annotations

import threading

import pytest

from conftest import need_module, need_smol

llama_cpp = need_module("llama_cpp")

from rstar.policy import BackendOptionError, NodeRef, load_policy  # noqa: E402
from rstar.policy.llamacpp import LlamaCppPolicy  # noqa: E402
from rstar.policy.llamacpp_batch import LlamaBatchPolicy  # noqa: E402

SMOL = need_smol()
KW = dict(n_threads=2, parallel=8, kv_budget=4096, n_ctx=1024)
PROMPTS = ["def fibonacci(n):\n", "The capital of France is", "Question: What is 12 plus 30?\nAnswer:"]


def engine(**kw) -> LlamaBatchPolicy:
    return LlamaBatchPolicy(SMOL, **{**KW, **kw})


@pytest.fixture(scope="module")
def policy():
    p = engine()
    yield p
    p.close()


def texts(rows):
    return [[c.text for c in row] for row in rows]


def test_default_for_gguf_and_sequential_reachable():
    p = load_policy(str(SMOL), options={"n_threads": 2, "parallel": 4, "kv_budget": 1024})
    try:
        assert isinstance(p, LlamaBatchPolicy) and p.capacity() == 4
        assert p.format_chat([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")
    finally:
        p.close()
    for spec, opts in ((str(SMOL), {"engine": "sequential"}), (f"llamacpp-seq:{SMOL}", {})):
        q = load_policy(spec, options={"n_threads": 2, "n_ctx": 512, **opts})
        try:
            assert type(q) is LlamaCppPolicy
        finally:
            q.close()
    with pytest.raises(BackendOptionError, match="engine=batch only"):
        load_policy(str(SMOL), options={"engine": "sequential", "parallel": 4})
    with pytest.raises(BackendOptionError, match="batch or sequential"):
        load_policy(str(SMOL), options={"engine": "fast"})


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_same_completions_alone_or_in_a_batch(temperature):
    seeds = [5, 6, 7]
    with engine() as e:
        together = e.generate(PROMPTS, n=2, max_tokens=16, temperature=temperature, seed=seeds)
    alone = []
    for p, s in zip(PROMPTS, seeds):
        with engine() as e:  # a cold engine: nothing cached, nothing else decoding
            alone.append(e.generate([p], n=2, max_tokens=16, temperature=temperature, seed=[s])[0])
    assert texts(together) == texts(alone)
    assert [[c.logprob_sum for c in r] for r in together] == [[c.logprob_sum for c in r] for r in alone]
    # submit() with a prompt's seed gives that prompt's samples too
    with engine() as e:
        futs = [e.submit(p, n=2, max_tokens=16, temperature=temperature, seed=s) for p, s in zip(PROMPTS, seeds)]
        assert texts([f.result() for f in futs]) == texts(alone)


def test_n_seeded_samples_differ_and_repeat(policy):
    a = policy.generate(["Once upon a time, there was a"], n=4, max_tokens=12, temperature=1.0, seed=3)[0]
    b = policy.generate(["Once upon a time, there was a"], n=4, max_tokens=12, temperature=1.0, seed=3)[0]
    assert len({c.text for c in a}) > 1
    assert [c.text for c in a] == [c.text for c in b]
    for c in a:
        assert c.logprob_sum is not None and c.logprob_sum < 0
        assert 1 <= c.num_tokens <= 12 and c.finish_reason in ("length", "eos", "stop")
    [[g1, g2]] = policy.generate(["def add(a, b):\n"], n=2, max_tokens=8, temperature=0)
    assert g1 == g2


def test_stop_strings_and_max_tokens(policy):
    p = "def fibonacci(n):\n"
    [[full]] = policy.generate([p], max_tokens=30, temperature=0)
    assert full.finish_reason == "length" and full.num_tokens == 30 and len(full.text) > 20
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 4]
    [[c]] = policy.generate([p], max_tokens=30, temperature=0, stop=["@@never@@", stop])
    assert (c.text, c.stop, c.finish_reason) == (full.text[: full.text.find(stop)], stop, "stop")
    assert c.num_tokens < full.num_tokens
    [[short]] = policy.generate([p], max_tokens=5, temperature=0)
    assert short.finish_reason == "length" and short.num_tokens == 5 and full.text.startswith(short.text)
    [[eos]] = policy.generate([policy.format_chat([{"role": "user", "content": "Say hello."}])],
                              max_tokens=256, temperature=0)
    assert eos.finish_reason == "eos" and "<|im_end|>" not in eos.text


def test_child_request_reuses_parent_cache():
    parent = policy_prompt = "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n" \
                             "<|im_start|>assistant\n"
    with engine() as e:
        [[step]] = e.generate([parent], max_tokens=24, temperature=0, nodes=[NodeRef("t", 0, None)])
        child = policy_prompt + step.text + "\n```output\n3\n```\n"
        before = e.stats()
        [[warm]] = e.generate([child], max_tokens=12, temperature=0, nodes=[NodeRef("t", 1, 0)])
        after = e.stats()
    sent = after["prompt_tokens"] - before["prompt_tokens"]
    computed = after["prompt_tokens_computed"] - before["prompt_tokens_computed"]
    assert sent > 30 and computed <= 0.35 * sent, (computed, sent)
    with engine() as cold:
        [[ref]] = cold.generate([child], max_tokens=12, temperature=0)
        assert cold.stats()["prompt_tokens_computed"] == cold.stats()["prompt_tokens"]
    assert warm.text == ref.text


def test_eviction_then_rebuild_from_a_shorter_prefix():
    base = "<|im_start|>user\nList some facts about the number seven.<|im_end|>\n<|im_start|>assistant\n"
    with engine(kv_budget=512, parallel=2) as e:
        [[first]] = e.generate([base], max_tokens=16, temperature=0)
        # fill the 512 cells with other prompts until the first one's sequence is evicted
        for k in range(20):
            e.generate([f"Story {k}: once upon a time in a land of {k * 7} rivers,"], max_tokens=24,
                       temperature=0.9, seed=k)
        assert e._counters["evicted"] > 0
        child = base + first.text + " And more."
        [[warm]] = e.generate([child], max_tokens=10, temperature=0)
    with engine() as cold:
        [[ref]] = cold.generate([child], max_tokens=10, temperature=0)
    assert warm.text == ref.text


def test_forgotten_nodes_are_evicted_first():
    with engine() as e:
        e.generate(["alpha beta gamma delta"], max_tokens=4, temperature=0, nodes=[NodeRef("a", 0, None)])
        e.generate(["one two three four"], max_tokens=4, temperature=0, nodes=[NodeRef("b", 0, None)])
        e.forget("a")
        e.generate(["x"], max_tokens=1, temperature=0)  # the engine takes the hint in its next step
        forgotten = {sid for sid, en in e._entries.items() if en.forgotten}
        assert forgotten and all(e._entries[s].tag[0] == "a" for s in forgotten)
        assert e._evict_one() and not any(en.forgotten for en in e._entries.values())


def test_concurrent_submit_from_threads(policy):
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        futs = [policy.submit(f"Item {i}-{k}: the", n=2, max_tokens=6, temperature=0.7, seed=i * 10 + k)
                for k in range(2)]
        results[i] = [f.result(timeout=300) for f in futs]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]
    assert all(len(r) == 2 and all(len(c) == 2 for c in r) for r in results.values())
    s = policy.stats()
    assert s["decode_steps"] > 0 and s["sequences_decoded"] > s["decode_steps"]  # several sequences a step
    assert s["generated_tokens"] > 0 and s["busy_s"] > 0


def test_close_stops_the_engine_thread():
    e = engine()
    thread = e._thread
    assert thread.is_alive()
    e.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        e.submit("x")
    e.close()  # idempotent


def test_out_of_kv_cells_preempts_then_completes_or_says_why():
    prompts = [f"Request {k}: write a long list of fruits, one per line, starting with apple," for k in range(4)]
    with engine(kv_budget=256, parallel=4) as e:
        rows = e.generate(prompts, n=1, max_tokens=48, temperature=0.8, seed=[1, 2, 3, 4])
        assert all(len(r) == 1 and 1 <= r[0].num_tokens <= 48 for r in rows)
        big = "one two three four five six seven eight nine ten " * 16  # ~160 tokens
        with pytest.raises(RuntimeError, match="raise kv_budget"):
            e.generate([big], n=4, max_tokens=60, temperature=0.8, seed=0)
        [[after]] = e.generate(["Still working?"], max_tokens=4, temperature=0)  # the engine lives on
        assert after.num_tokens >= 1
