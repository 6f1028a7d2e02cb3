"""The policy contract shared by every backend: Completion, Policy, stop handling, chat templates."""

from __future__ import annotations

import abc
import dataclasses
import datetime
import random
import threading
import time
from concurrent.futures import Future
from typing import Any, Iterable, NamedTuple, Sequence

FINISH_REASONS = ("stop", "length", "eos")


@dataclasses.dataclass
class Completion:
    """One sampled continuation of one prompt.

    text: the generated text, without the stop string.
    stop: the stop string that ended it, or None.
    finish_reason: "stop" (a stop string), "length" (max_tokens) or "eos" (the model's end token).
    num_tokens: tokens generated (the stop string's tokens included when the backend sampled them).
    logprob_sum: sum of the sampled tokens' log-probabilities under the model (before temperature
        and truncation), or None where the backend cannot give them.
    """

    text: str
    stop: str | None = None
    finish_reason: str = "eos"
    num_tokens: int = 0
    logprob_sum: float | None = None


def split_at_stop(text: str, stop: Iterable[str]) -> tuple[str, str | None]:
    """Cut ``text`` at the earliest occurrence of any stop string.

    Returns ``(text_before_stop, stop_hit)``; ``(text, None)`` when none occurs. When two stop
    strings start at the same place, the longer wins (e.g. "```output" over "```").
    """
    best_pos, best = -1, None
    for s in stop:
        if not s:
            continue
        pos = text.find(s)
        if pos < 0:
            continue
        if best is None or pos < best_pos or (pos == best_pos and len(s) > len(best)):
            best_pos, best = pos, s
    if best is None:
        return text, None
    return text[:best_pos], best


