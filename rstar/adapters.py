"""Trained policies back into the search: LoRA adapters for every backend.

A training output directory (``rstar train sft|dpo``, a round of ``rstar evolve``) holds:

* ``adapter/``: the peft LoRA adapter (transformers, vLLM's LoRA support);
* ``adapter.gguf``: the same adapter as a GGUF LoRA, written when the base is a GGUF
  file, so llama.cpp applies it at load time on the quantized base
  (``Llama(model_path=BASE, lora_path=ADAPTER)``);
* ``merged/`` (optional, ``--merge``): base + adapter merged into one HF model directory;
* ``rstar_model.json``: what the directory holds, read by :func:`trained_policy_spec`::

      {"kind": "lora", "base": "...", "adapter_hf": "adapter", "adapter_gguf": "adapter.gguf",
       "merged": null, "trainer": "sft", ...}

  Paths inside it are relative to the directory, so a directory can be moved.

The GGUF LoRA is written with the ``gguf`` package: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and per adapted weight ``W`` of
the base two tensors ``<gguf name of W>.lora_a`` (``r x in``) and ``.lora_b``
(``out x r``), stored in peft's row-major layout; llama.cpp computes
``W x + (alpha / r) * B (A x)``.  llama.cpp's converter permutes the rows of the
query and key projections of Llama-architecture models (its rotary layout); the
same permutation is applied to ``B`` here.  Adapters of the embeddings or of
the output head are refused (llama.cpp cannot apply them), so trainers target
only the linear layers inside the blocks (:func:`lora_target_modules`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from rstar.errors import ModelUnavailable, RstarError

MODEL_CARD = "rstar_model.json"

# Architectures whose GGUF names and layouts are handled here. llama.cpp's HF converter
# permutes q/k rows for "llama" (Llama, Mistral, SmolLM ...); qwen2/qwen3 keep HF's layout.
_PERMUTE_QK = {"llama"}
_SUPPORTED_ARCHS = {"llama", "qwen2", "qwen3"}
# module names that must never carry a LoRA for llama.cpp
_NEVER_ADAPT = ("embed", "lm_head", "wte", "wpe", "score", "output")


class AdapterError(RstarError):
    """A LoRA adapter cannot be converted or applied."""


# ---------------------------------------------------------------- targets


def lora_target_modules(model) -> list[str]:
    """Names (last component) of the linear layers inside the transformer blocks:
    the LoRA targets that llama.cpp can apply. Embeddings and the output head are left out."""
    import torch

    names: set[str] = set()
    for full, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        last = full.rsplit(".", 1)[-1]
        if any(bad in last for bad in _NEVER_ADAPT) or not re.search(r"\.\d+\.", full):
            continue  # outside the numbered blocks: embeddings, head, projectors
        names.add(last)
    if not names:
        raise AdapterError(f"found no linear layers inside the blocks of {type(model).__name__} to adapt")
    return sorted(names)


def lora_config(model, r: int = 16, alpha: int = 32, dropout: float = 0.05):
    """A peft ``LoraConfig`` for a causal LM that llama.cpp can apply (no embeddings, no head)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules=lora_target_modules(model))


# ---------------------------------------------------------------- GGUF LoRA


def _gguf_meta(base_gguf: Path) -> dict[str, Any]:
    import gguf

    try:
        reader = gguf.GGUFReader(str(base_gguf))
    except Exception as exc:  # noqa: BLE001 - any reader failure is one message
        raise AdapterError(f"{base_gguf}: cannot read the base GGUF ({type(exc).__name__}: {exc})") from None

    def get(key: str, default=None):
        field = reader.get_field(key)
        return default if field is None else field.contents()

    arch = get("general.architecture")
    if not arch:
        raise AdapterError(f"{base_gguf}: no general.architecture in the GGUF metadata")
    n_head = get(f"{arch}.attention.head_count")
    return {
        "arch": str(arch),
        "n_blocks": int(get(f"{arch}.block_count", 0)),
        "n_head": None if n_head is None else int(n_head),
        "n_head_kv": int(get(f"{arch}.attention.head_count_kv", n_head or 0) or 0) or None,
    }


