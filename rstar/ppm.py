"""Model scorers: the process preference model (PPM) and the value head (docs/METHODS.md sections 1, 3, 5).

Two kinds of trained scorer, two architectures each, one directory format:

* ``ppm``: a scalar reward ``r`` of a partial solution (prompt + steps), trained on
  pairs with the Bradley-Terry loss; the search reads ``tanh(r / 5)`` (rStar-Math);
* ``value``: a scalar ``v`` trained so that ``tanh(v)`` matches the step's Q; the
  search reads ``tanh(v)`` (AlphaMath).

Architectures (``arch``):

* ``lm``: a LoRA-adapted language model with a score head
  (``AutoModelForSequenceClassification``, one label), run with transformers;
* ``head``: a linear head on the frozen base model's last-token hidden state, read
  with llama.cpp (``Llama(embedding=True, pooling_type=LAST)``): seconds to train,
  one prompt evaluation per scored node and no second model to hold when the
  base is the policy's own GGUF. ``HFFeatures`` reads the same hidden state with
  transformers (the GPU path, and the check that both agree).

A trained directory holds ``rstar_ppm.json`` (kind, arch, the base model with its
size and sha256, the training config and metrics) plus ``head.npz`` (arch head)
or ``adapter/`` (arch lm, a peft adapter with the score head saved whole).
Loading checks the base: a directory trained on another model is one clear error.

``load_ppm_scorer(path, policy=None)`` and ``load_value_scorer(path, policy=None)``
return a scorer for ``rstar.scorers`` (``ppm:PATH`` / ``value:PATH``): values in
[-1, 1], one batched call per search round.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rstar.basemodel import base_identity, describe_base, same_base
from rstar.errors import ModelUnavailable, RstarError

MANIFEST = "rstar_ppm.json"
FORMAT = 1
KINDS = ("ppm", "value")
ARCHS = ("head", "lm")
PPM_SCALE = 5.0          # rStar-Math: the search reads tanh(r / 5)


class PPMError(RstarError):
    """A trained scorer directory that cannot be used (wrong kind, another base model, missing files)."""


# ---------------------------------------------------------------- the manifest

def write_manifest(out: str | Path, manifest: dict) -> None:
    out = Path(out)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **manifest}, indent=1, default=str) + "\n")
    os.replace(tmp, out / MANIFEST)


def read_manifest(path: str | Path, kind: str | None = None) -> dict:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise PPMError(f"{p}: no such directory (give the --out directory of `rstar train ppm|value`)")
    f = p / MANIFEST
    if not f.is_file():
        raise PPMError(f"{p}: not a trained PPM/value directory (no {MANIFEST}); train one with `rstar train ppm`")
    try:
        m = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise PPMError(f"{f}: unreadable ({exc.msg} at line {exc.lineno})") from None
    if m.get("format") != FORMAT or m.get("kind") not in KINDS or m.get("arch") not in ARCHS:
        raise PPMError(f"{f}: format {m.get('format')!r}, kind {m.get('kind')!r}, arch {m.get('arch')!r} "
                       f"is not one this rstar reads (format {FORMAT}, kind ppm|value, arch head|lm)")
    if kind is not None and m["kind"] != kind:
        raise PPMError(f"{p} holds a {m['kind']} model, not a {kind}: use --scorer {m['kind']}:{p}")
    return m


def check_base(manifest: dict, where: str | Path, spec: str | None = None) -> dict:
    """The recorded base, checked against the model file now at its path (or at ``spec``)."""
    rec = manifest["base"]
    spec = spec or rec.get("path") or rec["spec"]
    try:
        now = base_identity(spec)
    except (ModelUnavailable, OSError) as exc:
        raise PPMError(f"{where} was trained on {describe_base(rec)}, which cannot be found now ({exc}); "
                       f"restore that file") from None
    if not same_base(rec, now):
        raise PPMError(f"{where} was trained on base model {describe_base(rec)}, not {describe_base(now)}: "
                       f"a PPM only works on its own base; train one for this model")
    return now


# ---------------------------------------------------------------- hidden-state features

# re-entrant: a load inside a load (evolve wraps its stages, the head scorer loads inside) must
# not wait on itself
_LOAD_LOCK = threading.RLock()


def cpu_has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def no_amx_buffers():
    """``with no_amx_buffers(): Llama(...)``: any llama.cpp model loaded inside (a policy too)
    is loaded without the extra weight buffers on a CPU with AMX (see ``_no_amx_buffers``)."""
    import llama_cpp

    return _no_amx_buffers(llama_cpp)


@contextlib.contextmanager
def _no_amx_buffers(llama_cpp):
    """Load with llama.cpp's extra weight buffers off on a CPU with AMX: there its AMX matmul
    crashes (SIGSEGV) on multi-token batches of some quantizations (seen with SmolLM2's Q4_1,
    llama-cpp-python 0.3.36). ``Llama`` takes no argument for it, so the default model
    parameters are patched for the duration of the load."""
    forced = os.environ.get("RSTAR_LLAMA_EXTRA_BUFFERS")  # "1": always on, "0": always off
    if forced == "1" or (forced != "0" and not cpu_has_amx()):
        yield
        return
    import llama_cpp.llama as llama_mod

    with _LOAD_LOCK:
        orig = llama_mod.llama_cpp.llama_model_default_params

        def params():
            p = orig()
            if hasattr(p, "use_extra_bufts"):
                p.use_extra_bufts = False
            return p

        llama_mod.llama_cpp.llama_model_default_params = params
        try:
            yield
        finally:
            llama_mod.llama_cpp.llama_model_default_params = orig


class LlamaFeatures:
    """Last-token hidden states (after the final norm) from llama.cpp in embedding mode.

    Texts are tokenized with special tokens parsed (chat markers are single tokens, as in
    the policy's own prompts) and a BOS token where the model asks for one. The KV cache
    of the previous text is kept: a text that shares a prefix with it (the question and
    earlier steps of the same tree) evaluates only its new tokens, so scoring a new node
    costs about one step's tokens. ``features`` sorts its texts to make neighbours share
    prefixes and returns rows in the caller's order. ``reuse_prefix=False`` evaluates every
    text from scratch (the reference the reuse is checked against).
    """

    def __init__(self, model_path: str | Path, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, reuse_prefix: bool = True, verbose: bool = False) -> None:
        try:
            import llama_cpp
        except ImportError:  # pragma: no cover - depends on the environment
            raise ModelUnavailable("the head scorer needs llama-cpp-python: pip install llama-cpp-python") from None
        self._lc = llama_cpp
        n_threads = n_threads or int(os.environ.get("RSTAR_THREADS") or 0) or os.cpu_count() or 1
        try:
            with _no_amx_buffers(llama_cpp):
                self.llm = llama_cpp.Llama(
                    model_path=str(model_path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST,
                    n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=n_threads,
                    n_threads_batch=n_threads, verbose=verbose)
        except Exception as exc:  # noqa: BLE001 - llama.cpp raises ValueError/RuntimeError on a bad file
            raise ModelUnavailable(f"llama.cpp could not load {model_path} in embedding mode: {exc}") from None
        self.model_path = str(model_path)
        self.n_ctx = self.llm.n_ctx()
        self.n_batch = n_batch
        self.dim = self.llm.n_embd()
        self.reuse_prefix = reuse_prefix
        self._cached: list[int] = []     # tokens whose KV is in sequence 0
        self.tokens_evaluated = 0        # tokens actually decoded (after prefix reuse)
        self.tokens_seen = 0             # tokens of the texts asked for
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        toks = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if len(toks) > self.n_ctx:  # keep the end: the last token is the one that is read
            toks = toks[:1] + toks[-(self.n_ctx - 1):]
        return toks

    def features(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        toks = [self.tokenize(t) for t in texts]
        with self._lock:
            for i in sorted(range(len(texts)), key=lambda i: toks[i]):
                out[i] = self._one(toks[i])
        return out

    def _one(self, tokens: list[int]) -> np.ndarray:
        ctx = self.llm._ctx
        keep = 0
        if self.reuse_prefix:
            cached = self._cached
            limit = min(len(cached), len(tokens) - 1)  # at least the last token is evaluated again
            while keep < limit and cached[keep] == tokens[keep]:
                keep += 1
        if keep == 0:
            ctx.kv_cache_clear()
        elif keep < len(self._cached) and not ctx.kv_cache_seq_rm(0, keep, -1):
            ctx.kv_cache_clear()
            keep = 0
        self._cached = []
        batch = self.llm._batch
        for start in range(keep, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            batch.reset()
            batch.set_batch(chunk, n_past=start, logits_all=True)
            rc = self._lc.llama_decode(ctx.ctx, batch.batch)
            if rc != 0:
                ctx.kv_cache_clear()
                raise RstarError(f"llama.cpp could not evaluate a text of {len(tokens)} tokens (code {rc})")
        self._cached = list(tokens)
        self.tokens_evaluated += len(tokens) - keep
        self.tokens_seen += len(tokens)
        ptr = self._lc.llama_get_embeddings_seq(ctx.ctx, 0)
        return np.ctypeslib.as_array(ptr, shape=(self.dim,)).copy()

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()


class HFFeatures:
    """The same last-token hidden state (after the final norm) with transformers."""

    def __init__(self, spec: str, model: Any = None, tokenizer: Any = None, max_length: int = 4096) -> None:
        import torch

        from rstar.basemodel import device, load_base

        if model is None:
            model, tokenizer = load_base(spec, kind="causal")
        self.model, self.tok = model.eval(), tokenizer
        self.device = device()
        self.model.to(self.device)
        self.max_length = max_length
        self._torch = torch

    def tokenize(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=True)["input_ids"]
        return ids[:1] + ids[-(self.max_length - 1):] if len(ids) > self.max_length else ids

    def features(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        rows = []
        with torch.no_grad():
            for text in texts:
                ids = torch.tensor([self.tokenize(text)], device=self.device)
                out = self.model(input_ids=ids, output_hidden_states=True)
                rows.append(out.hidden_states[-1][0, -1].float().cpu().numpy())
        return np.stack(rows) if rows else np.zeros((0, self.model.config.hidden_size), np.float32)

    def close(self) -> None:
        self.model = None


# ---------------------------------------------------------------- the linear head

class LinearHead:
    """``r = w . (h - mean) / std + b`` on a hidden state ``h``."""

    def __init__(self, w: np.ndarray, b: float, mean: np.ndarray, std: np.ndarray) -> None:
        self.w, self.b = np.asarray(w, np.float32), float(b)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def __call__(self, h: np.ndarray) -> np.ndarray:
        return ((np.asarray(h, np.float32) - self.mean) / self.std) @ self.w + self.b

    def save(self, out: Path) -> None:
        tmp = out / "head.tmp.npz"
        np.savez(tmp, w=self.w, b=np.float32(self.b), mean=self.mean, std=self.std)
        os.replace(tmp, out / "head.npz")

    @classmethod
    def load(cls, d: Path) -> "LinearHead":
        f = d / "head.npz"
        if not f.is_file():
            raise PPMError(f"{d}: the head weights (head.npz) are missing")
        z = np.load(f)
        return cls(z["w"], float(z["b"]), z["mean"], z["std"])

    @staticmethod
    def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.mean(0), x.std(0) + 1e-4


# ---------------------------------------------------------------- scorers

def squash(kind: str, raw: np.ndarray) -> np.ndarray:
    """Raw model output -> a value in [-1, 1]: tanh(r/5) for a PPM, tanh(v) for a value head."""
    raw = np.asarray(raw, dtype=np.float64)
    return np.tanh(raw / PPM_SCALE) if kind == "ppm" else np.tanh(raw)


class ModelScorer:
    """A trained PPM or value head as a search scorer (the ``rstar.scorers.Scorer`` protocol)."""

    needs_gold = False
    scores_partial = True

    def __init__(self, path: str | Path, manifest: dict, raw_fn, closer, kind: str) -> None:
        self.path = Path(path)
        self.name = f"{kind}:{path}"
        self.kind = kind
        self.manifest = manifest
        self._raw = raw_fn
        self._close = closer
        self.calls = 0
        self.texts = 0
        self.seconds = 0.0

    def raw(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._raw(list(texts)), dtype=np.float64)

    def score(self, items) -> list[float | None]:
        if not items:
            return []
        t0 = time.perf_counter()
        vals = squash(self.kind, self.raw([it.prompt for it in items]))
        self.calls += 1
        self.texts += len(items)
        self.seconds += time.perf_counter() - t0
        return [float(v) if math.isfinite(v) else None for v in vals]

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


def load_ppm_scorer(path: str | Path, policy: Any = None) -> ModelScorer:
    return load_scorer(path, "ppm", policy)


def load_value_scorer(path: str | Path, policy: Any = None) -> ModelScorer:
    return load_scorer(path, "value", policy)


def load_scorer(path: str | Path, kind: str | None = None, policy: Any = None, features: str = "llamacpp"
                ) -> ModelScorer:
    """A scorer from a trained directory. ``policy``: the running policy; a head scorer on a base
    that is not the policy's model file is refused (the head reads the policy's hidden states)."""
    path = Path(path).expanduser()
    m = read_manifest(path, kind)
    kind = m["kind"]
    base = check_base(m, path)
    policy_model = getattr(policy, "model_path", None)
    if m["arch"] == "head":
        if policy_model is not None:
            pol = base_identity(str(policy_model))
            if not same_base(base, pol):
                raise PPMError(f"{path} is a head on the hidden states of {describe_base(base)}, but the policy "
                               f"runs {describe_base(pol)}: train a head for this policy "
                               f"(rstar train {kind} --kind head --base {policy_model})")
        head = LinearHead.load(path)
        if features == "hf":
            feats = HFFeatures(m["base"]["spec"] if not base.get("gguf") else base["path"])
        else:
            if not base.get("gguf"):
                raise PPMError(f"{path}: a head scorer reads its base with llama.cpp, which needs a GGUF base")
            feats = LlamaFeatures(base["path"], n_ctx=int(m.get("config", {}).get("n_ctx", 4096)))
        return ModelScorer(path, m, lambda texts: head(feats.features(texts)), feats.close, kind)
    return _load_lm_scorer(path, m, base, kind)


def _load_lm_scorer(path: Path, m: dict, base: dict, kind: str) -> ModelScorer:
    import torch

    from rstar.basemodel import device, load_base

    adapter = path / "adapter"
    if not adapter.is_dir():
        raise PPMError(f"{path}: the adapter directory (adapter/) is missing")
    model, tok = load_base(base["path"] if base.get("gguf") else m["base"]["spec"], kind="score")
    try:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    except Exception as exc:  # noqa: BLE001
        raise PPMError(f"{adapter}: cannot load the adapter on its base: {type(exc).__name__}: {exc}") from None
    dev = device()
    model.to(dev).eval()
    max_length = int(m.get("config", {}).get("max_length", 1024))
    tok.truncation_side = "left"
    batch = int(m.get("config", {}).get("score_batch", 8))

    def raw(texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length).to(dev)
                out.append(model(**enc).logits[:, 0].float().cpu().numpy())
        return np.concatenate(out)

    return ModelScorer(path, m, raw, None, kind)
