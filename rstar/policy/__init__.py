"""Policy backends: the model that writes each step.

```python
from rstar.policy import Completion, Policy, load_policy, parse_backend_options
policy = load_policy(spec, options=parse_backend_options(["n_threads=2"]), **python_kwargs)
policy.format_chat(messages) -> str
policy.generate(prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None)
    -> list[list[Completion]]
policy.name; policy.close()
```

Spec forms (see :func:`parse_spec`):

======================================  ==========================================
``"default"``                           the built-in model (fetched once), llama.cpp
``"path/to/model.gguf"``                llama.cpp (also ``"llamacpp:PATH"``): the batched engine
                                        (:mod:`rstar.policy.llamacpp_batch`: many sequences per
                                        decode, KV cache kept per search node); the one-sequence
                                        backend with ``--backend-opt engine=sequential`` or the
                                        spec ``"llamacpp-seq:PATH"``
``"hf:<id or dir>"``                    transformers (also a local HF model dir;
                                        ``"hf:file.gguf"`` loads a GGUF with transformers;
                                        ``"hf:default"`` the built-in model, converted once)
``"vllm:<id or dir>"``                  vLLM offline engine (GPU, or vLLM's CPU build);
                                        ``"vllm:file.gguf"`` / ``"vllm:default"``: the GGUF
                                        converted once to a model directory (cached)
``"openai:http://host:port/v1[#model]"``  an OpenAI-compatible HTTP server
``"http(s)://host:port/v1[#model]"``      the same
``"org/name"`` (not a local path)       transformers, from the HF hub
``DIR`` holding ``rstar_model.json``    a policy trained by ``rstar train``: the spec and
                                        options it records (``hf:DIR`` / ``vllm:DIR``: its
                                        merged model on that backend)
``"scripted:module:attr"``              :class:`ScriptedPolicy` over the script ``module.attr``
                                        (tests and benchmarks; importable in every worker)
======================================  ==========================================

Backend options
---------------
``options`` (from ``--backend-opt KEY=VALUE`` or a recipe) are checked against the
backend's table :data:`BACKEND_OPTIONS`: an unknown name or a value of the wrong type is
a :class:`BackendOptionError` naming the valid ones. ``**opts`` are Python keyword
arguments for the backend's constructor and are not checked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from rstar.errors import ModelUnavailable, RstarError
from rstar.policy.base import CHATML_TEMPLATE, Completion, NodeRef, Policy, render_chat_template, split_at_stop
from rstar.policy.scripted import ScriptedPolicy

BACKENDS = ("llamacpp", "hf", "vllm", "openai")

TRAINED_MARKER = "rstar_model.json"


class BackendOptionError(RstarError):
    """A backend option has an unknown name or a value of the wrong type."""


# name -> (type, what it does). The names are the backend constructor's keyword arguments.
_SAMPLING = {
    "top_p": (float, "nucleus sampling mass"),
    "top_k": (int, "top-k sampling (0 or -1: off)"),
}
BACKEND_OPTIONS: dict[str, dict[str, tuple[type, str]]] = {
    "llamacpp": {
        "n_threads": (int, "CPU threads (default: RSTAR_THREADS or all cores)"),
        "n_ctx": (int, "context length in tokens"),
        "n_batch": (int, "prompt tokens decoded per batch"),
        "n_gpu_layers": (int, "layers offloaded to the GPU (-1: all)"),
        "lora_path": (str, "a GGUF LoRA adapter applied at load time"),
        "seed": (int, "the engine's seed"),
        "min_p": (float, "min-p sampling"),
        "repeat_penalty": (float, "repetition penalty (1.0: off)"),
        "engine": (str, "batch (default: many sequences per decode, KV cache per search node) or "
                        "sequential (one sequence at a time, the earlier backend)"),
        "parallel": (int, "batch engine: sequences decoded at once (its capacity), default 32"),
        "kv_budget": (int, "batch engine: token cells of the shared KV cache, default 32768"),
        "flash_attn": (bool, "batch engine: flash attention (default true)"),
        **_SAMPLING,
    },
    "hf": {
        "device": (str, "cpu, cuda, cuda:1, ..."),
        "dtype": (str, "float32, bfloat16, float16"),
        "batch_size": (int, "prompts per forward batch"),
        "n_threads": (int, "torch CPU threads"),
        "trust_remote_code": (bool, "run the model repository's own code"),
        **_SAMPLING,
    },
    "vllm": {
        "enforce_eager": (bool, "no CUDA graphs / compilation (fast start-up)"),
        "dtype": (str, "auto, bfloat16, float16, float32"),
        "max_model_len": (int, "context length in tokens"),
        "gpu_memory_utilization": (float, "share of GPU memory for weights and KV cache (GPU)"),
        "kv_cache_space": (int, "KV-cache size in GiB on CPU (sets VLLM_CPU_KVCACHE_SPACE)"),
        "tensor_parallel_size": (int, "GPUs to shard the model over"),
        "enable_prefix_caching": (bool, "reuse the KV cache of shared prompt prefixes"),
        "max_num_seqs": (int, "sequences scheduled at once"),
        "max_num_batched_tokens": (int, "tokens (prompt and generated) one engine step may compute; "
                                        "on CPU at least max_model_len"),
        "block_size": (int, "KV-cache block in tokens (prefix caching reuses whole blocks; CPU default 128)"),
        "enable_chunked_prefill": (bool, "prefill a long prompt over several steps (default: off on CPU, "
                                         "where a seeded prompt prefilled in parts crashes the engine)"),
        "expected_context": (int, "tokens a sequence is expected to reach, for capacity() "
                                  "(default max_model_len)"),
        "seed": (int, "the engine's seed"),
        "deterministic": (bool, "engine in this process, so seeded samples repeat exactly "
                                "(default: true on CPU, false on GPU)"),
        "min_p": (float, "min-p sampling"),
        **_SAMPLING,
    },
    "openai": {
        "timeout": (float, "seconds to wait for one response"),
        "connect_timeout": (float, "seconds to wait for a connection"),
        "concurrency": (int, "requests in flight at once"),
        "max_retries": (int, "retries of a failed request"),
        "stop_mode": (str, "auto, server or stream"),
        "top_p": _SAMPLING["top_p"],
    },
}
BACKEND_OPTIONS["default"] = BACKEND_OPTIONS["llamacpp"]
BACKEND_OPTIONS["llamacpp-seq"] = BACKEND_OPTIONS["llamacpp"]
_BATCH_ONLY = ("parallel", "kv_budget", "flash_attn")
_ALIASES = {"openai": {"max_concurrency": "concurrency"}, "vllm": {"kv_cache_gib": "kv_cache_space"}}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _literal(text: str) -> Any:
    """A command-line value as the type it reads as: bool, int, float, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_backend_options(items: Iterable[str] | None) -> dict[str, Any]:
    """``["enforce_eager=true", "max_model_len=2048", "dtype=bfloat16"]`` -> typed dict.

    Values read as bool (true/false), int, float or else string; a repeated key keeps
    the last value. Names are checked later, against the backend (:func:`check_options`).
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise BackendOptionError(
                f"backend option {item!r}: expected KEY=VALUE, e.g. --backend-opt n_threads=2")
        out[key] = _literal(value)
    return out


def _coerce(backend: str, key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    else:
        return str(value)
    raise BackendOptionError(
        f"backend option {key}={value!r} for {backend}: expected {kind.__name__}")


def check_options(backend: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate and type ``options`` for ``backend``; one clear line on an unknown name."""
    if not options:
        return {}
    table = BACKEND_OPTIONS.get(backend)
    if table is None:
        raise BackendOptionError(f"the {backend} backend takes no backend options (got {', '.join(options)})")
    aliases = _ALIASES.get(backend, {})
    out = {}
    for key, value in options.items():
        name = aliases.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name not in table:
            raise BackendOptionError(
                f"unknown backend option {key!r} for {backend}; valid: {', '.join(sorted(table))}")
        out[name] = _coerce(backend, name, value, table[name][0])
    return out


