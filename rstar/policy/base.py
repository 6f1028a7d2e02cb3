"""The policy contract shared by every backend: Completion, Policy, stop handling, chat templates."""

from __future__ import annotations

import abc
import dataclasses
import datetime
import random
from typing import Any, Iterable, Sequence

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
    ) -> list[list[Completion]]:
        """Per prompt (in order), ``n`` completions. ``seed``: see :func:`sample_seed`."""

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
