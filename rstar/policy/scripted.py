"""A policy that replays canned completions instantly: for benchmarks and tests of the search loop.

The script is one of:

* a callable ``script(prompt) -> str | list[str]``: the texts for that prompt; a list
  shorter than ``n`` is cycled, so ``n`` samples are always returned;
* a callable taking ``(prompt, n)`` (detected by its signature) returning ``n`` texts;
* a sequence of texts: one global cycle, each sample takes the next text;
* a single string: every sample is that text.

Each text is treated like raw model output: it is cut at the earliest stop string
(``split_at_stop``, as the real backends do), then at ``max_tokens`` tokens
(``finish_reason="length"``); otherwise the finish reason is ``"eos"``. Tokens are
counted with a simple regex (words, single punctuation marks, runs of whitespace
count as none), which is enough for budgets and statistics.
"""

from __future__ import annotations

import inspect
import itertools
import re
import threading
from typing import Callable, Sequence, Union

from rstar.policy.base import CHATML_TEMPLATE, Completion, Policy, normalize_stop, render_chat_template, split_at_stop

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

Script = Union[str, Sequence[str], Callable[..., Union[str, Sequence[str]]]]


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def _truncate_tokens(text: str, max_tokens: int) -> str:
    m = None
    for k, m in enumerate(_TOKEN_RE.finditer(text), 1):
        if k == max_tokens:
            return text[: m.end()]
    return text


class ScriptedPolicy(Policy):
    """Replays canned completions; no model, no waiting."""

    def __init__(self, script: Script, name: str = "scripted", chat_template: str = CHATML_TEMPLATE,
                 logprob_per_token: float | None = None):
        self.name = name
        self.chat_template = chat_template
        self.logprob_per_token = logprob_per_token
        self._lock = threading.Lock()
        self.calls = 0  # generate() calls
        self.prompts_seen = 0
        self._fn = None
        self._fn_takes_n = False
        self._cycle = None
        if callable(script):
            self._fn = script
            try:
                params = [p for p in inspect.signature(script).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                self._fn_takes_n = len(params) >= 2
            except (TypeError, ValueError):
                self._fn_takes_n = False
        elif isinstance(script, str):
            self._cycle = itertools.repeat(script)
        else:
            texts = list(script)
            if not texts:
                raise ValueError("ScriptedPolicy needs at least one text")
            self._cycle = itertools.cycle(texts)

    def format_chat(self, messages: list[dict]) -> str:
        return render_chat_template(self.chat_template, messages, add_generation_prompt=True)

    def _texts(self, prompt: str, n: int) -> list[str]:
        if self._fn is None:
            return [next(self._cycle) for _ in range(n)]
        got = self._fn(prompt, n) if self._fn_takes_n else self._fn(prompt)
        if isinstance(got, str):
            got = [got]
        got = list(got)
        if not got:
            raise ValueError("the script returned no text")
        return [got[k % len(got)] for k in range(n)]

    def generate(self, prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, nodes=None):
        stops = normalize_stop(stop)
        with self._lock:
            self.calls += 1
            self.prompts_seen += len(prompts)
            return [[self.complete(t, stops, max_tokens) for t in self._texts(p, n)] for p in prompts]

    def complete(self, raw: str, stops: list[str], max_tokens: int) -> Completion:
        """Turn one raw text into a Completion the way a backend would."""
        text, hit = split_at_stop(raw, stops)
        ntok = count_tokens(text)
        if ntok > max_tokens:
            text, hit, finish, ntok = _truncate_tokens(text, max_tokens), None, "length", max_tokens
        elif hit is not None:
            finish = "stop"
            ntok += count_tokens(hit)
        else:
            finish = "eos"
        lp = None if self.logprob_per_token is None else self.logprob_per_token * ntok
        return Completion(text=text, stop=hit, finish_reason=finish, num_tokens=ntok, logprob_sum=lp)