def _permute_rows(w, n_head: int):
    """llama.cpp's rotary row order for a q/k projection's output rows (applied to LoRA B)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise AdapterError(f"cannot permute {rows} rows over {n_head} heads")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# HF model_type -> llama.cpp architecture name
_HF_TO_GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def _meta_from_config(config) -> dict[str, Any] | None:
    """The GGUF facts the converter needs, from the HF config of the (GGUF-loaded) base: reading
    them from the GGUF itself parses its whole vocabulary (36 s for SmolLM2 on a loaded machine)."""
    arch = _HF_TO_GGUF_ARCH.get(getattr(config, "model_type", None))
    if arch is None:
        return None
    n_head = int(config.num_attention_heads)
    return {"arch": arch, "n_blocks": int(config.num_hidden_layers), "n_head": n_head,
            "n_head_kv": int(getattr(config, "num_key_value_heads", None) or n_head)}


def lora_to_gguf(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path,
                 dtype: str = "f32", base_config=None) -> Path:
    """Write the peft LoRA in ``adapter_dir`` as a GGUF LoRA adapter for the base GGUF ``base_gguf``.
    ``base_config``: the base's HF config when at hand (else the GGUF's metadata is read)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir, base_gguf, out_path = Path(adapter_dir), Path(base_gguf), Path(out_path)
    cfg_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise AdapterError(f"{adapter_dir}: not a peft adapter (needs adapter_config.json and "
                           "adapter_model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters convert to GGUF")
    if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AdapterError(f"{cfg_path}: DoRA and per-module ranks/alphas cannot be written as a GGUF LoRA")
    r = int(cfg["r"])
    alpha = float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # rsLoRA scales by alpha/sqrt(r); llama.cpp by alpha/r
    meta = (_meta_from_config(base_config) if base_config is not None else None) or _gguf_meta(base_gguf)
    arch = meta["arch"]
    if arch not in _SUPPORTED_ARCHS:
        raise AdapterError(f"{base_gguf}: architecture {arch!r} is not supported for GGUF LoRA adapters "
                           f"({', '.join(sorted(_SUPPORTED_ARCHS))}); use the merged directory (--merge) with "
                           "the transformers backend instead")
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    name_map = gguf.get_tensor_name_map(arch_enum, meta["n_blocks"])

    tensors = load_file(str(weights))
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        for part, tag in ((".lora_A.weight", "a"), (".lora_B.weight", "b")):
            if key.endswith(part):
                hf = key[: -len(part)]
                break
        else:
            if any(bad in key for bad in ("embed", "lm_head")):
                raise AdapterError(f"{weights}: {key} adapts the embeddings or the output head, which llama.cpp "
                                   "cannot apply; train with rstar.adapters.lora_target_modules()")
            raise AdapterError(f"{weights}: tensor {key!r} is not a LoRA A/B matrix (DoRA and trained biases "
                               "cannot be applied by llama.cpp)")
        if hf.startswith("base_model.model."):
            hf = hf[len("base_model.model."):]
        pairs.setdefault(hf, {})[tag] = value
    if not pairs:
        raise AdapterError(f"{weights}: holds no LoRA tensors")
    np_dtype = {"f32": np.float32, "f16": np.float16}[dtype]
    out_tensors = []  # everything is checked before a byte is written
    for hf in sorted(pairs):
        ab = pairs[hf]
        if set(ab) != {"a", "b"}:
            raise AdapterError(f"{weights}: {hf} has only lora_{''.join(ab).upper()}")
        if any(bad in hf.rsplit(".", 1)[-1] for bad in _NEVER_ADAPT):
            raise AdapterError(f"{weights}: {hf} adapts the embeddings or the output head, which llama.cpp "
                               "cannot apply; train with rstar.adapters.lora_target_modules()")
        name = name_map.get_name(hf + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise AdapterError(f"{weights}: no GGUF tensor of architecture {arch} matches {hf}")
        a, b = ab["a"].astype(np.float32), ab["b"].astype(np.float32)
        if a.shape[0] != r or b.shape[1] != r:
            raise AdapterError(f"{weights}: {hf} has shapes {a.shape}, {b.shape} for rank {r}")
        if arch in _PERMUTE_QK and meta["n_head"]:
            if hf.endswith("q_proj"):
                b = _permute_rows(b, meta["n_head"])
            elif hf.endswith("k_proj"):
                b = _permute_rows(b, meta["n_head_kv"] or meta["n_head"])
        out_tensors.append((f"{name}.lora_a", a))
        out_tensors.append((f"{name}.lora_b", b))
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(f"rstar LoRA r={r}")
    for name, t in out_tensors:
        writer.add_tensor(name, np.ascontiguousarray(t.astype(np_dtype)))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out_path)
    return out_path


# ---------------------------------------------------------------- base


def load_dense_base(spec: str):
    """``rstar.basemodel.load_base`` with transformers' GGUF quantizer detached: a GGUF is loaded
    as float weights, but the quantizer left on the model makes Trainer refuse to train it and
    save_pretrained refuse to save it."""
    from rstar.basemodel import load_base

    model, tok = load_base(spec)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer.quantization_config, "quant_method", None) is not None \
            and str(quantizer.quantization_config.quant_method).lower().endswith("gguf"):
        import torch

        if any(not p.dtype.is_floating_point for p in model.parameters()):
            raise AdapterError(f"{spec}: transformers kept GGUF blocks quantized; cannot train on them")
        quantizer.remove_quantization_config(model)
        assert all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in model.parameters())
    return model, tok


