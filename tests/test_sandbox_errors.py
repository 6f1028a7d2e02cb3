"""Clear, one-line errors when the sandbox cannot be used (no Docker needed for most)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rstar.errors import RstarError, SandboxUnavailable

REPO = Path(__file__).resolve().parent.parent


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def test_daemon_not_running(monkeypatch):
    from rstar.sandbox import SandboxPool, engine

    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/rstar-nope.sock")
    with pytest.raises(SandboxUnavailable) as e:
        engine.connect()
    msg = str(e.value)
    assert "not running" in msg and "dockerd" in msg and "\n" not in msg
    with pytest.raises(SandboxUnavailable):
        SandboxPool(size=1)
    assert issubclass(SandboxUnavailable, RstarError)


def test_socket_permission_denied_message():
    from rstar.sandbox import engine

    err = engine._explain(PermissionError(13, "Permission denied"), "unix:///var/run/docker.sock")
    assert "permission denied" in str(err) and "usermod -aG docker" in str(err)


def test_sdk_missing_is_one_clear_line():
    code = ("import sys; sys.modules['docker'] = None\n"
            "from rstar.sandbox import engine\n"
            "from rstar.errors import SandboxUnavailable\n"
            "try:\n    engine.connect()\n"
            "except SandboxUnavailable as e:\n    print('MSG', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "MSG the Docker SDK for Python is not installed; install it with: pip install" in out.stdout


def test_cli_prints_one_line_without_traceback(tmp_path):
    """Through the real `rstar` entry point when it can be imported, else our register()."""
    code = ("import sys, argparse\n"
            "from rstar.errors import RstarError\n"
            "from rstar.sandbox import cli\n"
            "p = argparse.ArgumentParser(prog='rstar'); sub = p.add_subparsers(); cli.register(sub)\n"
            "a = p.parse_args(sys.argv[1:])\n"
            "try:\n    sys.exit(a.func(a))\n"
            "except RstarError as e:\n    print(f'rstar: error: {e}', file=sys.stderr); sys.exit(2)\n")
    out = subprocess.run([sys.executable, "-c", code, "sandbox", "check"], capture_output=True, text=True,
                         env=_env(DOCKER_HOST="unix:///tmp/rstar-nope.sock"), timeout=60)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "sudo dockerd" in lines[0]


@pytest.mark.docker
def test_missing_image_says_how_to_build():
    from _sandbox_helpers import require_sandbox

    require_sandbox()
    from rstar.sandbox import SandboxConfig, SandboxPool

    with pytest.raises(SandboxUnavailable) as e:
        SandboxPool(size=1, config=SandboxConfig(image="rstar-sandbox-nonexistent:nope"))
    msg = str(e.value)
    assert "not present" in msg and "rstar sandbox build --image rstar-sandbox-nonexistent:nope" in msg
