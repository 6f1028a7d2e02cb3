"""A simulated GPU inference server for benchmarks: a policy whose ``submit`` behaves like a
continuously batching engine (vLLM's scheduler, simplified), driven by rstar's real driver,
sandbox and tree core, with scripted steps in place of a model's text.

Engine model. One engine thread runs steps. Each step admits waiting requests (all ``n``
sequences of a request together) while the batch holds fewer than ``max_num_seqs`` sequences
and their context fits the KV cache, prefills the new prompts' uncached tokens, decodes one
token for every sequence in the batch, and returns each request as soon as all its sequences
have ended (at their scripted lengths). A step lasts (really sleeps)

    t_step = floor_s + per_seq_s * B + per_ctx_token_s * (sum of the batch's context tokens)
             + per_prefill_token_s * (prompt tokens computed this step)

Constants: ASSUMED, not read off a published curve. The search for a published vLLM
decode-throughput-per-batch-size curve for a ~1.5B model on one A100/H100 found only batch-1
speed tables (Qwen's speed benchmark pages, vLLM 0.4.2 on A100 80GB, batch size 1) and
large-model serving tables, so the curve is built from the hardware and the model's shapes
and stated here plainly:

* model: Qwen2.5-1.5B (1.54e9 parameters, 28 layers, 2 KV heads x 128, bf16): 3.1 GB of
  weights read once per step, 28 KiB of KV cache per context token;
* GPU: A100 80GB, 2.0 TB/s HBM, 312 TFLOP/s bf16 dense;
* ``floor_s`` 6 ms: weights (1.5 ms at full bandwidth) plus launch and scheduler overhead,
  about 170 tokens/s for one sequence, the order of the batch-1 figures published for
  1.5B models under vLLM;
* ``per_seq_s`` 25 us: 3.1 GFLOP per token at about 40% of peak;
* ``per_ctx_token_s`` 14 ns: reading one context token's 28 KiB of KV at 2.0 TB/s;
* ``per_prefill_token_s`` 12 us: a prompt token's 3.1 GFLOP at about 80% of peak (large
  matrix products);
* ``max_num_seqs`` 256 (vLLM's default), KV cache 500,000 tokens (about 14 GB).

At 256 sequences of 600 context tokens that gives 6 + 6.4 + 2.2 = 14.6 ms a step, about
17,500 generated tokens/s: the range reported for 1-2B models on one A100 in offline
throughput runs. ``speed`` scales every step time (2 = a GPU twice as fast).

Counters (``stats()``, the policy contract): ``busy_s`` (wall seconds with at least one
sequence in the batch), ``decode_steps``, ``sequences_decoded``, ``prompt_tokens``,
``prompt_tokens_computed`` (a request whose parent node's request was seen and not
forgotten reuses that prompt's tokens: vLLM's prefix cache), ``generated_tokens``; plus
``idle_s``, ``queue_wait_s`` (request seconds spent waiting for a batch slot) and
``context_tokens`` (summed over steps: the batch's context).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from rstar.policy.base import Completion
from rstar.policy.scripted import ScriptedPolicy, count_tokens

A100_1P5B = dict(floor_s=6e-3, per_seq_s=25e-6, per_ctx_token_s=14e-9, per_prefill_token_s=12e-6,
                 max_num_seqs=256, kv_tokens=500_000)


@dataclass
class _Request:
    prompt_tokens: int
    computed: int
    completions: list
    lengths: list
    future: Future
    submitted: float
    done: list = field(default_factory=list)
    admitted: bool = False


class SimGPUPolicy(ScriptedPolicy):
    """A scripted policy served by a simulated continuously batching GPU engine."""

    def __init__(self, script, speed: float = 1.0, **overrides):
        super().__init__(script, name="simgpu")
        self.p = {**A100_1P5B, **overrides}
        self.speed = float(speed)
        self.cv = threading.Condition()
        self.waiting: list[_Request] = []
        self.running: list[tuple[_Request, int]] = []   # (request, sequence index)
        self.progress: dict[tuple[int, int], int] = {}  # (id(request), seq) -> tokens generated
        self.cache: dict[tuple, int] = {}               # (tree, node) -> prompt tokens of its request
        self.counters = dict(busy_s=0.0, idle_s=0.0, decode_steps=0, sequences_decoded=0, prompt_tokens=0,
                             prompt_tokens_computed=0, generated_tokens=0, queue_wait_s=0.0,
                             context_tokens=0)
        self._closed = False
        self._idle_since: float | None = None
        self._thread = threading.Thread(target=self._engine, name="simgpu-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ contract
    def capacity(self) -> int:
        return int(self.p["max_num_seqs"])

    def stats(self) -> dict:
        with self.cv:
            out = dict(self.counters)
            if self._idle_since is not None:  # the idle spell going on now
                out["idle_s"] += time.perf_counter() - self._idle_since
            return out

    def forget(self, tree, nodes=None) -> None:
        with self.cv:
            if nodes is None:
                for k in [k for k in self.cache if k[0] == tree]:
                    del self.cache[k]
            else:
                for n in nodes:
                    self.cache.pop((tree, int(n)), None)

    def submit(self, prompt, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, node=None) -> Future:
        fut: Future = Future()
        comps = ScriptedPolicy.generate(self, [prompt], n=n, stop=stop, max_tokens=max_tokens, seed=[seed])[0]
        ptoks = count_tokens(prompt)
        cached = 0
        with self.cv:
            if node is not None:
                if node.parent is not None:
                    cached = min(self.cache.get((node.tree, node.parent), 0), ptoks)
                self.cache[(node.tree, node.node)] = ptoks
            req = _Request(ptoks, ptoks - cached, comps, [max(1, c.num_tokens) for c in comps], fut,
                           time.perf_counter())
            self.waiting.append(req)
            self.cv.notify()
        return fut

    def generate(self, prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, nodes=None):
        seeds = seed if isinstance(seed, (list, tuple)) else [seed] * len(prompts)
        futs = [self.submit(p, n=n, stop=stop, max_tokens=max_tokens, temperature=temperature, seed=s,
                            node=None if nodes is None else nodes[k]) for k, (p, s) in enumerate(zip(prompts, seeds))]
        return [f.result() for f in futs]

    def close(self) -> None:
        with self.cv:
            self._closed = True
            self.cv.notify_all()

    # ------------------------------------------------------------------ the engine
    def _context(self) -> int:
        return sum(r.prompt_tokens + self.progress[(id(r), j)] for r, j in self.running)

    def _engine(self) -> None:
        p = self.p
        while True:
            with self.cv:
                if not self.waiting and not self.running:
                    self._idle_since = time.perf_counter()
                    while not self.waiting and not self.running and not self._closed:
                        self.cv.wait()
                    self.counters["idle_s"] += time.perf_counter() - self._idle_since
                    self._idle_since = None
                if self._closed:
                    return
                step_start = time.perf_counter()
                prefill = 0
                ctx = self._context()
                while self.waiting:
                    r = self.waiting[0]
                    need = len(r.lengths)
                    if self.running and (len(self.running) + need > p["max_num_seqs"]
                                         or ctx + need * r.prompt_tokens > p["kv_tokens"]):
                        break
                    self.waiting.pop(0)
                    r.admitted = True
                    self.counters["queue_wait_s"] += step_start - r.submitted
                    self.counters["prompt_tokens"] += r.prompt_tokens
                    self.counters["prompt_tokens_computed"] += r.computed
                    prefill += r.computed
                    ctx += need * r.prompt_tokens
                    for j in range(need):
                        self.running.append((r, j))
                        self.progress[(id(r), j)] = 0
                batch = len(self.running)
            dt = (p["floor_s"] + p["per_seq_s"] * batch + p["per_ctx_token_s"] * ctx
                  + p["per_prefill_token_s"] * prefill) / self.speed
            time.sleep(dt)
            finished: list[_Request] = []
            with self.cv:
                still = []
                for r, j in self.running:
                    k = (id(r), j)
                    self.progress[k] += 1
                    if self.progress[k] >= r.lengths[j]:
                        del self.progress[k]
                        r.done.append(j)
                        if len(r.done) == len(r.lengths):
                            finished.append(r)
                    else:
                        still.append((r, j))
                self.running = still
                self.counters["decode_steps"] += 1
                self.counters["sequences_decoded"] += batch
                self.counters["generated_tokens"] += batch
                self.counters["context_tokens"] += ctx
                self.counters["busy_s"] += time.perf_counter() - step_start
            for r in finished:
                if r.future.set_running_or_notify_cancel():
                    r.future.set_result([Completion(c.text, c.stop, c.finish_reason, c.num_tokens, c.logprob_sum)
                                         for c in r.completions])