def parse_spec(spec: str) -> tuple[str, str]:
    """Map a policy spec to ``(backend, target)``.

    backend: one of BACKENDS, or "default", "scripted", "trained" (a directory holding
    ``rstar_model.json``, written by ``rstar train``).
    """
    s = str(spec).strip()
    if not s:
        raise ModelUnavailable("empty model spec")
    if s == "default":
        return "default", ""
    if s.startswith("llamacpp-seq:"):
        return "llamacpp-seq", s[len("llamacpp-seq:"):]
    for prefix in ("llamacpp:", "llama.cpp:", "gguf:"):
        if s.startswith(prefix):
            return "llamacpp", s[len(prefix):]
    if s.startswith("hf:"):
        return "hf", s[3:]
    if s.startswith("vllm:"):
        return "vllm", s[5:]
    if s.startswith("scripted:"):
        return "scripted", s[9:]
    if s.startswith("openai:"):
        return "openai", s[7:]
    if s.startswith(("http://", "https://")):
        return "openai", s
    if s.lower().endswith(".gguf"):
        return "llamacpp", s
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / TRAINED_MARKER).is_file():
            return "trained", s
        return "hf", s
    if p.exists():
        raise ModelUnavailable(f"{s}: not a .gguf file or a model directory")
    if s.count("/") == 1 and not s.startswith((".", "/", "~")):
        return "hf", s  # a hub id like Qwen/Qwen2.5-Math-1.5B-Instruct
    raise ModelUnavailable(
        f"unknown model spec {s!r}: use 'default', PATH.gguf, a model dir, hf:ID, vllm:ID or "
        "openai:http://host:port/v1")


