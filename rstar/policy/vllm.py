"""vLLM offline engine (CUDA GPU): prefix caching on, n samples per prompt in one request.

vLLM is imported lazily: a CPU machine without it is fine until this backend is asked for.

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

from typing import Any, Sequence

from rstar.errors import ModelUnavailable
from rstar.policy.base import Completion, Policy, normalize_stop, sample_seed, split_at_stop

INSTALL_HINT = "pip install vllm (CUDA GPU required)"


def _import_vllm():
    try:
        import vllm  # noqa: F401
        from vllm import LLM, SamplingParams
    except Exception as exc:  # ImportError, or CUDA/driver errors raised at import
        raise ModelUnavailable(f"the vLLM backend is not available ({exc}); {INSTALL_HINT}") from exc
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


class VLLMPolicy(Policy):
    """A model served by vLLM's offline ``LLM`` engine."""

    def __init__(self, model: str, top_p: float = 0.95, top_k: int = -1, min_p: float = 0.0,
                 logprobs: bool = True, chat_template: str | None = None, seed: int = 0,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = 4096,
                 enable_prefix_caching: bool = True, **engine_kwargs: Any):
        LLM, SamplingParams = _import_vllm()
        self._SamplingParams = SamplingParams
        if not model:
            raise ModelUnavailable("vllm: needs a model id or directory (vllm:ID)")
        kwargs = dict(model=model, enable_prefix_caching=enable_prefix_caching, seed=seed,
                      gpu_memory_utilization=gpu_memory_utilization)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(engine_kwargs)
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:
            raise ModelUnavailable(f"vLLM could not load {model}: {exc}") from exc
        self.name = model
        self.sampling = dict(top_p=top_p, top_k=top_k, min_p=min_p)
        self.logprobs = logprobs
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template = chat_template

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

    def generate(self, prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None):
        stops = normalize_stop(stop)
        if not prompts:
            return []
        params = [self.sampling_params(n, stops, max_tokens, temperature,
                                       None if seed is None else sample_seed(seed, i, 0))
                  for i in range(len(prompts))]
        outs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[completion_from_vllm(o, stops) for o in ro.outputs] for ro in outs]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            del llm
            try:
                import gc

                gc.collect()
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:
                pass
