"""Building the sandbox image: offline (debootstrap + docker import) or from the Dockerfile.

Offline build, for machines that reach a Debian mirror but no image registry:

1. ``debootstrap --variant=minbase --include=python3-minimal,python3-sympy,python3-numpy
   bookworm ROOTFS MIRROR`` (cached in ``~/.cache/rstar/sandbox-rootfs``; needs root);
2. trim docs, man pages and apt lists; copy ``worker.py`` to ``/opt/rstar/``;
3. ``tar -C ROOTFS -c . | docker import --change ... - IMAGE``.

The image carries the label ``rstar.worker.sha256`` (hash of worker.py and of
this recipe); a build whose image already has that label does nothing, so the
command is idempotent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from rstar.errors import SandboxUnavailable
from rstar.sandbox import engine

DEFAULT_IMAGE = "rstar-sandbox:latest"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"               # Debian 12, Python 3.11 (the default: measured faster here, see README)
SUITES = ("bookworm", "trixie")  # trixie: Debian 13, Python 3.13
PACKAGES = ("python3-minimal", "python3-sympy", "python3-numpy")
RECIPE_VERSION = "1"
WORKER_IN_IMAGE = "/opt/rstar/worker.py"
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
        "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old", "var/log")

Progress = Callable[[str], None]


def _default_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rstar"


def recipe_hash(files: Path | None = None, suite: str = SUITE) -> str:
    files = files or engine.sandbox_files_dir()
    h = hashlib.sha256()
    h.update(RECIPE_VERSION.encode())
    h.update((files / "worker.py").read_bytes())
    if suite != SUITE:
        h.update(suite.encode())
    return h.hexdigest()[:16]


def image_status(client, image: str, want: str) -> str:
    """'missing', 'current' or 'stale'."""
    import docker.errors

    try:
        img = client.images.get(image)
    except docker.errors.ImageNotFound:
        return "missing"
    labels = (img.attrs.get("Config") or {}).get("Labels") or {}
    return "current" if labels.get("rstar.worker.sha256") == want else "stale"


def build(image: str = DEFAULT_IMAGE, dockerfile: bool = False, force: bool = False,
          mirror: str = DEFAULT_MIRROR, rootfs: Path | None = None,
          progress: Progress = _default_progress, suite: str = SUITE) -> str:
    """Build the image if it is missing or out of date; returns what was done. ``suite``:
    the Debian release of the offline build (bookworm: Python 3.11; trixie: 3.13)."""
    if suite not in SUITES:
        raise SandboxUnavailable(f"unknown Debian suite {suite!r}; one of: {', '.join(SUITES)}")
    files = engine.sandbox_files_dir()
    client = engine.connect()
    want = recipe_hash(files, suite)
    state = image_status(client, image, want)
    if state == "current" and not force:
        progress(f"image {image} is up to date (worker {want}); nothing to do (--force rebuilds)")
        return "current"
    if dockerfile:
        _build_dockerfile(client, image, files, want, progress)
    else:
        default_rootfs = cache_dir() / ("sandbox-rootfs" if suite == SUITE else f"sandbox-rootfs-{suite}")
        _build_offline(image, files, want, mirror, rootfs or default_rootfs, force, progress, suite)
    if image_status(client, image, want) != "current":
        raise SandboxUnavailable(f"building {image} finished but the image is not there; run with --force")
    progress(f"built {image} (worker {want}); check it with: rstar sandbox check")
    return "built"


def _labels_and_changes(want: str) -> list[str]:
    return [
        f"LABEL rstar.worker.sha256={want}",
        "USER 65534:65534",
        "WORKDIR /tmp",
        "ENV PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 HOME=/tmp "
        "PATH=/usr/local/bin:/usr/bin:/bin",
        f'CMD ["python3", "-I", "{WORKER_IN_IMAGE}"]',
    ]


def _build_dockerfile(client, image: str, files: Path, want: str, progress: Progress) -> None:
    import docker.errors

    progress(f"building {image} from {files / 'Dockerfile'} (pulls python:3.11-slim and pip packages)")
    try:
        for chunk in client.api.build(path=str(files), tag=image, rm=True, decode=True,
                                      labels={"rstar.worker.sha256": want}):
            if "stream" in chunk and chunk["stream"].strip():
                progress("  " + chunk["stream"].rstrip())
            if "error" in chunk:
                raise SandboxUnavailable(
                    f"docker build failed: {engine._one_line(chunk['error'])}; without registry access "
                    "build offline with: rstar sandbox build"
                )
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(
            f"docker build failed: {engine._one_line(exc)}; without registry access build offline with: "
            "rstar sandbox build"
        ) from None


def _run(cmd: list[str], progress: Progress, what: str) -> None:
    progress(f"  $ {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        if line.startswith(("I: Retrieving", "I: Validating", "I: Installing", "I: Configuring",
                            "I: Unpacking the base", "I: Base system", "E:", "W:")):
            progress("    " + line)
    if proc.wait() != 0:
        raise SandboxUnavailable(f"{what} failed (exit {proc.returncode}): {engine._one_line(' | '.join(tail[-3:]))}")


def _build_offline(image: str, files: Path, want: str, mirror: str, rootfs: Path, force: bool,
                   progress: Progress, suite: str = SUITE) -> None:
    marker = rootfs / ".rstar-rootfs-complete"
    if force and rootfs.exists():
        progress(f"removing cached root filesystem {rootfs}")
        shutil.rmtree(rootfs)
    if not marker.exists():
        if os.geteuid() != 0:
            raise SandboxUnavailable(
                "the offline image build runs debootstrap, which needs root; run: sudo rstar sandbox build "
                "(or, with registry access: rstar sandbox build --dockerfile)"
            )
        if shutil.which("debootstrap") is None:
            raise SandboxUnavailable(
                "debootstrap is not installed; install it with: sudo apt-get install -y debootstrap "
                "(or, with registry access: rstar sandbox build --dockerfile)"
            )
        partial = rootfs.with_name(rootfs.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.parent.mkdir(parents=True, exist_ok=True)
        progress(f"step 1/3: debootstrap {suite} with {', '.join(PACKAGES)} from {mirror} "
                 f"into {rootfs} (a few minutes)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(partial), mirror],
             progress, "debootstrap")
        for rel in TRIM:
            p = partial / rel
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                p.mkdir(parents=True, exist_ok=True)
        if rootfs.exists():
            shutil.rmtree(rootfs)
        partial.rename(rootfs)
        marker.write_text(f"{suite} {','.join(PACKAGES)}\n")
    else:
        progress(f"step 1/3: using the cached root filesystem {rootfs} (--force rebuilds it)")

    progress(f"step 2/3: installing the worker at {WORKER_IN_IMAGE}")
    dest = rootfs / WORKER_IN_IMAGE.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files / "worker.py", dest)
    os.chmod(dest, 0o644)
    os.chmod(dest.parent, 0o755)

    progress(f"step 3/3: importing the root filesystem as {image}")
    changes = _labels_and_changes(want)
    docker_cli = shutil.which("docker")
    if docker_cli:
        cmd = [docker_cli, "import"]
        for c in changes:
            cmd += ["--change", c]
        cmd += ["-", image]
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--exclude=./.rstar-rootfs-complete", "-c", "."],
                               stdout=subprocess.PIPE)
        imp = subprocess.run(cmd, stdin=tar.stdout, capture_output=True, text=True)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise SandboxUnavailable(f"docker import failed: {engine._one_line(imp.stderr or imp.stdout)}")
    else:  # no CLI: the SDK, from a temporary tar file
        client = engine.connect(timeout=600)
        with tempfile.TemporaryFile() as tmp:
            subprocess.run(["tar", "-C", str(rootfs), "--exclude=./.rstar-rootfs-complete", "-c", "."],
                           stdout=tmp, check=True)
            tmp.seek(0)
            repo, _, tag = image.partition(":")
            client.api.import_image_from_stream(tmp, repository=repo, tag=tag or "latest", changes=changes)