def _converted(target: str, backend: str) -> str:
    """For vllm (and hf:default): a GGUF or 'default' becomes its cached converted directory."""
    from rstar import models

    if target in ("", "default"):
        gguf = models.ensure_default_model(progress=True)
    elif target.lower().endswith(".gguf"):
        gguf = Path(target).expanduser()
        if not gguf.is_file():
            raise ModelUnavailable(f"model file not found: {gguf}")
    else:
        return target
    out, made = models.ensure_converted(gguf, progress=True)
    print(f"rstar: {backend} cannot load GGUF; using {gguf.name} converted to {out}"
          f" ({'converted now' if made else 'cached'})", file=sys.stderr)
    return str(out)


def _llamacpp(path, kwargs: dict) -> Policy:
    """A GGUF on llama.cpp: the batched engine unless ``engine=sequential``."""
    engine = str(kwargs.pop("engine", None) or "batch").strip().lower()
    if engine == "sequential":
        from rstar.policy.llamacpp import LlamaCppPolicy

        extra = [k for k in _BATCH_ONLY if k in kwargs]
        if extra:
            raise BackendOptionError(f"backend option {extra[0]} applies to engine=batch only, not engine=sequential")
        return LlamaCppPolicy(path, **kwargs)
    if engine != "batch":
        raise BackendOptionError(f"backend option engine={engine!r}: expected batch or sequential")
    from rstar.policy.llamacpp_batch import LlamaBatchPolicy

    return LlamaBatchPolicy(path, **kwargs)


def load_policy(spec: str = "default", options: Mapping[str, Any] | None = None, **opts) -> Policy:
    """Build the policy named by ``spec``.

    ``options``: user-given backend options (strings from the CLI or typed from a recipe),
    validated against :data:`BACKEND_OPTIONS`; ``opts``: Python keyword arguments for the
    backend's constructor, passed as they are (``options`` win on a clash).
    """
    backend, target = parse_spec(spec)
    if backend in ("trained", "hf", "vllm") and target and \
            (Path(target).expanduser() / TRAINED_MARKER).is_file():
        # a policy trained by `rstar train`: its card names the base, adapter and merged model
        from rstar.adapters import trained_policy_spec

        where = Path(target).expanduser()
        inner_spec, inner_options = trained_policy_spec(where, None if backend == "trained" else backend)
        inner_target = Path(parse_spec(inner_spec)[1]).expanduser()
        if inner_target.is_dir() and inner_target.resolve() == where.resolve():
            raise ModelUnavailable(f"{where}/{TRAINED_MARKER} points at its own directory")
        merged = {**dict(inner_options or {}), **dict(options or {})}
        return load_policy(inner_spec, options=merged, **opts)
    kwargs = {**opts, **check_options(backend, options)}
    if backend == "default":
        from rstar.models import ensure_default_model

        return _llamacpp(ensure_default_model(progress=True), kwargs)
    if backend == "scripted":
        import importlib

        module, _, attr = target.partition(":")
        try:
            script = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ModelUnavailable(f"scripted:{target}: cannot import the script ({exc})") from None
        return ScriptedPolicy(script, name=f"scripted:{target}", **kwargs)
    if backend in ("llamacpp", "llamacpp-seq"):
        if backend == "llamacpp-seq":
            kwargs.setdefault("engine", "sequential")
        return _llamacpp(target, kwargs)
    if backend == "hf":
        from rstar.policy.hf import HFPolicy

        if target in ("", "default"):
            target = _converted(target, "hf")
        return HFPolicy(target, **kwargs)
    if backend == "vllm":
        from rstar.policy.vllm import VLLMPolicy, _import_vllm

        _import_vllm()  # the install hint before any conversion work
        return VLLMPolicy(_converted(target, "vllm"), **kwargs)
    from rstar.policy.openai import OpenAIPolicy

    return OpenAIPolicy(target, **kwargs)


__all__ = [
    "BACKENDS", "BACKEND_OPTIONS", "BackendOptionError", "CHATML_TEMPLATE", "Completion", "NodeRef", "Policy",
    "ScriptedPolicy", "check_options", "load_policy", "parse_backend_options", "parse_spec",
    "render_chat_template", "split_at_stop",
]
