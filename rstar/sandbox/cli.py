"""`rstar sandbox build | check | run FILE.py`."""

from __future__ import annotations

import argparse
import sys
import time

from rstar.errors import SandboxUnavailable

SMOKE_PROGRAM = (
    "import sympy, numpy\n"
    "x = sympy.Symbol('x')\n"
    "print(sorted(sympy.solve(x**2 - 5*x + 6, x)), int(numpy.arange(4).sum()))\n"
)
SMOKE_EXPECTED = "[2, 3] 6"


def register(sub) -> None:
    p = sub.add_parser("sandbox", help="build and check the Docker sandbox that runs model-written code",
                       description="The hardened Docker sandbox that executes each step's Python.")
    ssub = p.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND")
    ssub.required = True

    b = ssub.add_parser("build", help="build the sandbox image (offline via debootstrap by default)",
                        description="Build the sandbox image. By default offline: Debian packages via "
                                    "debootstrap (needs root and a Debian mirror), then `docker import`. "
                                    "With --dockerfile: `docker build` from sandbox/Dockerfile (needs a registry).")
    b.add_argument("--image", default="rstar-sandbox:latest", help="image name (default: %(default)s)")
    b.add_argument("--dockerfile", action="store_true", help="build from the Dockerfile (pulls python:3.11-slim)")
    b.add_argument("--force", action="store_true", help="rebuild even if the image is up to date")
    b.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for debootstrap")
    b.add_argument("--suite", default="bookworm", choices=("bookworm", "trixie"),
                   help="Debian release of the offline build: bookworm (Python 3.11, default) or trixie "
                        "(Python 3.13)")
    b.set_defaults(func=cmd_build)

    c = ssub.add_parser("check", help="check the engine, the image, and that a smoke program runs",
                        description="Check the Docker engine and the image, run a smoke program, check that "
                                    "there is no network, and report the execution mode: incremental (a "
                                    "search step forks its parent step's live interpreter) or re-execution "
                                    "(every step re-runs its whole path).")
    c.add_argument("--image", default="rstar-sandbox:latest")
    c.add_argument("--no-incremental", action="store_true",
                   help="check re-execution mode (every step re-runs its path) instead of incremental mode")
    c.set_defaults(func=cmd_check)

    r = ssub.add_parser("run", help="run a Python file in the sandbox and print its output and status")
    r.add_argument("file", help="a Python file ('-' reads standard input)")
    r.add_argument("--image", default="rstar-sandbox:latest")
    r.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds (default: %(default)s)")
    r.set_defaults(func=cmd_run)


def cmd_build(args: argparse.Namespace) -> int:
    from rstar.sandbox import image

    image.build(args.image, dockerfile=args.dockerfile, force=args.force, mirror=args.mirror,
                suite=getattr(args, "suite", "bookworm"))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rstar.sandbox import SandboxConfig, SandboxPool, engine, image

    def ok(msg: str) -> None:
        print(f"ok    {msg}")

    client = engine.connect()
    ver = client.version()
    ok(f"Docker engine {ver.get('Version', '?')} reachable")
    engine.require_image(client, args.image)
    state = image.image_status(client, args.image, image.recipe_hash())
    if state == "stale":
        print(f"warn  image {args.image} was built from another worker.py; rebuild with: "
              f"rstar sandbox build --force" + ("" if args.image == "rstar-sandbox:latest" else f" --image {args.image}"))
    else:
        ok(f"image {args.image} present")
    t0 = time.perf_counter()
    want_incremental = not getattr(args, "no_incremental", False)
    with SandboxPool(size=1, config=SandboxConfig(image=args.image, incremental=want_incremental)) as pool:
        started = time.perf_counter() - t0
        res = pool.run([SMOKE_PROGRAM], timeout_s=10)[0]
        if res.status != "ok" or res.stdout.strip() != SMOKE_EXPECTED:
            raise SandboxUnavailable(
                f"the smoke program did not run in {args.image} (status {res.status}: "
                f"{res.error_line or res.stdout.strip()!r}); rebuild the image with: rstar sandbox build --force"
            )
        ok(f"container started in {started:.2f} s; smoke program (sympy + numpy) ran in "
           f"{res.duration_s * 1000:.1f} ms: {res.stdout.strip()}")
        probe = pool.run(["import socket\ns=socket.socket(); s.settimeout(1)\n"
                          "s.connect(('1.1.1.1', 53))\nprint('CONNECTED')"], timeout_s=5)[0]
        if "CONNECTED" in probe.stdout:
            raise SandboxUnavailable("the sandbox has network access; this should never happen: do not use it")
        ok("no network inside the sandbox")
        if pool.incremental:
            steps = [["x = 6", "y = x * 7", "print(y)"][:i + 1] for i in range(3)]
            for i, path in enumerate(steps):
                res = pool.run_steps([path], nodes=[("check", i, i - 1 if i else None)])[0]
            pool.release("check")
            if res.output != "42\n" or not res.exec.reused_state:
                raise SandboxUnavailable(
                    f"incremental mode does not work in {args.image} (status {res.status}, output "
                    f"{res.output!r}); rebuild the image with: rstar sandbox build, or run with --no-incremental")
            ok("mode: incremental (a step forks its parent step's live interpreter; "
               f"up to {pool.config.max_states} states per container)")
        elif want_incremental:
            print("warn  mode: re-execution (this machine's kernel or CPU has no seccomp support for node "
                  "states); every step re-runs its path")
        else:
            ok("mode: re-execution (--no-incremental): every step re-runs its path")
    print("sandbox ready")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rstar.sandbox import SandboxConfig, SandboxPool

    if args.file == "-":
        code = sys.stdin.read()
    else:
        try:
            with open(args.file, encoding="utf-8") as f:
                code = f.read()
        except OSError as exc:
            print(f"rstar: error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
    cfg = SandboxConfig(image=args.image, timeout_s=args.timeout, cpu_seconds=max(1, int(args.timeout + 0.999)))
    with SandboxPool(size=1, config=cfg) as pool:
        res = pool.run([code])[0]
    sys.stdout.write(res.stdout)
    if res.stdout and not res.stdout.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    if res.stderr:
        sys.stderr.write(res.stderr if res.stderr.endswith("\n") else res.stderr + "\n")
    line = f"[status: {res.status}, {res.duration_s * 1000:.1f} ms]"
    if res.status != "ok":
        line += f" {res.error_line or ''}"
    print(line, file=sys.stderr)
    return 0 if res.ok else 1
