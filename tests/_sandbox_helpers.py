"""Shared by the sandbox tests: reach Docker + the image, or skip (locally) / fail (CI)."""

from __future__ import annotations

import os

import pytest

IMAGE = os.environ.get("RSTAR_SANDBOX_IMAGE", "rstar-sandbox:latest")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_sandbox() -> None:
    """Skip with the reason locally; in CI (env CI set) fail: these tests must run there."""
    from rstar.errors import SandboxUnavailable
    from rstar.sandbox import engine

    try:
        client = engine.connect()
        engine.require_image(client, IMAGE)
    except SandboxUnavailable as exc:
        msg = (f"Docker sandbox unavailable: {exc}. The sandbox tests need a running Docker engine and the image "
               f"(run: rstar sandbox build)")
        if in_ci():
            pytest.fail("CI is set, so the sandbox tests must run, but: " + msg, pytrace=False)
        pytest.skip(msg)


def pool_containers(pool_id: str) -> list[dict]:
    from rstar.sandbox import engine

    client = engine.connect()
    return client.api.containers(all=True, filters={"label": f"rstar.pool={pool_id}"})
