"""The base model every trainer starts from, loaded with transformers on CPU or CUDA.

``load_base(spec)`` accepts what ``--base`` / ``--model`` accept:

* ``"default"``: the built-in GGUF (fetched once), dequantized by transformers;
* a ``.gguf`` path (``hf:``/``llamacpp:`` prefixes are accepted and dropped);
* a local HF model directory (including one written by ``rstar train`` with a merged model);
* an HF hub id (only where a hub can be reached).

GGUF loading needs the ``gguf`` package; transformers dequantizes the weights, so the
model is trainable. The dequantized model is cached once as an ordinary model directory
(``rstar.models.ensure_converted``: float32 for files under 512 MB, else bfloat16; loaded
as float32) so later loads skip the slow GGUF parsing and tokenizer conversion. Trainers must set CPU-safe defaults
themselves (bf16 only where the machine has fast bf16, no gradient checkpointing unless asked): see
``cpu_training_args``.
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


PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_PRECISION = "auto"


def fast_bf16() -> bool:
    """Whether this machine computes in bfloat16 faster than in float32: a CUDA GPU that supports
    it, or a CPU with AMX-BF16 or AVX512-BF16 (oneDNN runs torch's bf16 matmuls on them)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def use_bf16(precision: str = DEFAULT_PRECISION) -> bool:
    """``precision`` -> train with bfloat16 autocast? ``auto``: where :func:`fast_bf16`. The
    weights and the LoRA adapter stay float32 (mixed precision); only matmuls run in bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return fast_bf16()
    return precision == "bf16"


def add_precision_flag(p, default: str | None = DEFAULT_PRECISION, scope: str = "") -> None:
    """The ``--precision`` flag of every trainer (and of ``rstar evolve``, where None keeps the preset's)."""
    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help=f"{scope}training arithmetic: bf16 (bfloat16 matmuls, float32 weights and LoRA adapter), "
                        "fp32, or auto: bf16 where the GPU or CPU has fast bf16 (AMX-BF16, AVX512-BF16) "
                        + ("(default %(default)s)" if default else "(default: the preset's)"))


def cpu_training_args(precision: str = DEFAULT_PRECISION) -> dict:
    """TrainingArguments fields that trainers' GPU defaults get wrong on a CPU. ``precision``:
    see :func:`use_bf16` (TRL's configs default to bf16 even where it is slow or missing)."""
    on_gpu = device() == "cuda"
    return {
        "bf16": use_bf16(precision),
        "fp16": False,
        "gradient_checkpointing": False,
        "use_cpu": not on_gpu,
        "dataloader_num_workers": 0,
        "report_to": [],
    }
