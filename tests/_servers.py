"""Real HTTP servers for the tests: start one on a free loopback port, wait until it answers,
stop it with its whole process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import spawn, tail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], log_path: Path, port: int, limit_s: float, env: dict | None = None):
    """``python ARGS`` in its own process group, output to the file ``log_path`` (``spawn``: a
    loading server logs hundreds of KB); returns ``(process, url)`` once ``url/models`` answers.
    A server that exits or does not answer within ``limit_s`` fails the test with its log's end."""
    import requests

    proc = spawn([sys.executable, *args], log_path, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{args[1]} exited ({proc.returncode}): {tail(log_path)}")
        try:
            if requests.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"{args[1]} did not answer in {limit_s:.0f} s: {tail(log_path)}")
        time.sleep(0.5)


def stop_server(proc) -> None:
    """SIGTERM to the server's process group (an engine's worker processes too), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start_llama_server(gguf: Path, log_path: Path, n_ctx: int = 2048, limit_s: float = 180):
    """llama-cpp-python's OpenAI-compatible server on two threads; ``(process, url)``."""
    port = free_port()
    return start_server(["-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", port,
                         "--n_ctx", n_ctx, "--n_threads", 2, "--n_threads_batch", 2], log_path, port, limit_s)
