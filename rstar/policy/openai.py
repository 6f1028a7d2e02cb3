"""An OpenAI-compatible HTTP server (``/v1/completions``): vLLM serve, SGLang, llama.cpp server.

Spec: ``openai:http://host:port/v1`` or ``openai:http://host:port/v1#model-name``. Without a
model name the first entry of ``GET /v1/models`` is used.

* Connections are reused (one ``requests.Session``, a pool as large as the concurrency).
* At most ``concurrency`` requests are in flight (a thread pool).
* Connection errors, timeouts, 429 and 5xx are retried ``max_retries`` times with
  exponential backoff (``Retry-After`` honoured, capped); then :class:`ModelUnavailable`.
* ``n``: asked for in one request; if the server returns fewer choices (llama.cpp's
  servers ignore ``n``), the rest are sampled with parallel ``n=1`` requests, and later
  calls go straight to parallel requests.

Which stop string was hit
-------------------------
OpenAI's API only says ``finish_reason: "stop"`` for both a stop string and the end
token. vLLM adds ``stop_reason`` (the stop string, a stop token id, or null for EOS),
SGLang ``matched_stop``. ``stop_mode="auto"`` (default) probes the server once: if its
choices carry one of those fields the stop strings are sent to the server ("server"
mode); otherwise ("stream" mode) completions are streamed *without* server-side stop
strings and cut on the client with :func:`split_at_stop` as soon as one appears, and the
stream is closed (llama.cpp's servers stop generating when the client goes away). Then
``finish_reason "stop"`` from the server can only mean EOS. In stream mode ``num_tokens``
is the number of streamed chunks (one per token on llama.cpp; a multi-byte character
split over tokens may merge two) and ``logprob_sum`` is None. Streams go one at a time:
llama-cpp-python's server serves one request at a time and, by default, cuts a running
stream short (``[DONE]`` with no finish reason) as soon as another request arrives. A
stream that ends without a finish reason or a stop string was cut short: it is retried,
never taken for a completion.

``logprob_sum`` in server mode: ``logprobs=1`` is requested and ``token_logprobs`` summed;
a server that rejects logprobs gets requests without them from then on (then None).
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from rstar.errors import ModelUnavailable
from rstar.policy.base import (
    CHATML_TEMPLATE,
    Completion,
    Policy,
    normalize_stop,
    render_chat_template,
    sample_seed,
    split_at_stop,
)

RETRY_STATUS = {429, 500, 502, 503, 504}


class _Retryable(Exception):
    pass


def parse_openai_spec(spec: str) -> tuple[str, str | None]:
    """``"http://h:p/v1#model"`` -> ``("http://h:p/v1", "model")``."""
    url, _, model = spec.strip().partition("#")
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ModelUnavailable(f"openai: expected http(s)://host:port/v1[#model], got {spec!r}")
    return url, (model or None)


class OpenAIPolicy(Policy):
    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        top_p: float = 0.95,
        logprobs: bool = True,
        stop_mode: str = "auto",
        chat_template: str | None = None,
        bos_token: str = "",
        eos_token: str = "",
        extra_body: dict | None = None,
    ):
        import os

        import requests
        from requests.adapters import HTTPAdapter

        self.base_url, spec_model = parse_openai_spec(url)
        if stop_mode not in ("auto", "server", "stream"):
            raise ValueError("stop_mode must be auto, server or stream")
        self.stop_mode = stop_mode
        self.timeout = (connect_timeout, timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.top_p = top_p
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        self.chat_template = chat_template or CHATML_TEMPLATE
        self.bos_token, self.eos_token = bos_token, eos_token
        self.concurrency = max(1, int(concurrency))
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.concurrency, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="rstar-http")
        self._n_supported: bool | None = None
        self._lock = threading.Lock()
        self._stream_lock = threading.Lock()  # stream mode: one stream at a time (see the module doc)
        self.counters = {"requests": 0, "retries": 0}  # HTTP requests and retries (stats() is the engine contract)
        self.model = model or spec_model or self._discover_model()
        self.name = f"openai:{self.base_url}#{self.model}"

    # ------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, payload: dict | None = None, stream: bool = False):
        """One HTTP call with retries; returns the (open, if stream) response."""
        import requests

        url = f"{self.base_url}{path}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.counters["retries"] += 1
            try:
                with self._lock:
                    self.counters["requests"] += 1
                resp = self.session.request(method, url, json=payload, timeout=self.timeout,
                                            stream=stream)
                if resp.status_code in RETRY_STATUS:
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    delay = _retry_after(resp)
                    resp.close()
                    raise _Retryable(delay)
                if resp.status_code >= 400:
                    body = resp.text[:500]
                    resp.close()
                    raise ModelUnavailable(f"openai: {method} {url} -> HTTP {resp.status_code}: {body}")
                return resp
            except (requests.ConnectionError, requests.Timeout, _Retryable) as exc:
                if not isinstance(exc, _Retryable):
                    last = f"{type(exc).__name__}: {_short(exc)}"
                delay = exc.args[0] if isinstance(exc, _Retryable) and exc.args and exc.args[0] else None
                if attempt == self.max_retries:
                    break
                if delay is None:
                    delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
                time.sleep(min(delay, self.max_backoff))
        raise ModelUnavailable(
            f"openai: {method} {url} failed after {self.max_retries + 1} attempts ({last}); "
            "is the server running?")

    def _post_json(self, path: str, payload: dict) -> dict:
        resp = self._request("POST", path, payload)
        try:
            return resp.json()
        finally:
            resp.close()

    def _discover_model(self) -> str:
        resp = self._request("GET", "/models")
        try:
            data = resp.json().get("data") or []
        finally:
            resp.close()
        if not data:
            raise ModelUnavailable(f"openai: {self.base_url}/models lists no model; use URL#model")
        return str(data[0]["id"])

    # ------------------------------------------------------------ chat

    def format_chat(self, messages: list[dict]) -> str:
        return render_chat_template(self.chat_template, messages, bos_token=self.bos_token,
                                    eos_token=self.eos_token, add_generation_prompt=True)

    # ------------------------------------------------------------ generation

    def _resolve_stop_mode(self) -> str:
        if self.stop_mode == "auto":
            body = self._post_json("/completions", {"model": self.model, "prompt": "1", "max_tokens": 1,
                                                    "temperature": 0.0, **self.extra_body})
            choices = body.get("choices") or [{}]
            server_reports = any(k in choices[0] for k in ("stop_reason", "matched_stop"))
            self.stop_mode = "server" if server_reports else "stream"
        return self.stop_mode

    def generate(self, prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, nodes=None):
        stops = normalize_stop(stop)
        if not prompts or n <= 0:
            return [[] for _ in prompts]
        mode = self._resolve_stop_mode()
        greedy = temperature <= 0
        if mode == "stream" or greedy or self._n_supported is False:
            k = 1 if greedy else n
            futs = [[self._pool.submit(self._one, p, 1, stops, max_tokens, temperature,
                                       None if seed is None else sample_seed(seed, i, j), mode)
                     for j in range(k)] for i, p in enumerate(prompts)]
            out = [[f.result()[0] for f in row] for row in futs]
            if greedy:
                out = [[Completion(**vars(row[0])) for _ in range(n)] for row in out]
            return out
        futs = [self._pool.submit(self._one, p, n, stops, max_tokens, temperature,
                                  None if seed is None else sample_seed(seed, i, 0), mode)
                for i, p in enumerate(prompts)]
        out = [f.result() for f in futs]
        if any(len(row) < n for row in out):
            self._n_supported = False  # the server ignores n: emulate with parallel requests
            extra = {i: [self._pool.submit(self._one, prompts[i], 1, stops, max_tokens, temperature,
                                           None if seed is None else sample_seed(seed, i, j), mode)
                         for j in range(len(row), n)]
                     for i, row in enumerate(out) if len(row) < n}
            for i, fs in extra.items():
                out[i] = out[i] + [f.result()[0] for f in fs]
        elif self._n_supported is None:
            self._n_supported = True
        return [row[:n] for row in out]

    def _payload(self, prompt: str, n: int, max_tokens: int, temperature: float,
                 seed: int | None) -> dict:
        p: dict[str, Any] = {"model": self.model, "prompt": prompt, "n": n, "max_tokens": max_tokens,
                             "temperature": max(float(temperature), 0.0), "top_p": self.top_p}
        if seed is not None:
            p["seed"] = int(seed)
        p.update(self.extra_body)
        return p

    def _one(self, prompt, n, stops, max_tokens, temperature, seed, mode) -> list[Completion]:
        payload = self._payload(prompt, n, max_tokens, temperature, seed)
        if mode == "stream":
            return [self._stream_one(payload, stops)]
        if stops:
            payload["stop"] = stops
        if self.logprobs:
            payload["logprobs"] = 1
        try:
            body = self._post_json("/completions", payload)
        except ModelUnavailable as exc:
            if self.logprobs and "logprob" in str(exc).lower():
                self.logprobs = False  # this server cannot return them
                payload.pop("logprobs", None)
                body = self._post_json("/completions", payload)
            else:
                raise
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        comps = [completion_from_choice(c, stops) for c in choices]
        usage = body.get("usage") or {}
        if len(comps) == 1 and not comps[0].num_tokens and usage.get("completion_tokens"):
            comps[0].num_tokens = int(usage["completion_tokens"])
        return comps

    def _stream_one(self, payload: dict, stops: list[str]) -> Completion:
        with self._stream_lock:
            for _ in range(self.max_retries + 1):
                comp = self._stream_once(payload, stops)
                if comp is not None:
                    return comp
                with self._lock:
                    self.counters["retries"] += 1
        raise ModelUnavailable(
            f"{self.base_url}: the server ended the stream without a finish reason {self.max_retries + 1} "
            "times in a row (cut short, not finished); if another client shares this server, note that "
            "llama_cpp.server interrupts a running request when a new one arrives (--interrupt_requests "
            "false turns that off)")

    def _stream_once(self, payload: dict, stops: list[str]) -> Completion | None:
        """One streamed completion, or None when the server closed the stream without saying why
        it ended (cut short)."""
        payload = dict(payload, n=1, stream=True)
        resp = self._request("POST", "/completions", payload, stream=True)
        text, hit, finish, chunks = "", None, None, 0
        try:
            for line in resp.iter_lines(decode_unicode=False):
                if not line or not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                for c in event.get("choices") or []:
                    piece = c.get("text") or ""
                    if piece:
                        chunks += 1
                        text += piece
                    fr = c.get("finish_reason")
                    if fr:
                        finish = "length" if fr == "length" else "eos"
                if stops:
                    cut, found = split_at_stop(text, stops)
                    if found is not None:
                        text, hit, finish = cut, found, "stop"
                        break
        finally:
            resp.close()  # on a stop hit this disconnects: the server stops generating
        if finish is None:
            return None
        return Completion(text=text, stop=hit, finish_reason=finish, num_tokens=chunks, logprob_sum=None)

    def capacity(self) -> int:
        """The requests this client keeps in flight at once (its ``concurrency``)."""
        return self.concurrency

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        sess = getattr(self, "session", None)
        if sess is not None:
            sess.close()
            self.session = None


def completion_from_choice(c: dict, stops: Sequence[str] = ()) -> Completion:
    """One OpenAI completions ``choice`` (server mode) -> Completion."""
    text = c.get("text") or ""
    fr = c.get("finish_reason")
    reported = c.get("stop_reason", c.get("matched_stop"))
    hit = reported if isinstance(reported, str) else None
    if hit is not None and text.endswith(hit):
        text = text[: -len(hit)]
    elif hit is None and stops:  # a server that kept the stop string in the text
        cut, found = split_at_stop(text, stops)
        if found is not None:
            text, hit = cut, found
    if hit is not None:
        finish = "stop"
    elif fr == "length":
        finish = "length"
    else:
        finish = "eos"
    lp = c.get("logprobs") or {}
    token_lps = lp.get("token_logprobs") if isinstance(lp, dict) else None
    tokens = lp.get("tokens") if isinstance(lp, dict) else None
    lp_sum = float(sum(x for x in token_lps if x is not None)) if token_lps else None
    ntok = len(tokens) if tokens else (len(token_lps) if token_lps else _usage_tokens(c))
    return Completion(text=text, stop=hit, finish_reason=finish, num_tokens=ntok, logprob_sum=lp_sum)


def _usage_tokens(c: dict) -> int:
    return int(c.get("num_tokens") or 0)


def _retry_after(resp) -> float | None:
    try:
        return float(resp.headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None


def _short(exc: Exception) -> str:
    s = str(exc)
    return s if len(s) < 160 else s[:157] + "..."
