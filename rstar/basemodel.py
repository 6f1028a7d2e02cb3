"""Base models loaded with transformers (CPU or CUDA), and what names a base model for good.

Below both the runtime (``rstar.ppm``'s LoRA scorer, ``rstar.adapters``) and the trainers
(``rstar.train``), which all start from a base model.

``load_base(spec)`` accepts what ``--base`` / ``--model`` accept:

* ``"default"``: the built-in GGUF (fetched once), dequantized by transformers;
* a ``.gguf`` path (``hf:``/``llamacpp:`` prefixes are accepted and dropped);
* a local HF model directory (including one written by ``rstar train`` with a merged model);
* an HF hub id (only where a hub can be reached).

GGUF loading needs the ``gguf`` package; transformers dequantizes the weights, so the
model is trainable. The dequantized model is cached once as an ordinary model directory
(``rstar.models.ensure_converted``: float32 for files under 512 MB, else bfloat16; loaded
as float32) so later loads skip the slow GGUF parsing and tokenizer conversion. Trainers set CPU-safe defaults
themselves (``rstar.train.base.cpu_training_args``).

``base_identity(spec)`` names a base model for good (a GGUF file's path, size and sha256), so a
trained scorer can refuse to run on another base than its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rstar.errors import ModelUnavailable


def resolve_base(spec: str) -> tuple[str, str | None]:
    """``spec`` -> ``(directory_or_id, gguf_file_or_None)`` for ``from_pretrained``."""
    s = str(spec).strip()
    for prefix in ("hf:", "llamacpp:", "gguf:"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    if s == "default":
        from rstar.models import ensure_default_model

        s = str(ensure_default_model(progress=True))
    p = Path(s).expanduser()
    if s.lower().endswith(".gguf"):
        if not p.is_file():
            raise ModelUnavailable(f"{s}: no such GGUF file")
        return str(p.parent), p.name
    if p.is_dir():
        return str(p), None
    if p.exists():
        raise ModelUnavailable(f"{s}: not a .gguf file or a model directory")
    return s, None


def _loadable(spec: str) -> tuple[str, str | None]:
    """Like ``resolve_base``, with a GGUF replaced by its cached converted directory."""
    where, gguf = resolve_base(spec)
    if not gguf:
        return where, None
    from rstar.models import ensure_converted

    path = Path(where) / gguf
    dtype = "float32" if path.stat().st_size < 512 * 2**20 else "bfloat16"
    try:
        out, _ = ensure_converted(path, dtype=dtype, progress=True)
    except ModelUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line for any conversion failure
        raise ModelUnavailable(f"cannot load {path} with transformers: {type(exc).__name__}: {exc}") from None
    return str(out), None


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    where, gguf = _loadable(spec)
    kw = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(where, **kw)
    except Exception as exc:  # noqa: BLE001 - one clear line for any loader failure
        raise ModelUnavailable(f"cannot load the tokenizer of {spec}: {type(exc).__name__}: {exc}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(spec: str, kind: str = "causal", dtype: Any = None, **kw):
    """``(model, tokenizer)`` for ``spec``. ``kind``: ``"causal"`` (a language model) or
    ``"score"`` (``AutoModelForSequenceClassification`` with one label: a reward head)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    where, gguf = _loadable(spec)
    tok = load_tokenizer(spec)
    args: dict[str, Any] = {"dtype": dtype or torch.float32}
    if gguf:
        args["gguf_file"] = gguf
    args.update(kw)
    cls = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    if kind == "score":
        args.setdefault("num_labels", 1)
    try:
        model = cls.from_pretrained(where, **args)
    except Exception as exc:  # noqa: BLE001
        raise ModelUnavailable(f"cannot load {spec} as a base model: {type(exc).__name__}: {exc}") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


# ---------------------------------------------------------------- identity


def base_identity(spec: str) -> dict:
    """What names a base model for good: a GGUF file's path, size and sha256; a directory's path
    and weight-file sizes; an HF id as given."""
    from rstar.models import sha256_file

    where, gguf = resolve_base(spec)
    if gguf:
        p = Path(where) / gguf
        return {"spec": str(spec), "path": str(p.resolve()), "gguf": True, "size": p.stat().st_size,
                "sha256": sha256_file(p)}
    d = Path(where)
    if d.is_dir():
        weights = sorted(f for f in d.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf"))
        return {"spec": str(spec), "path": str(d.resolve()), "gguf": False,
                "size": sum(f.stat().st_size for f in weights), "sha256": None}
    return {"spec": str(spec), "path": where, "gguf": False, "size": None, "sha256": None}


def same_base(a: dict, b: dict) -> bool:
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return a.get("path") == b.get("path") and a.get("size") == b.get("size")


def describe_base(b: dict) -> str:
    tail = f", sha256 {b['sha256'][:12]}" if b.get("sha256") else ""
    return f"{Path(b.get('path') or b.get('spec', '?')).name}{tail}"