def find_stop_prefix(text: str, stop: Iterable[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string.

    Streaming backends hold that much text back: it may still turn into a stop string.
    """
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


def normalize_stop(stop: Sequence[str] | str | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [s for s in dict.fromkeys(stop) if s]


def sample_seed(seed: "int | Sequence[int] | None", prompt_index: int, sample_index: int) -> int:
    """The seed of sample j of prompt i: reproducible from ``seed``, random when it is None.

    ``seed`` is one int for the whole call, or a sequence with one seed per prompt: then
    the samples of prompt i depend only on ``seed[i]`` and j, not on which other prompts
    share the call (the search gives each leaf a seed from its problem and node, so a
    problem's samples do not depend on batching, concurrency, resume or dataset splits).
    """
    if seed is None:
        return random.getrandbits(31)
    if isinstance(seed, (list, tuple)) or hasattr(seed, "__len__"):
        return (int(seed[prompt_index]) * 1_000_003 + sample_index * 7_919 + 17) % (2**31 - 1)
    return (int(seed) * 1_000_003 + prompt_index * 7_919 + sample_index) % (2**31 - 1)


class NodeRef(NamedTuple):
    """Which search node a request expands, so an engine can keep the model's state per node.

    tree: the tree's key (the same key the sandbox uses for the tree's interpreter states).
    node: local id (creation order within the tree, root = 0) of the node being expanded:
        the request's prompt ends with that node's shown step.
    parent: local id of that node's parent (None for the root), whose request's prompt is
        a prefix of this one plus the parent's own step.
    """

    tree: str
    node: int
    parent: int | None


class Policy(abc.ABC):
    """A language model that continues prompts. Backends subclass this."""

    name: str = "policy"
    # How many problems the search should keep in flight for this backend when the
    # user does not say (--concurrent). None: the search's own default. A backend
    # that caches only one sequence's KV state (llama.cpp) wants 1: interleaving
    # problems would re-decode each one's question and steps at every switch.
    preferred_concurrency: int | None = None

    @abc.abstractmethod
    def format_chat(self, messages: list[dict]) -> str:
        """Render ``messages`` with the model's own chat template, generation prompt appended."""

    @abc.abstractmethod
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        stop: Sequence[str] = (),
        max_tokens: int = 256,
        temperature: float = 0.7,
        seed: "int | Sequence[int] | None" = None,
        nodes: "Sequence[NodeRef] | None" = None,
    ) -> list[list[Completion]]:
        """Per prompt (in order), ``n`` completions. ``seed``: see :func:`sample_seed`.
        ``nodes``: one :class:`NodeRef` per prompt, or None; a hint only (an engine may keep
        and fork a node's model state with it), never a change to what is sampled."""

    # ------------------------------------------------------------------ asynchronous use
    def submit(self, prompt: str, n: int = 1, stop: Sequence[str] = (), max_tokens: int = 256,
               temperature: float = 0.7, seed: int | None = None,
               node: NodeRef | None = None) -> "Future[list[Completion]]":
        """Start generating ``n`` completions of one prompt; the future resolves to them as soon
        as they are done. A backend with an asynchronous engine overrides this; the default
        gathers the requests submitted while the model is busy into one :meth:`generate`
        call (same seeds, so the same completions as a direct call)."""
        with _BATCHER_LOCK:
            batcher = self.__dict__.get("_batcher")
            if batcher is None:
                batcher = self.__dict__["_batcher"] = _Batcher(self)
        return batcher.submit(prompt, n, tuple(stop), max_tokens, temperature, seed, node)

    def capacity(self) -> int:
        """How many sequences the engine decodes well at once (its batch), for sizing how many
        requests the search keeps in flight. One for a backend that decodes one at a time."""
        return int(self.preferred_concurrency or 1)

    def stats(self) -> dict:
        """Counters of the engine's work since it was built, for busy fraction and batch occupancy:
        ``busy_s`` (wall seconds with at least one sequence being decoded or prefilled),
        ``decode_steps`` (engine steps), ``sequences_decoded`` (sum over steps of the sequences
        in the step; / decode_steps = batch occupancy), ``prompt_tokens`` (prompt tokens sent),
        ``prompt_tokens_computed`` (of those, evaluated rather than served from a cache),
        ``generated_tokens``. A backend that cannot count one leaves it None. The default
        counts what the :meth:`submit` batcher sees (each generate call one step)."""
        b = self.__dict__.get("_batcher")
        return {"busy_s": b.busy_s if b else 0.0, "decode_steps": b.calls if b else 0,
                "sequences_decoded": b.sequences if b else 0, "prompt_tokens": None,
                "prompt_tokens_computed": None, "generated_tokens": b.generated if b else 0}

    def forget(self, tree: str, nodes: Iterable[int] | None = None) -> None:
        """Hint: the search will not expand these nodes of ``tree`` again (all of them when
        ``nodes`` is None); an engine keeping per-node state may drop it first."""

    def close(self) -> None:
        """Release the model (memory, connections, server handles). Idempotent."""

    def __enter__(self) -> "Policy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# ------------------------------------------------------------------ chat templates

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def render_chat_template(
    template: str,
    messages: list[dict],
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render an HF-style jinja chat template the way transformers / llama_cpp do.

    Sandboxed, ``trim_blocks`` and ``lstrip_blocks`` on, ``raise_exception`` and
    ``strftime_now`` available, as in ``llama_cpp.llama_chat_format.Jinja2ChatFormatter``.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson  # as transformers: json.dumps, non-ASCII kept
    return env.from_string(template).render(
        messages=messages, bos_token=bos_token, eos_token=eos_token,
        add_generation_prompt=add_generation_prompt, **extra)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, indent=indent)


_BATCHER_LOCK = threading.Lock()


class _Batcher:
    """The default :meth:`Policy.submit`: one thread takes every request waiting when the
    model becomes free and serves requests of one shape (n, stop, max_tokens, temperature)
    with one :meth:`Policy.generate` call, one seed per prompt."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.cond = threading.Condition()
        self.queue: list[tuple] = []
        self.thread: threading.Thread | None = None
        self.busy_s = 0.0
        self.calls = 0
        self.sequences = 0
        self.generated = 0

    def submit(self, prompt, n, stop, max_tokens, temperature, seed, node) -> Future:
        fut: Future = Future()
        with self.cond:
            self.queue.append((prompt, n, stop, max_tokens, temperature, seed, node, fut))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="rstar-batcher", daemon=True)
                self.thread.start()
            self.cond.notify()
        return fut

    def _loop(self) -> None:
        while True:
            with self.cond:
                if not self.queue and not self.cond.wait(timeout=5.0) and not self.queue:
                    self.thread = None  # idle: a later submit starts a new thread
                    return
                batch, self.queue = self.queue, []
            groups: dict[tuple, list[tuple]] = {}
            for req in batch:
                groups.setdefault(req[1:5], []).append(req)
            for (n, stop, max_tokens, temperature), reqs in groups.items():
                live = [r for r in reqs if r[7].set_running_or_notify_cancel()]
                if not live:
                    continue
                seeds = None if any(r[5] is None for r in live) else [int(r[5]) for r in live]
                nodes = [r[6] for r in live] if all(r[6] is not None for r in live) else None
                t0 = time.perf_counter()
                try:
                    kwargs = {"nodes": nodes} if nodes is not None else {}
                    out = self.policy.generate([r[0] for r in live], n=n, stop=list(stop), max_tokens=max_tokens,
                                               temperature=temperature, seed=seeds, **kwargs)
                except BaseException as exc:  # every waiting caller learns of it
                    for r in live:
                        r[7].set_exception(exc)
                    continue
                finally:
                    self.busy_s += time.perf_counter() - t0
                self.calls += 1
                self.sequences += len(live) * n
                self.generated += sum(int(c.num_tokens or 0) for comps in out for c in comps)
                for r, comps in zip(live, out):
                    r[7].set_result(comps)
