"""llama.cpp in process, many sequences per decode, the KV cache kept per search node: the
default backend for GGUF models on CPU (``"default"``, ``"*.gguf"``, ``"llamacpp:PATH"``).

Today's one-sequence backend (:class:`rstar.policy.llamacpp.LlamaCppPolicy`) stays reachable for
comparison with the backend option ``engine=sequential`` (``--backend-opt engine=sequential``)
or the spec prefix ``"llamacpp-seq:PATH"``.

The engine
----------
One background thread owns a llama.cpp context built over llama-cpp-python's low-level bindings
(the model, tokenizer, chat template and LoRA adapter are loaded as in the sequential backend,
whose code this class shares: :meth:`format_chat` is the same). Requests come in through
:meth:`submit` (a ``Future``); :meth:`generate` is one :meth:`submit` per prompt, then a wait.
Every engine step is one ``llama_decode`` of one ``llama_batch`` holding, with one sequence id
each, the last sampled token of every sequence being generated and, filling the batch up to
``n_batch`` tokens, chunks of the prompts still being prefilled. Each sequence samples with its own
llama.cpp sampler chain (top-k, top-p, min-p, temperature, then a seeded draw; greedy at
temperature 0), its own stop strings (:func:`split_at_stop` on the decoded text), ``max_tokens``,
the model's end-of-generation tokens, and ``logprob_sum`` (log-softmax of the raw logits row, as
the sequential backend). A request's future resolves as soon as its ``n`` samples end; the ``n``
samples share the prompt's prefill (one sequence prefilled, copied ``n - 1`` times in the cache).

Seeds: sample j of a submitted request with seed s uses ``sample_seed([s], 0, j)`` (what the
default batcher of :class:`Policy` gives); :meth:`generate` gives sample j of prompt i
``sample_seed(seed, i, j)`` (as the sequential backend). Sampling never depends on which other
sequences share a step. Caveat, measured on SmolLM2 Q4_1 (tests/test_policy_llamacpp_batch.py):
llama.cpp's CPU kernels do not promise bit-identical logits when the same tokens are computed in
a batch of another size or from a copied cache; see that test for what holds. In particular a
prompt whose prefix is served from the cache evaluates its last tokens in another batch shape than
a fresh prefill, so a greedy completion can change where two tokens nearly tie (seen on SmolLM2:
"def fibonacci(n):\n" again after its first completion was cached began with another token).

The KV cache follows the tree
-----------------------------
The context's KV cache is one unified buffer (``kv_unified``) of ``kv_budget`` token cells shared
by all sequences; ``llama_memory_seq_cp`` there adds a sequence id to the same cells, so a copy
costs no memory and no compute and is token-exact. Every finished sample's sequence (its prompt
and generated tokens, all that was evaluated) is kept as a cache entry. A new request's tokens are
matched against the kept entries and the sequences in flight: the longest common token prefix is
copied to the request's sequence and only the rest is evaluated. With the search's node hints
(:class:`NodeRef`) the entry a child's prompt extends is its parent's sample that wrote it; the
engine needs no hint for the match (the lockstep driver, which sends none, gets the same reuse),
and uses the hints for :meth:`forget`. Requests that share a long prefix with a prompt still being
prefilled wait for that prefill instead of computing the prefix again.

Entries are evicted least recently used first, those of nodes passed to :meth:`forget` before any
other; eviction happens when sequence ids run out (``llama_max_parallel_sequences``, 256, shared by
entries and sequences in flight) or ``llama_decode`` finds no free cells. A request whose entry was
evicted is rebuilt from its longest cached prefix (its nearest cached ancestor).

Options (``--backend-opt``; :data:`rstar.policy.BACKEND_OPTIONS`): ``parallel`` (sequences decoded
at once = :meth:`capacity`, default 32), ``kv_budget`` (token cells of the shared KV cache, default
32768: the Qwen2.5-1.5B built-in model needs 28 KiB a cell, under 1 GiB), ``n_ctx`` (the most
tokens of one sequence, prompt and completion), ``n_batch`` (tokens per decode), ``flash_attn``,
``n_gpu_layers`` (a GPU build of llama.cpp offloads as usual) and the sampling options.
:meth:`stats` counts ``prompt_tokens`` once per request (sent) and ``prompt_tokens_computed`` (of
those, evaluated: not served from the cache).
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import threading
import time
from concurrent.futures import Future
from typing import Iterable, Sequence

import numpy as np

from rstar.errors import ModelUnavailable
from rstar.policy.base import Completion, NodeRef, normalize_stop, sample_seed, split_at_stop
from rstar.policy.llamacpp import LlamaCppPolicy

# a request waits for a prompt being prefilled when it shares this many more tokens with it
_WAIT_FOR_PREFIX = 32


class _Rearmed:
    """A preempted request's future (already running) as admission sees it the second time."""

    def __init__(self, fut: Future) -> None:
        self.fut = fut

    def cancelled(self) -> bool:
        return False

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def done(self) -> bool:
        return self.fut.done()

    def set_result(self, value) -> None:
        self.fut.set_result(value)

    def set_exception(self, exc) -> None:
        self.fut.set_exception(exc)


