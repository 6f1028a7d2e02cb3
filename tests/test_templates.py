import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rstar.templates import FEWSHOT, TEMPLATES, ParsedStep, StepTemplate, get_template


def chatml(messages):
    """A plain ChatML formatter (Qwen's chat template) with the generation prompt."""
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + "<|im_start|>assistant\n"


def run_py(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


# --------------------------------------------------------------------------- registry


def test_registry_and_unknown_name():
    assert set(TEMPLATES) == {"default", "rstar"}
    for name in TEMPLATES:
        t = get_template(name)
        assert isinstance(t, StepTemplate)
        assert t.name == name
        assert t.stop and all(isinstance(s, str) and s for s in t.stop)
        assert t.max_steps == 16
        assert len(t.fewshot) >= 2
    with pytest.raises(ValueError) as e:
        get_template("nope")
    assert "default" in str(e.value) and "rstar" in str(e.value)


def test_overrides():
    t = get_template("default", max_steps=8, fewshot=[])
    assert t.max_steps == 8 and t.fewshot == []
    assert get_template("default").max_steps == 16  # fresh instance each time


@pytest.mark.parametrize("ex", FEWSHOT, ids=lambda e: e.answer)
def test_fewshot_programs_print_their_answer(ex):
    for name in TEMPLATES:
        t = get_template(name)
        prog = t.program([code for _, code in ex.steps])
        assert run_py(prog).strip() == ex.output == ex.answer


# --------------------------------------------------------------------------- render


def test_render_default_structure():
    t = get_template("default")
    p0 = t.render(chatml, "How many?", [])
    assert p0.startswith("<|im_start|>system\n")
    assert p0.count("<|im_start|>user") == len(t.fewshot) + 1
    assert p0.endswith("<|im_start|>user\nHow many?<|im_end|>\n<|im_start|>assistant\n```python\n# Step")
    s1 = t.step_text(" 1: half\nmay = 48 / 2", "\n# Step")
    p1 = t.render(chatml, "How many?", [s1])
    assert p1 == p0 + s1  # prompt of step k+1 = prompt of step k + step k's text
    assert p1.endswith("may = 48 / 2\n# Step")


def test_render_rstar_structure():
    t = get_template("rstar")
    p0 = t.render(chatml, "Q", [])
    assert p0.endswith("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<code>\n")
    steps = [
        t.step_text("# Step 1: x\nx = 2\n", "<end_of_step>"),
        t.step_text("\n# Step 2: print\nprint(x * 3)\n", "<end_of_code>"),
        t.output_block("6\n"),
    ]
    p = t.render(chatml, "Q", steps)
    assert p.endswith("print(x * 3)\n<end_of_code>\n<output>6<end_of_output>\n<answer>")
    assert p == p0 + "".join(steps)


def test_fewshot_rendering_is_well_formed():
    d = get_template("default")
    r = get_template("rstar")
    for ex in FEWSHOT:
        sol = d.fewshot_solution(ex)
        assert sol.startswith("```python\n# Step 1:") and sol.endswith("```")
        sol = r.fewshot_solution(ex)
        assert sol.startswith("<code>\n# Step 1:")
        assert f"<output>{ex.output}<end_of_output>" in sol
        assert sol.endswith("\\boxed{%s}.<end_of_answer>" % ex.answer)


# --------------------------------------------------------------------------- parse: default

DEFAULT_CASES = [
    # text, stop, finish, kind, code or error fragment
    (" 1: half of April\nmay = 48 / 2\n", "\n# Step", "stop", "code", "# Step 1: half of April\nmay = 48 / 2"),
    (" 2: total\ntotal = 48 + may\nprint(total)\n", "```", "stop", "final", "# Step 2: total\ntotal = 48 + may\nprint(total)"),
    (" 3: loop\nfor i in range(3):\n    # Step inside a loop\n    s += i\n", "\n# Step", "stop", "code", "    s += i"),
    (" 4: done\nprint(x)", None, "eos", "final", "print(x)"),
    (" 1 add\nx = 1\n", "\n# Step", "stop", "code", "# Step 1: add\nx = 1"),
    (" 1: only talk\n# more talk\n", "\n# Step", "stop", "invalid", "no code in step"),
    (" 1: add\nx = (1 +\n", "\n# Step", "stop", "invalid", "syntax error"),
    (" 1: add\nfor i in range(3):\n", "\n# Step", "stop", "invalid", "syntax error"),
    (" 1: add\nx = 1\ny = 2", None, "length", "invalid", "hit max_tokens without a stop string"),
    ("", "\n# Step", "stop", "invalid", "empty step"),
    ("   \n  ", "```", "stop", "invalid", "empty step"),
    ("s to solve: think\nx = 1\n", "\n# Step", "stop", "invalid", "malformed step header"),
    (" 1: add\nThe answer is 5 apples.\n", "```", "stop", "invalid", "syntax error"),
    (" 1: x\nx = 1\n```python\ny=2", "\n# Step", "stop", "invalid", "stray code fence"),
    (" 1: x\nx = 1", "<end_of_step>", "stop", "invalid", "unknown stop string"),
]


@pytest.mark.parametrize("text,stop,finish,kind,frag", DEFAULT_CASES)
def test_parse_default(text, stop, finish, kind, frag):
    t = get_template("default")
    s = t.parse(text, stop, finish)
    assert isinstance(s, ParsedStep)
    assert s.kind == kind, s
    if kind == "invalid":
        assert frag in s.error and not s.is_terminal
    else:
        assert s.error is None and frag in s.code
        assert s.is_terminal == (kind == "final")
        compile(s.code, "<t>", "exec")
        assert s.comment.startswith("# Step")


def test_parse_default_empty_final_step():
    # the fence closes right after "# Step": the previous step was the last one
    s = get_template("default").parse("", "```", "stop")
    assert s.kind == "invalid"
    s = get_template("default").parse(" 3:\n", "```", "stop")
    assert s.kind == "final" and s.is_terminal and s.code == ""


def test_default_program_and_answer():
    t = get_template("default")
    texts = [
        (" 1: half of April\nmay = 48 / 2\n", "\n# Step"),
        (" 2: add them\ntotal = 48 + may\n", "\n# Step"),
        (" 3: print\nprint(int(total))\n", "```"),
    ]
    steps = [t.parse(x, s, "stop") for x, s in texts]
    assert [s.kind for s in steps] == ["code", "code", "final"]
    prog = t.program([s.code for s in steps])
    assert prog.startswith("# Step 1: half of April\nmay = 48 / 2\n# Step 2:")
    out = run_py(prog)
    assert t.answer_from_output(out, steps[-1]) == "72"
    assert t.output_block(out) == ""


@pytest.mark.parametrize(
    "stdout,answer",
    [
        ("72\n", "72"),
        ("24.0\n72.0\n\n", "72.0"),
        ("Total: 72\n", "72"),
        ("The answer is 72.\n", "72"),
        ("x = 5\n", "x = 5"),
        ("Natalia sold 72 clips in total.\n", "72"),
        ("She earned $10.50 today\n", "10.50"),
        ("sqrt(2)/2\n", "sqrt(2)/2"),
        ("(3, 4)\n", "(3, 4)"),
        ("\\boxed{7}\n", "7"),
        ("", None),
        ("\n  \n", None),
    ],
)
def test_default_answer_from_output(stdout, answer):
    assert get_template("default").answer_from_output(stdout, None) == answer


# --------------------------------------------------------------------------- parse: rstar

RSTAR_CASES = [
    ("# Step 1: half\nmay = 48 / 2\n", "<end_of_step>", "stop", "code", "may = 48 / 2", False),
    ("\n# Step 2: sum\ntotal = 48 + may\nprint(total)\n", "<end_of_code>", "stop", "final", "print(total)", False),
    ("<code>\n# Step 1: x\nx = 1\n", "<end_of_step>", "stop", "code", "x = 1", False),
    ("Natalia sold \\boxed{72} clips.", "<end_of_answer>", "stop", "answer", None, True),
    ("<answer>So \\boxed{\\frac{1}{2}}", "<end_of_answer>", "stop", "answer", None, True),
    ("The answer is 72.", "<end_of_answer>", "stop", "invalid", "no \\boxed{} answer", False),
    ("# Step 1: think about it\n", "<end_of_step>", "stop", "invalid", "no code in step", False),
    ("x = (1 +\n", "<end_of_step>", "stop", "invalid", "syntax error", False),
    ("x = 1\n<output>1<end_of_output>", "<end_of_code>", "stop", "invalid", "unexpected <output>", False),
    ("x = 1\ny = 2", None, "length", "invalid", "hit max_tokens without a stop string", False),
    ("x = 1\n", None, "eos", "invalid", "ended without a step tag", False),
    ("", "<end_of_step>", "stop", "invalid", "empty step", False),
    ("x = 1", "\n# Step", "stop", "invalid", "unknown stop string", False),
]


@pytest.mark.parametrize("text,stop,finish,kind,frag,terminal", RSTAR_CASES)
def test_parse_rstar(text, stop, finish, kind, frag, terminal):
    t = get_template("rstar")
    s = t.parse(text, stop, finish)
    assert s.kind == kind, s
    assert s.is_terminal == terminal
    if kind == "invalid":
        assert frag in s.error
    elif kind == "answer":
        assert s.answer and s.code == ""
    else:
        assert frag in s.code and s.error is None
        compile(s.code, "<t>", "exec")


def test_rstar_full_path():
    t = get_template("rstar")
    gens = [
        ("# Step 1: half\nmay = 48 / 2\n", "<end_of_step>"),
        ("\n# Step 2: sum\ntotal = 48 + may\nprint(total)\n", "<end_of_code>"),
    ]
    steps = [t.parse(x, s, "stop") for x, s in gens]
    assert [s.kind for s in steps] == ["code", "final"]
    prog = t.program([s.code for s in steps])
    out = run_py(prog)
    assert out.strip() == "72.0"
    block = t.output_block(out)
    assert block == "\n<output>72.0<end_of_output>\n<answer>"
    ans = t.parse("Natalia sold \\boxed{72} clips.", "<end_of_answer>", "stop")
    assert ans.is_terminal and ans.answer == "72"
    assert t.answer_from_output(out, ans) == "72"
    texts = [t.step_text(x, s) for x, s in gens] + [block, t.step_text("Natalia sold \\boxed{72} clips.", "<end_of_answer>")]
    full = t.render(chatml, "Q", texts)
    assert "<end_of_code>\n<output>72.0<end_of_output>\n<answer>Natalia sold \\boxed{72} clips.<end_of_answer>" in full


def test_output_block_capped():
    t = get_template("rstar")
    block = t.output_block("x" * 100_000)
    assert len(block) < 2 * t.max_output_chars


def test_program_assembly():
    t = get_template("default")
    assert t.program([]) == ""
    assert t.program(["a = 1\n", "", "b = a + 1", "print(b)\n\n"]) == "a = 1\nb = a + 1\nprint(b)\n"


def test_step_text():
    for name in TEMPLATES:
        t = get_template(name)
        assert t.step_text("abc", t.stop[0]) == "abc" + t.stop[0]
        assert t.step_text("abc", None) == "abc"


# --------------------------------------------------------------------------- fuzz: never raises

_pieces = st.sampled_from(
    ["# Step", " 1:", "\n", "x = 1", "print(x)", "(", ")", "```", "<code>", "<end_of_step>", "<output>",
     "\\boxed{", "}", "    ", "for i in range(3):", "\x00", "\ud800", "é", "def f(:", "'''", "\\"]
)
_texts = st.one_of(st.text(max_size=400), st.lists(_pieces, max_size=40).map("".join))
_stops = st.sampled_from([None, "\n# Step", "```", "<end_of_step>", "<end_of_code>", "<end_of_answer>", "weird"])
_finish = st.sampled_from(["stop", "length", "eos", "", "other"])


@settings(max_examples=400, deadline=None)
@given(text=_texts, stop=_stops, finish=_finish, name=st.sampled_from(sorted(TEMPLATES)))
def test_parse_never_raises(text, stop, finish, name):
    t = get_template(name)
    s = t.parse(text, stop, finish)
    assert s.kind in {"code", "final", "answer", "invalid"}
    if s.kind == "invalid":
        assert s.error
    else:
        assert s.error is None
        if s.code:
            compile(s.code, "<t>", "exec")
    t.step_text(text, stop)
    t.answer_from_output(text, s)
    t.output_block(text)


def test_parse_non_string_input():
    for name in TEMPLATES:
        s = get_template(name).parse(None, None, "stop")  # type: ignore[arg-type]
        assert s.kind == "invalid"


def test_parse_deeply_nested_code():
    t = get_template("default")
    s = t.parse(" 1: deep\nx = " + "(" * 10000 + "1" + ")" * 10000 + "\n", "\n# Step", "stop")
    assert s.kind == "invalid" and "syntax error" in s.error
