"""transformers backend: any HF model id, local model directory or GGUF file.

* ``HFPolicy("Qwen/Qwen2.5-Math-1.5B-Instruct")``, ``HFPolicy("/models/dir")``,
  ``HFPolicy("/path/model.gguf")`` (loaded with ``from_pretrained(dir, gguf_file=name)``,
  which de-quantizes to float; needs ``gguf`` and ``accelerate``), or
  ``HFPolicy(dir, gguf_file="x.gguf")``.
* Batched sampling: prompts are left-padded into batches of ``batch_size``;
  ``num_return_sequences=n``; ``stop_strings`` (transformers' StopStringCriteria)
  stops each sequence as soon as it ends with a stop string.
* Post-processing of each sequence: the text before the first EOS/pad token is
  decoded and cut with :func:`split_at_stop`; on a hit ``num_tokens`` is the shortest
  token prefix whose text contains the stop string, else up to and including the EOS
  token ("eos"), else all tokens ("length").
* ``logprob_sum``: log-softmax of the raw logits (``output_logits=True``; before
  temperature / top-p) at each of those ``num_tokens`` sampled tokens, summed.
* Seeds: ``torch.manual_seed`` is set per batch from ``seed`` and the batch's first
  prompt index, so the same call gives the same result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rstar.errors import ModelUnavailable
from rstar.policy.base import CHATML_TEMPLATE, Completion, Policy, normalize_stop, render_chat_template, sample_seed, split_at_stop


def _imports():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelUnavailable(
            "the transformers backend needs torch and transformers: install torch first "
            "(pip install torch), then pip install transformers gguf accelerate") from exc
    return torch, transformers


class HFPolicy(Policy):
    def __init__(self, model: str, gguf_file: str | None = None, device: str | None = None,
                 dtype: Any = None, top_p: float = 0.95, top_k: int = 0, logprobs: bool = True,
                 batch_size: int = 16, n_threads: int | None = None, chat_template: str | None = None,
                 trust_remote_code: bool = False, model_obj: Any = None, tokenizer_obj: Any = None):
        torch, transformers = _imports()
        self.torch = torch
        if n_threads:
            torch.set_num_threads(int(n_threads))
        src = str(model)
        p = Path(src).expanduser()
        if gguf_file is None and src.lower().endswith(".gguf"):
            if not p.is_file():
                raise ModelUnavailable(f"model file not found: {p}")
            src, gguf_file = str(p.parent), p.name
        kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if gguf_file:
            kw["gguf_file"] = gguf_file
        try:
            self.tokenizer = tokenizer_obj or transformers.AutoTokenizer.from_pretrained(src, **kw)
            if model_obj is not None:
                self.model = model_obj
            else:
                mkw = dict(kw)
                if dtype is not None:
                    mkw["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
                self.model = transformers.AutoModelForCausalLM.from_pretrained(src, **mkw)
        except ModelUnavailable:
            raise
        except Exception as exc:
            raise ModelUnavailable(f"transformers could not load {model}: {type(exc).__name__}: {exc}") from exc
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.model.eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        gc_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = set(gc_eos if isinstance(gc_eos, (list, tuple)) else [gc_eos] if gc_eos is not None else [])
        if tok.eos_token_id is not None:
            eos.add(tok.eos_token_id)
        self.eos_ids = eos
        self.name = f"hf:{model}" + (f"#{gguf_file}" if gguf_file and gguf_file not in str(model) else "")
        self.top_p, self.top_k, self.logprobs = top_p, top_k, logprobs
        self.batch_size = max(1, int(batch_size))
        self.chat_template = chat_template

    def format_chat(self, messages: list[dict]) -> str:
        tmpl = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if not tmpl:
            return render_chat_template(CHATML_TEMPLATE, messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  chat_template=tmpl)

    def _encode(self, prompts: Sequence[str]):
        torch, tok = self.torch, self.tokenizer
        ids = []
        for p in prompts:
            t = tok(p, add_special_tokens=True)["input_ids"]
            if len(t) >= 2 and tok.bos_token_id is not None and t[0] == t[1] == tok.bos_token_id:
                t = t[1:]
            ids.append(t)
        width = max(len(t) for t in ids)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(t)) + t for t in ids], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in ids], dtype=torch.long)
        return input_ids.to(self.device), mask.to(self.device)

    def generate(self, prompts, n=1, stop=(), max_tokens=256, temperature=0.7, seed=None, nodes=None):
        stops = normalize_stop(stop)
        out: list[list[Completion]] = []
        # torch's generator is seeded once per batch: with one seed per prompt, each prompt
        # is its own batch, so its samples do not depend on its neighbours.
        size = 1 if isinstance(seed, (list, tuple)) else self.batch_size
        for b in range(0, len(prompts), size):
            out.extend(self._batch(prompts[b:b + size], b, n, stops, max_tokens,
                                   temperature, seed))
        return out

    def _batch(self, prompts, first, n, stops, max_tokens, temperature, seed):
        torch = self.torch
        input_ids, mask = self._encode(prompts)
        greedy = temperature <= 0
        torch.manual_seed(sample_seed(seed, first, 0))
        kw: dict[str, Any] = dict(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens,
            num_return_sequences=1 if greedy else n, do_sample=not greedy,
            return_dict_in_generate=True, output_logits=self.logprobs,
            pad_token_id=self.tokenizer.pad_token_id)
        if not greedy:
            kw.update(temperature=float(temperature), top_p=self.top_p, top_k=int(self.top_k or 0))  # 0: off
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        if stops:
            kw.update(stop_strings=stops, tokenizer=self.tokenizer)
        with torch.inference_mode():
            res = self.model.generate(**kw)
        width = input_ids.shape[1]
        gen = res.sequences[:, width:].tolist()
        logps = None
        if self.logprobs and getattr(res, "logits", None):
            logits = torch.stack(list(res.logits), dim=1).float()  # [rows, steps, vocab]
            lp = torch.log_softmax(logits, dim=-1)
            idx = res.sequences[:, width:width + lp.shape[1]].unsqueeze(-1)
            logps = lp.gather(-1, idx).squeeze(-1).tolist()
        per = 1 if greedy else n
        rows = [self._completion(gen[r], None if logps is None else logps[r], stops)
                for r in range(len(gen))]
        grouped = [rows[i * per:(i + 1) * per] for i in range(len(prompts))]
        if greedy:
            grouped = [[Completion(**vars(g[0])) for _ in range(n)] for g in grouped]
        return grouped

    def _completion(self, ids: list[int], logps: list[float] | None, stops: list[str]) -> Completion:
        tok = self.tokenizer
        end = next((k for k, t in enumerate(ids) if t in self.eos_ids or t == tok.pad_token_id), None)
        body = ids if end is None else ids[:end]
        raw = tok.decode(body, skip_special_tokens=True)
        text, hit = split_at_stop(raw, stops)
        if hit is not None:
            lo, hi = 1, len(body)  # shortest prefix whose text contains the stop string
            while lo < hi:
                mid = (lo + hi) // 2
                if hit in tok.decode(body[:mid], skip_special_tokens=True):
                    hi = mid
                else:
                    lo = mid + 1
            ntok, finish = lo, "stop"
        elif end is not None:
            ntok, finish = end + 1, "eos"
        else:
            ntok, finish = len(ids), "length"
        lp_sum = None if logps is None else float(sum(logps[:ntok]))
        return Completion(text=text, stop=hit, finish_reason=finish, num_tokens=ntok, logprob_sum=lp_sum)

    def capacity(self) -> int:
        """Prompts it decodes in one forward batch (``batch_size``)."""
        return int(self.batch_size)

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
