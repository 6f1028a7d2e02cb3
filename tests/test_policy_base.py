"""Shared policy pieces: stop splitting, chat rendering, spec parsing, ScriptedPolicy, vLLM mapping."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from rstar.errors import ModelUnavailable
from rstar.policy import CHATML_TEMPLATE, Completion, ScriptedPolicy, load_policy, parse_spec, split_at_stop
from rstar.policy.base import find_stop_prefix, render_chat_template, sample_seed
from rstar.policy.openai import completion_from_choice, parse_openai_spec
from rstar.policy.vllm import completion_from_vllm


# ------------------------------------------------------------------ split_at_stop

def test_split_at_stop_earliest_wins():
    assert split_at_stop("abc<end>def```x", ["```", "<end>"]) == ("abc", "<end>")
    assert split_at_stop("no stop here", ["```"]) == ("no stop here", None)
    assert split_at_stop("", ["x"]) == ("", None)
    assert split_at_stop("x = 1\n```", []) == ("x = 1\n```", None)


def test_split_at_stop_longer_wins_on_tie():
    assert split_at_stop("code```output\n3", ["```", "```output"]) == ("code", "```output")
    assert split_at_stop("code```output\n3", ["```output", "```"]) == ("code", "```output")


def test_split_at_stop_ignores_empty_strings():
    assert split_at_stop("abc", ["", "c"]) == ("ab", "c")


def test_find_stop_prefix():
    assert find_stop_prefix("text ``", ["```output"]) == 2
    assert find_stop_prefix("text", ["```"]) == 0
    assert find_stop_prefix("a\n<en", ["<end>", "\n<e"]) == 3


def test_sample_seed_reproducible_and_distinct():
    assert sample_seed(7, 1, 2) == sample_seed(7, 1, 2)
    assert len({sample_seed(7, i, j) for i in range(10) for j in range(10)}) == 100
    assert 0 <= sample_seed(None, 0, 0) < 2**31


# ------------------------------------------------------------------ chat templates

def test_chatml_render():
    out = render_chat_template(CHATML_TEMPLATE, [{"role": "system", "content": "S"},
                                                 {"role": "user", "content": "Q"}])
    assert out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_render_supports_hf_template_features():
    tmpl = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user','assistant'] %}"
            "{{ raise_exception('bad role') }}{% endif %}{{ m['content'] | tojson }}{% endfor %}"
            "{% if add_generation_prompt %}>{% endif %}")
    assert render_chat_template(tmpl, [{"role": "user", "content": "é"}], bos_token="<s>") == '<s>"é">'
    with pytest.raises(Exception, match="bad role"):
        render_chat_template(tmpl, [{"role": "tool", "content": "x"}])


# ------------------------------------------------------------------ specs

@pytest.mark.parametrize("spec,expected", [
    ("default", ("default", "")),
    ("models/x.gguf", ("llamacpp", "models/x.gguf")),
    ("llamacpp:/m/x.bin", ("llamacpp", "/m/x.bin")),
    ("hf:Qwen/Qwen2.5-Math-1.5B-Instruct", ("hf", "Qwen/Qwen2.5-Math-1.5B-Instruct")),
    ("hf:/m/x.gguf", ("hf", "/m/x.gguf")),
    ("vllm:Qwen/Qwen2.5-Math-7B-Instruct", ("vllm", "Qwen/Qwen2.5-Math-7B-Instruct")),
    ("openai:http://127.0.0.1:8000/v1#qwen", ("openai", "http://127.0.0.1:8000/v1#qwen")),
    ("http://127.0.0.1:8000/v1", ("openai", "http://127.0.0.1:8000/v1")),
    ("Qwen/Qwen2.5-Coder-1.5B-Instruct", ("hf", "Qwen/Qwen2.5-Coder-1.5B-Instruct")),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


def test_parse_spec_local_dir_is_hf(tmp_path):
    assert parse_spec(str(tmp_path)) == ("hf", str(tmp_path))


def test_parse_spec_errors(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="not a .gguf"):
        parse_spec(str(f))
    with pytest.raises(ModelUnavailable, match="unknown model spec"):
        parse_spec("what-is-this")
    with pytest.raises(ModelUnavailable):
        parse_spec("")


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailable, match="not found"):
        load_policy(str(tmp_path / "nope.gguf"))


def test_parse_openai_spec():
    assert parse_openai_spec("http://h:1/v1/#m") == ("http://h:1/v1", "m")
    assert parse_openai_spec("https://h/v1") == ("https://h/v1", None)
    with pytest.raises(ModelUnavailable):
        parse_openai_spec("h:1/v1")


# ------------------------------------------------------------------ vLLM (no GPU needed)

@pytest.mark.skipif("vllm" in sys.modules, reason="vLLM importable here")
def test_vllm_absent_is_model_unavailable():
    try:
        import vllm  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("vLLM is installed")
    with pytest.raises(ModelUnavailable, match="pip install vllm"):
        load_policy("vllm:Qwen/Qwen2.5-Math-1.5B-Instruct")


def _vout(text, finish, stop_reason, ids, cum=None, logprobs=None):
    return SimpleNamespace(index=0, text=text, token_ids=ids, cumulative_logprob=cum, logprobs=logprobs,
                           finish_reason=finish, stop_reason=stop_reason)


def test_completion_from_vllm_stop_string():
    c = completion_from_vllm(_vout("x = 1\n", "stop", "```output", [1, 2, 3, 4], cum=-1.5), ["```output"])
    assert c == Completion("x = 1\n", "```output", "stop", 4, -1.5)


def test_completion_from_vllm_eos_length_and_stop_token():
    assert completion_from_vllm(_vout("done", "stop", None, [5, 6]), ["```"]).finish_reason == "eos"
    c = completion_from_vllm(_vout("abc", "length", None, [1, 2, 3], cum=-0.25))
    assert (c.finish_reason, c.stop, c.num_tokens, c.logprob_sum) == ("length", None, 3, -0.25)
    c = completion_from_vllm(_vout("abc", "stop", 151645, [1, 2]))  # a stop *token id*
    assert (c.finish_reason, c.stop) == ("eos", None)


def test_completion_from_vllm_kept_stop_string_and_per_token_logprobs():
    lp = [{7: SimpleNamespace(logprob=-0.5)}, {8: SimpleNamespace(logprob=-0.25)}]
    c = completion_from_vllm(_vout("ab```", "stop", "```", [7, 8], logprobs=lp), ["```"])
    assert (c.text, c.stop, c.logprob_sum) == ("ab", "```", -0.75)


def test_completion_from_openai_choice():
    c = completion_from_choice({"text": "a\n", "finish_reason": "stop", "stop_reason": "<end>",
                                "logprobs": {"tokens": ["a", "\n", "<end>"],
                                             "token_logprobs": [-1.0, -0.5, None]}}, ["<end>"])
    assert c == Completion("a\n", "<end>", "stop", 3, -1.5)
    c = completion_from_choice({"text": "abc", "finish_reason": "stop", "matched_stop": None})
    assert (c.finish_reason, c.stop, c.logprob_sum) == ("eos", None, None)
    assert completion_from_choice({"text": "abc", "finish_reason": "length"}).finish_reason == "length"


# ------------------------------------------------------------------ ScriptedPolicy

def test_scripted_cycle_and_stop_detection():
    p = ScriptedPolicy(["x = 1\n```output", "print(x)\n```\nmore", "The answer is 3"])
    out = p.generate(["q1", "q2"], n=2, stop=["```output", "```"], max_tokens=50)
    assert [len(r) for r in out] == [2, 2]
    a, b = out[0]
    assert (a.text, a.stop, a.finish_reason) == ("x = 1\n", "```output", "stop")
    assert (b.text, b.stop, b.finish_reason) == ("print(x)\n", "```", "stop")
    c = out[1][0]
    assert (c.text, c.stop, c.finish_reason) == ("The answer is 3", None, "eos")
    assert a.num_tokens == 3 + 4  # "x", "=", "1", then the stop: "`" x3, "output"
    assert p.calls == 1 and p.prompts_seen == 2


def test_scripted_callable_and_length():
    p = ScriptedPolicy(lambda prompt: [prompt.upper() + " one two three four five"])
    [[c1, c2]] = p.generate(["ab"], n=2, max_tokens=3)
    assert c1 == c2
    assert (c1.text, c1.finish_reason, c1.num_tokens) == ("AB one two", "length", 3)


def test_scripted_callable_with_n_and_logprobs():
    p = ScriptedPolicy(lambda prompt, n: [f"{prompt}-{k}" for k in range(n)], logprob_per_token=-0.5)
    [[a, b, c]] = p.generate(["q"], n=3)
    assert [x.text for x in (a, b, c)] == ["q-0", "q-1", "q-2"]
    assert a.logprob_sum == -0.5 * a.num_tokens


def test_scripted_format_chat_and_context_manager():
    with ScriptedPolicy("x") as p:
        s = p.format_chat([{"role": "user", "content": "hi"}])
    assert s.startswith("<|im_start|>user\nhi") and s.endswith("<|im_start|>assistant\n")