class _Stats(dict):
    """The sequential backend's counters by key; calling it gives the contract's stats()."""

    def __init__(self, counters: dict, **keys) -> None:
        super().__init__(**keys)
        self.counters = counters

    def __call__(self) -> dict:
        return {k: v for k, v in self.counters.items() if k != "evicted"}


@dataclasses.dataclass(eq=False)
class _Request:
    tokens: np.ndarray
    n_out: int  # completions returned
    n_samples: int  # sequences sampled (1 at temperature 0: copied n_out times)
    stops: list[str]
    budget: int
    temperature: float
    seeds: list[int]
    node: NodeRef | None
    future: Future
    results: list = dataclasses.field(default_factory=list)
    remaining: int = 0
    reserved: list[int] = dataclasses.field(default_factory=list)  # seq ids for samples 1..n-1
    failed: bool = False


@dataclasses.dataclass(eq=False)
class _Seq:
    sid: int
    req: _Request
    j: int  # sample index
    tokens: list[int]  # tokens in the KV cache, in order
    pending: list[int]  # prompt tokens still to evaluate
    chain: object = None
    last: int | None = None  # sampled, not yet evaluated
    buf: bytes = b""
    n_gen: int = 0
    lp_sum: float = 0.0


@dataclasses.dataclass(eq=False)
class _Entry:
    tokens: np.ndarray
    tag: tuple | None  # (tree, node) of the request that produced it
    used: int  # LRU clock
    forgotten: bool = False