# ---------------------------------------------------------------- merge


def merge_adapter(base_spec: str, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Base + adapter merged into a plain HF model directory (for transformers and vLLM)."""
    from peft import PeftModel

    model, tok = load_dense_base(base_spec)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


# ---------------------------------------------------------------- the card


def base_gguf_path(base_spec: str) -> Path | None:
    """The GGUF file behind a base spec, or None for an HF directory or id."""
    from rstar.basemodel import resolve_base

    where, gguf_file = resolve_base(base_spec)
    return Path(where) / gguf_file if gguf_file else None


def save_trained_policy(model, tokenizer, out_dir: str | Path, base_spec: str, *, trainer: str,
                        merge: bool = False, extra: dict | None = None) -> dict:
    """Save a peft-wrapped policy in every form the backends load, and write ``rstar_model.json``.

    ``model`` is a ``PeftModel`` (the adapter is saved; the base is named by ``base_spec``).
    Returns the card."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter = out_dir / "adapter"
    model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    base_gguf = base_gguf_path(base_spec)
    card: dict[str, Any] = {"kind": "lora", "trainer": trainer, "base": str(base_gguf or base_spec),
                            "adapter_hf": "adapter", "adapter_gguf": None, "merged": None}
    if base_gguf is not None:
        base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
        lora_to_gguf(adapter, base_gguf, out_dir / "adapter.gguf", base_config=getattr(base_model, "config", None))
        card["adapter_gguf"] = "adapter.gguf"
    if merge or base_gguf is None:  # without a GGUF base, the merged directory is how backends load it
        merge_adapter(base_spec, adapter, out_dir / "merged")
        card["merged"] = "merged"
    card.update(extra or {})
    tmp = out_dir / (MODEL_CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, default=str))
    tmp.replace(out_dir / MODEL_CARD)
    return card


def read_card(directory: str | Path) -> dict:
    path = Path(directory) / MODEL_CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelUnavailable(f"{directory}: no {MODEL_CARD}; not a directory written by rstar train") from None
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{path}: unreadable ({exc}); re-run the training that wrote it") from None
    if card.get("kind") != "lora" or not card.get("base"):
        raise ModelUnavailable(f"{path}: kind {card.get('kind')!r} without a base; expected a LoRA card")
    return card


def is_trained_policy(path: str | Path) -> bool:
    return (Path(path) / MODEL_CARD).is_file()


def trained_policy_spec(directory: str | Path, backend: str | None = None) -> tuple[str, dict]:
    """A training output directory -> ``(backend_spec, options)`` for ``rstar.policy.load_policy``.

    ``backend``: ``None`` (llama.cpp with the GGUF adapter when there is one, else transformers),
    ``"llamacpp"``, ``"hf"`` or ``"vllm"``. llama.cpp gets the base GGUF and
    ``{"lora_path": adapter.gguf}``; transformers and vLLM get the merged directory (always
    written when the base is not a GGUF file, with ``--merge`` otherwise)."""
    d = Path(directory)
    card = read_card(d)

    def rel(key: str) -> Path | None:
        v = card.get(key)
        if not v:
            return None
        p = Path(v)
        return p if p.is_absolute() else d / p

    base, gguf_adapter, merged = card["base"], rel("adapter_gguf"), rel("merged")
    if backend is None:
        backend = "llamacpp" if gguf_adapter is not None else "hf"
    if backend == "llamacpp":
        if gguf_adapter is None or not gguf_adapter.is_file():
            raise ModelUnavailable(f"{d}: no GGUF adapter for llama.cpp (the base {base} is not a GGUF file); "
                                   f"use hf:{d}")
        return f"llamacpp:{base}", {"lora_path": str(gguf_adapter)}
    if backend in ("hf", "vllm"):
        if merged is None or not merged.is_dir():
            raise ModelUnavailable(f"{d}: no merged model directory for {backend}; re-run the training with "
                                   "--merge (or use the llama.cpp adapter)")
        return f"{backend}:{merged}", {}
    raise ModelUnavailable(f"unknown backend {backend!r} for a trained policy: llamacpp, hf or vllm")


def load_trained_hf(directory: str | Path):
    """``(model, tokenizer)`` of a trained policy in transformers: the base with the peft adapter
    merged in memory (for tests and evaluation; backends load the merged directory)."""
    from peft import PeftModel

    d = Path(directory)
    card = read_card(d)
    model, tok = load_dense_base(card["base"])
    model = PeftModel.from_pretrained(model, str(d / card.get("adapter_hf", "adapter"))).merge_and_unload()
    model.eval()
    return model, tok
