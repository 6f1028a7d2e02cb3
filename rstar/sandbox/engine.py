"""Reaching the Docker engine, with one clear line when it cannot be reached.

Every failure a user can fix (SDK missing, daemon down, socket permission,
image missing) becomes :class:`rstar.errors.SandboxUnavailable` whose message
says what is wrong and the command that fixes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from rstar.errors import SandboxUnavailable

BUILD_HINT = "build it with: rstar sandbox build"


def sandbox_files_dir() -> Path:
    """The directory with worker.py and the Dockerfile (checkout or installed wheel)."""
    import rstar

    pkg = Path(rstar.__file__).resolve().parent
    checkout = pkg.parent / "sandbox"
    if (checkout / "worker.py").is_file():
        return checkout
    installed = pkg / "_sandbox_files"
    if (installed / "worker.py").is_file():
        return installed
    raise SandboxUnavailable(
        f"the sandbox worker files are missing (looked in {checkout} and {installed}); "
        "reinstall rstar with: pip install --force-reinstall rstar"
    )


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(timeout: float = 30.0):
    """A ``docker.DockerClient`` that has answered a ping."""
    try:
        import docker
        import docker.errors
    except ImportError:
        raise SandboxUnavailable(
            "the Docker SDK for Python is not installed; install it with: pip install 'docker>=7'"
        ) from None
    host = _docker_host()
    try:
        client = docker.DockerClient(base_url=host, timeout=timeout)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise _explain(exc, host) from None
    except Exception as exc:  # requests / socket errors not wrapped by the SDK
        raise _explain(exc, host) from None


def _explain(exc: BaseException, host: str) -> SandboxUnavailable:
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if host.startswith("unix://"):
        path = host[len("unix://"):]
        if "permission denied" in low or (os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK)):
            return SandboxUnavailable(
                f"permission denied on the Docker socket {path}; add yourself to the docker group with: "
                "sudo usermod -aG docker $USER && newgrp docker"
            )
        if not os.path.exists(path):
            return SandboxUnavailable(
                f"the Docker daemon is not running (no socket at {path}); start it with: "
                "sudo systemctl start docker (or: sudo dockerd &)"
                + ("" if path == "/var/run/docker.sock" else "; or unset DOCKER_HOST to use the default socket")
            )
        if "connection refused" in low or "filenotfound" in low or "no such file" in low:
            return SandboxUnavailable(
                f"the Docker daemon is not answering on {path}; start it with: "
                "sudo systemctl start docker (or: sudo dockerd &)"
            )
    elif "permission denied" in low:
        return SandboxUnavailable(f"permission denied talking to the Docker engine at {host}; check DOCKER_HOST and your rights")
    return SandboxUnavailable(
        f"cannot reach the Docker engine at {host} ({_one_line(text)}); start it with: "
        "sudo systemctl start docker (or: sudo dockerd &)"
    )


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_image(client, image: str):
    """The image object, or SandboxUnavailable saying how to build it."""
    import docker.errors

    try:
        return client.images.get(image)
    except docker.errors.ImageNotFound:
        hint = BUILD_HINT if image == "rstar-sandbox:latest" else f"{BUILD_HINT} --image {image}"
        raise SandboxUnavailable(f"the sandbox image {image!r} is not present; {hint}") from None
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"cannot inspect the sandbox image {image!r}: {_one_line(exc)}") from None