class LlamaBatchPolicy(LlamaCppPolicy):
    """A GGUF model in process: many sequences per llama.cpp decode, KV cache kept per node."""

    preferred_concurrency = None  # many problems in flight share the engine (search default)

    def __init__(
        self,
        model_path: str | os.PathLike,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        top_p: float = 0.95,
        top_k: int = 0,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        logprobs: bool = True,
        chat_template: str | None = None,
        n_gpu_layers: int = 0,
        lora_path: str | os.PathLike | None = None,
        verbose: bool = False,
        parallel: int = 32,
        kv_budget: int = 32768,
        flash_attn: bool = True,
    ):
        # the model, tokenizer, template and adapter as the sequential backend loads them; its own
        # context is kept tiny (the engine decodes in its own context below)
        super().__init__(model_path, n_ctx=64, n_threads=n_threads, n_batch=64, seed=seed, top_p=top_p,
                         top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty, logprobs=logprobs,
                         chat_template=chat_template, n_gpu_layers=n_gpu_layers, lora_path=lora_path,
                         verbose=verbose)
        lc = self._llama_cpp
        max_seq = int(lc.llama_max_parallel_sequences())
        self.parallel = max(1, min(int(parallel), max_seq - 1))
        self.kv_budget = int(kv_budget)
        if self.kv_budget < 256:
            raise ValueError(f"kv_budget={kv_budget}: at least 256 token cells")
        self.n_ctx = min(int(n_ctx), self.kv_budget)  # one sequence's limit, as the sequential backend
        self.n_batch = max(int(n_batch), max_seq)  # llama.cpp reserves n_seq_max outputs per batch
        self._n_seq_max = max_seq
        n_threads = n_threads or int(os.environ.get("RSTAR_THREADS") or 0) or os.cpu_count() or 1
        params = lc.llama_context_default_params()
        params.n_ctx = self.kv_budget
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_batch, 512)
        params.n_seq_max = max_seq
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = True  # one buffer: a copied sequence shares its prefix's cells
        params.swa_full = True  # partial removal must work for every model
        params.no_perf = True
        params.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_AUTO if flash_attn
                                  else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        ctx = lc.llama_init_from_model(self.llm._model.model, params)
        if not ctx:
            self.llm.close()
            raise ModelUnavailable(f"llama.cpp could not create a context of {self.kv_budget} tokens "
                                   f"for {self.name} (lower kv_budget)")
        self._ctx = ctx
        if self.lora_path is not None:
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self.llm._lora_adapter)
            scales = (ctypes.c_float * 1)(1.0)
            if lc.llama_set_adapters_lora(ctx, adapters, 1, scales):
                self._free_native()
                raise ModelUnavailable(f"llama.cpp could not apply the LoRA adapter {self.lora_path}")
        self._mem = lc.llama_get_memory(ctx)
        self._batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self._piece = (ctypes.c_char * 256)()
        self._counters = {"busy_s": 0.0, "decode_steps": 0, "sequences_decoded": 0, "prompt_tokens": 0,
                          "prompt_tokens_computed": 0, "generated_tokens": 0, "evicted": 0}
        # policy.stats() is the contract's counters (prompt tokens once per request); policy.stats[KEY]
        # keeps the sequential backend's counters (prompt tokens once per sample, as it decodes them)
        self.stats = _Stats(self._counters, prompt_tokens=0, prompt_tokens_reused=0, generated_tokens=0)
        # engine state (owned by the engine thread once it runs)
        self._cond = threading.Condition()
        self._incoming: list[_Request] = []
        self._forgets: list[tuple[str, list[int] | None]] = []
        self._closing = False
        self._waiting: list[_Request] = []
        self._prefill: list[_Seq] = []
        self._gen: list[_Seq] = []
        self._entries: dict[int, _Entry] = {}
        self._node_state: dict[tuple, int] = {}  # (tree, node) -> entry its request started from
        self._free = list(range(max_seq - 1, -1, -1))
        self._clock = 0
        self._thread = threading.Thread(target=self._run, name="rstar-llamacpp-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the contract

    def capacity(self) -> int:
        return self.parallel

    def forget(self, tree: str, nodes: Iterable[int] | None = None) -> None:
        with self._cond:
            self._forgets.append((str(tree), None if nodes is None else [int(x) for x in nodes]))
            self._cond.notify()

    def generate(self, prompts: list[str], n: int = 1, stop: Sequence[str] = (), max_tokens: int = 256,
                 temperature: float = 0.7, seed: "int | Sequence[int] | None" = None,
                 nodes: "Sequence[NodeRef] | None" = None) -> list[list[Completion]]:
        if n <= 0:
            return [[] for _ in prompts]
        futures = [self._submit(p, n, stop, max_tokens, temperature,
                                [sample_seed(seed, i, j) for j in range(n)],
                                nodes[i] if nodes is not None else None)
                   for i, p in enumerate(prompts)]
        return [f.result() for f in futures]

    def submit(self, prompt: str, n: int = 1, stop: Sequence[str] = (), max_tokens: int = 256,
               temperature: float = 0.7, seed: int | None = None,
               node: NodeRef | None = None) -> "Future[list[Completion]]":
        seeds = [sample_seed(None if seed is None else [int(seed)], 0, j) for j in range(max(n, 0))]
        return self._submit(prompt, n, stop, max_tokens, temperature, seeds, node)

    def _submit(self, prompt, n, stop, max_tokens, temperature, seeds, node) -> Future:
        fut: Future = Future()
        if n <= 0:
            fut.set_result([])
            return fut
        if self._closing:
            raise RuntimeError(f"{self.name}: the engine is closed")
        tokens = np.asarray(self.tokenize(prompt), dtype=np.int32)
        budget = min(int(max_tokens), self.n_ctx - len(tokens))
        if budget <= 0 or len(tokens) == 0:  # the prompt fills the context: nothing to generate
            comp = Completion(text="", stop=None, finish_reason="length", num_tokens=0,
                              logprob_sum=0.0 if self.logprobs else None)
            fut.set_result([dataclasses.replace(comp) for _ in range(n)])
            return fut
        greedy = temperature <= 0
        k = 1 if greedy else int(n)
        req = _Request(tokens=tokens, n_out=int(n), n_samples=k, stops=normalize_stop(stop), budget=budget,
                       temperature=float(max(temperature, 0.0)), seeds=[int(s) for s in seeds[:k]],
                       node=node, future=fut, results=[None] * k, remaining=k)
        with self._cond:
            self._incoming.append(req)
            self._cond.notify()
        return fut

    def close(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            thread.join()
            self._thread = None
            self._free_native()
        super().close()

    def _free_native(self) -> None:
        lc = self._llama_cpp
        for s in getattr(self, "_gen", []) + getattr(self, "_prefill", []):
            if s.chain is not None:
                lc.llama_sampler_free(s.chain)
                s.chain = None
        if getattr(self, "_batch", None) is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None) is not None:
            lc.llama_free(self._ctx)
            self._ctx = None

    # ------------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                with self._cond:
                    while (not self._closing and not self._incoming and not self._forgets
                           and not self._gen and not self._prefill and not self._waiting):
                        self._cond.wait()
                    if self._closing:
                        break
                    self._waiting.extend(self._incoming)
                    self._incoming.clear()
                    forgets, self._forgets = self._forgets, []
                t0 = time.perf_counter()
                for tree, nodes in forgets:
                    self._mark_forgotten(tree, nodes)
                self._admit()
                if self._gen or self._prefill:
                    self._step()
                    self._counters["busy_s"] += time.perf_counter() - t0
        except BaseException as exc:  # the engine is broken: every waiting caller learns why
            error = exc
        with self._cond:
            self._closing = True
            reqs = {id(r): r for r in self._waiting + self._incoming}
            reqs.update({id(s.req): s.req for s in self._gen + self._prefill})
            self._waiting, self._incoming = [], []
        for r in reqs.values():
            if not r.future.done():
                r.future.set_exception(RuntimeError(f"{self.name}: the engine stopped"
                                                    + (f" ({error!r})" if error else " (closed)")))

    # -- cache entries

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _evict_one(self, protect: int | None = None) -> bool:
        """Drop the least recently used entry (forgotten ones first); False when none is left."""
        cands = [(not e.forgotten, e.used, sid) for sid, e in self._entries.items() if sid != protect]
        if not cands:
            return False
        sid = min(cands)[2]
        self._drop_entry(sid)
        self._counters["evicted"] += 1
        return True

    def _drop_entry(self, sid: int) -> None:
        del self._entries[sid]
        self._llama_cpp.llama_memory_seq_rm(self._mem, sid, -1, -1)
        self._free.append(sid)

    def _alloc(self, protect: int | None = None) -> int:
        while not self._free:
            if not self._evict_one(protect):
                raise RuntimeError("no free sequence id")  # cannot happen: parallel < n_seq_max
        return self._free.pop()

    def _mark_forgotten(self, tree: str, nodes: list[int] | None) -> None:
        if nodes is None:
            for e in self._entries.values():
                if e.tag is not None and e.tag[0] == tree:
                    e.forgotten = True
            for key in [k for k in self._node_state if k[0] == tree]:
                sid = self._node_state.pop(key)
                if sid in self._entries:
                    self._entries[sid].forgotten = True
            return
        for x in nodes:
            sid = self._node_state.pop((tree, x), None)
            if sid is not None and sid in self._entries:
                self._entries[sid].forgotten = True

    # -- admission: a request becomes a sequence starting from its longest cached prefix

    def _best_source(self, tokens: np.ndarray) -> tuple[int, int | None]:
        """(matched length, seq id) over the cache entries and the sequences in flight."""
        limit = len(tokens) - 1  # the last prompt token is always evaluated (its logits)
        best, src = 0, None
        for sid, e in self._entries.items():
            m = min(len(e.tokens), limit)
            if m <= best:
                continue
            diff = np.flatnonzero(e.tokens[:m] != tokens[:m])
            L = int(diff[0]) if diff.size else m
            if L > best:
                best, src = L, sid
        for s in self._gen + self._prefill:
            m = min(len(s.tokens), limit)
            if m <= best:
                continue
            have = s.req.tokens
            p = min(m, len(have))
            diff = np.flatnonzero(have[:p] != tokens[:p])
            L = int(diff[0]) if diff.size else p
            if L == p and m > p:  # past the prompt: the generated tokens
                gen = np.asarray(s.tokens[p:m], dtype=np.int32)
                d2 = np.flatnonzero(gen != tokens[p:m])
                L = p + (int(d2[0]) if d2.size else m - p)
            if L > best:
                best, src = L, s.sid
        return best, src

    def _admit(self) -> None:
        active = sum(1 for _ in self._gen) + sum(s.req.n_samples for s in self._prefill)
        keep: list[_Request] = []
        for req in self._waiting:
            if req.future.cancelled():
                continue
            if active > 0 and active + req.n_samples > self.parallel:
                keep.append(req)
                continue
            L, src = self._best_source(req.tokens)
            # a prompt being prefilled shares more: wait for its prefill instead of repeating it
            if any(self._shared(req.tokens, s) > L + _WAIT_FOR_PREFIX for s in self._prefill):
                keep.append(req)
                continue
            if not req.future.set_running_or_notify_cancel():
                continue
            sid = self._alloc(protect=src)
            req.reserved = [self._alloc(protect=src) for _ in range(req.n_samples - 1)]
            if src is not None and L > 0:
                self._llama_cpp.llama_memory_seq_cp(self._mem, src, sid, 0, L)
                if src in self._entries:
                    self._entries[src].used = self._tick()
                    if req.node is not None:
                        self._node_state[(req.node.tree, req.node.node)] = src
            self._counters["prompt_tokens"] += len(req.tokens)
            self._counters["prompt_tokens_computed"] += len(req.tokens) - L
            self.stats["prompt_tokens"] += len(req.tokens) * req.n_samples
            self.stats["prompt_tokens_reused"] += len(req.tokens) * req.n_samples - (len(req.tokens) - L)
            toks = req.tokens.tolist()
            self._prefill.append(_Seq(sid=sid, req=req, j=0, tokens=toks[:L], pending=toks[L:]))
            active += req.n_samples
        self._waiting = keep

    @staticmethod
    def _shared(tokens: np.ndarray, s: _Seq) -> int:
        have = s.req.tokens
        m = min(len(have), len(tokens) - 1)
        diff = np.flatnonzero(have[:m] != tokens[:m])
        return int(diff[0]) if diff.size else m

    # -- one decode

    def _step(self) -> None:
        lc = self._llama_cpp
        b = self._batch
        rows: list[tuple[_Seq, int]] = []  # sequences sampled after this decode, with their batch index
        k = 0
        for s in self._gen:
            b.token[k] = s.last
            b.pos[k] = len(s.tokens)
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = s.sid
            b.logits[k] = 1
            rows.append((s, k))
            k += 1
        chunks: list[tuple[_Seq, int]] = []
        for s in self._prefill:
            room = self.n_batch - k
            if room <= 0:
                break
            take = s.pending[:room]
            pos0 = len(s.tokens)
            last = len(take) == len(s.pending)
            for i, t in enumerate(take):
                b.token[k] = t
                b.pos[k] = pos0 + i
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = s.sid
                b.logits[k] = 1 if (last and i == len(take) - 1) else 0
                k += 1
            chunks.append((s, len(take)))
            if last:
                rows.append((s, k - 1))
        b.n_tokens = k
        while True:
            ret = lc.llama_decode(self._ctx, b)
            if ret == 0:
                break
            if ret == 1 and self._evict_one():  # no free cells: make room and retry
                continue
            if ret == 1 and self._preempt():  # still none: the youngest request starts again later
                return
            raise RuntimeError(f"llama_decode failed ({ret}) with {k} tokens: the KV cache of "
                               f"{self.kv_budget} cells is too small (raise kv_budget or lower parallel)")
        self._counters["decode_steps"] += 1
        self._counters["sequences_decoded"] += len(self._gen) + len(chunks)
        for s in self._gen:
            s.tokens.append(s.last)
            s.last = None
        for s, m in chunks:
            s.tokens.extend(s.pending[:m])
            del s.pending[:m]
        self._prefill = [s for s in self._prefill if s.pending]
        sampled: list[tuple[_Seq, int]] = []
        for s, idx in rows:
            sampled.append((s, idx))
            if s.chain is None and s.j == 0 and s.req.reserved:  # the prompt is in: start its other samples
                req = s.req
                for j in range(1, req.n_samples):
                    sid = req.reserved[j - 1]
                    lc.llama_memory_seq_cp(self._mem, s.sid, sid, -1, -1)
                    sampled.append((_Seq(sid=sid, req=req, j=j, tokens=list(s.tokens), pending=[]), idx))
                req.reserved = []
        going: list[_Seq] = []
        for s, idx in sampled:
            if s.chain is None:
                s.chain = self._make_chain(s.req, s.j)
            if not self._sample(s, idx):
                going.append(s)
        self._gen = going

    def _preempt(self) -> bool:
        """Out of KV cells with nothing left to evict: take the most recently admitted request off
        the engine (its cells freed, its samples started again later, with the same seeds); when it
        is the only one, it fails with a clear error. False when nothing is in flight."""
        seqs = self._gen + self._prefill
        if not seqs:
            return False
        victim = seqs[-1].req if self._prefill else self._gen[-1].req
        mine = [s for s in seqs if s.req is victim]
        lc = self._llama_cpp
        for s in mine:
            lc.llama_memory_seq_rm(self._mem, s.sid, -1, -1)
            self._free.append(s.sid)
            if s.chain is not None:
                lc.llama_sampler_free(s.chain)
                s.chain = None
        for sid in victim.reserved:
            self._free.append(sid)
        victim.reserved = []
        self._gen = [s for s in self._gen if s.req is not victim]
        self._prefill = [s for s in self._prefill if s.req is not victim]
        if not self._gen and not self._prefill:
            victim.future.set_exception(RuntimeError(
                f"{self.name}: one request needs more than the KV cache's {self.kv_budget} cells "
                f"({len(victim.tokens)} prompt tokens, {victim.n_samples} samples): raise kv_budget"))
            return True
        victim.results = [None] * victim.n_samples
        victim.remaining = victim.n_samples
        victim.future = _Rearmed(victim.future)
        self._waiting.insert(0, victim)
        return True

    def _make_chain(self, req: _Request, j: int):
        lc = self._llama_cpp
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if self.sampling["repeat_penalty"] != 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_penalties(
                self._n_vocab, 64, float(self.sampling["repeat_penalty"]), 0.0, 0.0))
        if req.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        if self.sampling["top_k"] and self.sampling["top_k"] > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(int(self.sampling["top_k"])))
        if self.sampling["top_p"] < 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(float(self.sampling["top_p"]), 1))
        if self.sampling["min_p"] > 0.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(float(self.sampling["min_p"]), 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(req.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(req.seeds[j] & 0xFFFFFFFF))
        return chain

    def _sample(self, s: _Seq, idx: int) -> bool:
        """Sample the next token of ``s`` from batch row ``idx``; True when the sample ended."""
        lc = self._llama_cpp
        tok = int(lc.llama_sampler_sample(s.chain, self._ctx, idx))
        s.n_gen += 1
        self._counters["generated_tokens"] += 1
        self.stats["generated_tokens"] += 1
        if self.logprobs:
            row = np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, idx), shape=(self._n_vocab,))
            mx = float(row.max())
            s.lp_sum += float(row[tok]) - (mx + math.log(float(np.exp(row - mx).sum())))
        req = s.req
        finish, hit, text = None, None, None
        if lc.llama_vocab_is_eog(self._vocab, tok):
            finish = "eos"
        else:
            n = lc.llama_token_to_piece(self._vocab, tok, self._piece, len(self._piece), 0, False)
            if n < 0:  # a piece longer than the buffer
                self._piece = (ctypes.c_char * (-n))()
                n = lc.llama_token_to_piece(self._vocab, tok, self._piece, len(self._piece), 0, False)
            s.buf += bytes(self._piece[:n]) if n > 0 else b""
            if req.stops:
                text, hit = split_at_stop(s.buf.decode("utf-8", errors="ignore"), req.stops)
                if hit is not None:
                    finish = "stop"
            if finish is None and s.n_gen >= req.budget:
                finish = "length"
        if finish is None:
            s.last = tok
            return False
        if hit is None:
            text = s.buf.decode("utf-8", errors="replace")
        lc.llama_sampler_free(s.chain)
        s.chain = None
        req.results[s.j] = Completion(text=text, stop=hit, finish_reason=finish, num_tokens=s.n_gen,
                                      logprob_sum=s.lp_sum if self.logprobs else None)
        # keep what was evaluated (the last sampled token never was) as a cache entry
        tag = (req.node.tree, req.node.node) if req.node is not None else None
        self._entries[s.sid] = _Entry(tokens=np.asarray(s.tokens, dtype=np.int32), tag=tag, used=self._tick())
        req.remaining -= 1
        if req.remaining == 0:
            out = req.results
            if req.n_out != req.n_samples:  # greedy: one sample, copied
                out = [dataclasses.replace(out[0]) for _ in range(req.n_out)]
            req.future.set_result(out)
        return True

