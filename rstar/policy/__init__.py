"""Policy backends: the model that writes each step.

```python
from rstar.policy import Completion, Policy, load_policy
policy = load_policy(spec, **opts)
policy.format_chat(messages) -> str
policy.generate(prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None)
    -> list[list[Completion]]
policy.name; policy.close()
```

Spec forms (see :func:`parse_spec`):

======================================  ==========================================
``"default"``                           the built-in model (fetched once), llama.cpp
``"path/to/model.gguf"``                llama.cpp (also ``"llamacpp:PATH"``)
``"hf:<id or dir>"``                    transformers (also a local HF model dir;
                                        ``"hf:file.gguf"`` loads a GGUF with transformers)
``"vllm:<id or dir>"``                  vLLM offline engine (CUDA)
``"openai:http://host:port/v1[#model]"``  an OpenAI-compatible HTTP server
``"http(s)://host:port/v1[#model]"``      the same
``"org/name"`` (not a local path)       transformers, from the HF hub
``"scripted:module:attr"``              :class:`ScriptedPolicy` over the script ``module.attr``
                                        (tests and benchmarks; importable in every worker)
======================================  ==========================================
"""

from __future__ import annotations

from pathlib import Path

from rstar.errors import ModelUnavailable
from rstar.policy.base import CHATML_TEMPLATE, Completion, Policy, render_chat_template, split_at_stop
from rstar.policy.scripted import ScriptedPolicy

BACKENDS = ("llamacpp", "hf", "vllm", "openai")


def parse_spec(spec: str) -> tuple[str, str]:
    """Map a policy spec to ``(backend, target)``; backend in BACKENDS (or "default")."""
    s = str(spec).strip()
    if not s:
        raise ModelUnavailable("empty model spec")
    if s == "default":
        return "default", ""
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
        return "hf", s
    if p.exists():
        raise ModelUnavailable(f"{s}: not a .gguf file or a model directory")
    if s.count("/") == 1 and not s.startswith((".", "/", "~")):
        return "hf", s  # a hub id like Qwen/Qwen2.5-Math-1.5B-Instruct
    raise ModelUnavailable(
        f"unknown model spec {s!r}: use 'default', PATH.gguf, a model dir, hf:ID, vllm:ID or "
        "openai:http://host:port/v1")


def load_policy(spec: str = "default", **opts) -> Policy:
    """Build the policy named by ``spec``; ``opts`` go to the backend's constructor."""
    backend, target = parse_spec(spec)
    if backend == "default":
        from rstar.models import ensure_default_model
        from rstar.policy.llamacpp import LlamaCppPolicy

        return LlamaCppPolicy(ensure_default_model(progress=True), **opts)
    if backend == "scripted":
        import importlib

        module, _, attr = target.partition(":")
        try:
            script = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ModelUnavailable(f"scripted:{target}: cannot import the script ({exc})") from None
        return ScriptedPolicy(script, name=f"scripted:{target}", **opts)
    if backend == "llamacpp":
        from rstar.policy.llamacpp import LlamaCppPolicy

        return LlamaCppPolicy(target, **opts)
    if backend == "hf":
        from rstar.policy.hf import HFPolicy

        return HFPolicy(target, **opts)
    if backend == "vllm":
        from rstar.policy.vllm import VLLMPolicy

        return VLLMPolicy(target, **opts)
    from rstar.policy.openai import OpenAIPolicy

    return OpenAIPolicy(target, **opts)


__all__ = [
    "BACKENDS", "CHATML_TEMPLATE", "Completion", "Policy", "ScriptedPolicy", "load_policy",
    "parse_spec", "render_chat_template", "split_at_stop",
]
