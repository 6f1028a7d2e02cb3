'''Step formats as data: prompt, stop strings, step parsing, program, answer.

A :class:`StepTemplate` says everything the search needs to know about how a
model writes a solution one step at a time::

    from rstar.templates import get_template
    t = get_template("default")            # or "rstar"; unknown -> ValueError
    prompt = t.render(policy.format_chat, question, steps)
    completions = policy.generate([prompt], stop=t.stop, max_tokens=t.max_step_tokens, ...)
    c = completions[0][0]
    step = t.parse(c.text, c.stop, c.finish_reason)       # ParsedStep, never raises
    text = t.step_text(c.text, c.stop)                     # what to store and re-render
    program = t.program([s.code for s in path_steps])      # the sandbox runs this
    answer = t.answer_from_output(stdout, step)            # for terminal "final" steps

``render`` builds ``format_chat([system, few-shot user/assistant pairs...,
user question])`` (the model's own chat template with the generation prompt),
then appends ``t.assistant_prefix`` and ``"".join(steps)``: the raw text of the
steps so far exactly as the model wrote them, each including its stop string.
So the prompt for step k+1 is the prompt for step k + the text of step k,
which keeps prefix caches warm.  ``render`` inserts nothing between steps;
where a template shows execution output (rstar), the search puts
``t.output_block(stdout)`` into ``steps`` itself, as its own element after
the step that ended the program (or appended to that step's text: the result
is the same string).

ParsedStep.kind:

* ``"code"``: an intermediate step; ``code`` is appended to the program, the
  search executes the program so far; a failing program makes the node invalid.
* ``"final"``: the step that ends the program.  The search executes the
  program.  Default template: the step is terminal (``is_terminal``) and the
  answer is ``t.answer_from_output(stdout, step)``, the last line printed.
  rstar template: not terminal; the search appends ``t.output_block(stdout)``
  and asks the model for one more generation, the answer step.
* ``"answer"``: (rstar) the answer step, terminal; ``answer`` holds the
  content of its last ``\\boxed{}``.  No code.
* ``"invalid"``: malformed output; ``error`` says why ("hit max_tokens without
  a stop string", "no code in step", "syntax error: ...", "empty step", ...).
  The node is marked invalid.  ``parse`` never raises.

Every ``code`` is checked with ``compile()`` on its own, so a step can never
leave a block open for the next one; the program of a path is the
concatenation of its steps' code.

The two templates
-----------------

``rstar`` -- rStar-Math's tags, for models fine-tuned on them::

    <code>
    # Step 1: half as many clips in May
    may = 48 / 2
    <end_of_step>
    # Step 2: add both months
    total = 48 + may
    print(total)
    <end_of_code>
    <output>72.0<end_of_output>
    <answer>Natalia sold \\boxed{72} clips.<end_of_answer>

  Stops: ``<end_of_step>`` (kind code), ``<end_of_code>`` (kind final, not
  terminal), ``<end_of_answer>`` (kind answer, terminal).  ``render`` opens
  with ``<code>\\n``; ``output_block(stdout)`` is
  ``"\\n<output>STDOUT<end_of_output>\\n<answer>"`` so the next generation is
  the answer text, which must contain ``\\boxed{}``.

``default`` -- one Python code block, one ``# Step k:`` comment per step,
for general instruction/coder models (the built-in Qwen2.5-Coder-1.5B-Instruct)::

    ```python
    # Step 1: half as many clips in May
    may = 48 / 2
    # Step 2: add both months and print the answer
    total = 48 + may
    print(total)
    ```

  The assistant prefix is ``"```python\\n# Step"``: the code fence is already
  open and the first step header started, so the model only continues with
  `` 1: <reasoning>\\n<code>``.  Stop strings are ``"\\n# Step"`` (the next step
  header starts: kind code) and ``"```"`` (the fence closes: kind final,
  terminal).  Because each step's stored text ends with its stop string, the
  next prompt ends with ``"\\n# Step"`` again and the model writes the next
  number itself (e.g. `` 2: add both...``): one generation = one step, and
  render never inserts anything.  A step's ``code`` is its text with the
  header line rewritten as ``# Step k: <reasoning>``.  The answer is the last
  non-empty line the program printed (``answer_from_output``).  A generation
  that ends with end-of-sequence without closing the fence is accepted as a
  final step too.  Only top-level ``# Step`` comments split steps (the stop
  string needs a newline right before ``#``), so an indented ``# Step``
  comment inside a loop does not cut a block in half.

Which one is the default, and why
---------------------------------

``benchmarks/bench_parse.py`` measured it with the built-in model
(Qwen2.5-Coder-1.5B-Instruct Q4_K_M, llama.cpp, greedy, one step per
generation, a solution stops at its first invalid step or failing program,
programs run with a local python3) on the first N GSM8K train problems:

    N   template  steps  parsed%  terminal%  ran%  acc%
    10  default      43    100.0      100.0  100.0  70.0
    10  rstar        43     93.0       60.0   80.0  40.0
    30  default     134     98.5       90.0   90.0  66.7
    30  rstar       131     92.4       60.0   83.3  40.0

Under ``default`` the only malformed steps (2 of 134) were comment-only
planning steps ("no code in step"); one program failed (NameError).  Under
``rstar`` the model, not fine-tuned on the tags, wrote the answer without
``\\boxed{}`` (6), ended with end-of-sequence instead of a tag (4), so only
60% of its solutions reached an answer.  ``default`` is therefore the
default; ``rstar`` is for models fine-tuned on rStar-Math's format.
'''

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = [
    "ParsedStep",
    "FewShot",
    "StepTemplate",
    "DefaultTemplate",
    "RStarTemplate",
    "TEMPLATES",
    "get_template",
    "FEWSHOT",
]

FormatChat = Callable[[list[dict]], str]


@dataclass
class ParsedStep:
    kind: str  # "code" | "final" | "answer" | "invalid"
    code: str = ""
    comment: str = ""
    answer: str | None = None
    error: str | None = None
    is_terminal: bool = False

    @property
    def valid(self) -> bool:
        return self.kind != "invalid"


def _invalid(error: str, code: str = "", comment: str = "") -> ParsedStep:
    return ParsedStep(kind="invalid", code=code, comment=comment, error=error, is_terminal=False)


@dataclass(frozen=True)
class FewShot:
    """A worked example written for this project: (reasoning, code) steps, the
    stdout of the program and the final answer."""

    question: str
    steps: tuple[tuple[str, str], ...]
    output: str
    answer: str


# Written for rstar (not taken from any dataset).  The output of each program
# is checked by tests/test_templates.py.
FEWSHOT: tuple[FewShot, ...] = (
    FewShot(
        question=(
            "A baker makes 36 muffins in the morning and twice as many in the afternoon. "
            "She sells 80 muffins during the day. How many muffins are left?"
        ),
        steps=(
            ("muffins made in the morning and in the afternoon", "morning = 36\nafternoon = 2 * morning"),
            ("total muffins made in the day", "made = morning + afternoon"),
            ("subtract the muffins sold and print the answer", "left = made - 80\nprint(left)"),
        ),
        output="28",
        answer="28",
    ),
    FewShot(
        question=(
            "Tom buys 3 notebooks at $4.50 each and a pen for $2. "
            "He pays with a $20 bill. How much change does he get, in dollars?"
        ),
        steps=(
            ("cost of the notebooks", "notebooks = 3 * 4.50"),
            ("total cost with the pen", "total = notebooks + 2"),
            ("change from the $20 bill, printed as the answer", "change = 20 - total\nprint(change)"),
        ),
        output="4.5",
        answer="4.5",
    ),
    FewShot(
        question=(
            "A garden has 5 rows of 12 tulips. A quarter of the tulips are red and the rest are yellow. "
            "How many yellow tulips are there?"
        ),
        steps=(
            ("total number of tulips", "tulips = 5 * 12"),
            ("a quarter of them are red", "red = tulips // 4"),
            ("the rest are yellow; print the answer", "yellow = tulips - red\nprint(yellow)"),
        ),
        output="45",
        answer="45",
    ),
)


def _check_code(code: str) -> str | None:
    """None when ``code`` compiles on its own, else a one-line reason."""
    try:
        compile(code, "<step>", "exec", dont_inherit=True)
        return None
    except SyntaxError as e:
        msg = e.msg or "invalid syntax"
        return f"syntax error: {msg} (line {e.lineno})"
    except (RecursionError, MemoryError, ValueError, OverflowError) as e:
        return f"syntax error: {type(e).__name__}"
    except Exception as e:  # pragma: no cover - defensive
        return f"syntax error: {type(e).__name__}"


def _has_code(code: str) -> bool:
    for line in code.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            return True
    return False


def _comment_text(code: str) -> str:
    return "\n".join(line.strip() for line in code.splitlines() if line.strip().startswith("#"))


def _last_line(stdout: str | None) -> str | None:
    if not stdout:
        return None
    for line in reversed(stdout.splitlines()):
        if line.strip():
            return line.strip()
    return None


@dataclass
class StepTemplate:
    """Base class; see the module docstring for the protocol."""

    name: str = ""
    stop: list[str] = field(default_factory=list)
    system: str = ""
    assistant_prefix: str = ""
    fewshot: list = field(default_factory=list)
    max_steps: int = 16
    max_step_tokens: int = 256
    max_output_chars: int = 1024

    # -- prompt -----------------------------------------------------------
    def fewshot_solution(self, ex: FewShot) -> str:
        raise NotImplementedError

    def messages(self, question: str) -> list[dict]:
        msgs: list[dict] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        for ex in self.fewshot:
            msgs.append({"role": "user", "content": self.user_text(ex.question)})
            msgs.append({"role": "assistant", "content": self.fewshot_solution(ex)})
        msgs.append({"role": "user", "content": self.user_text(question)})
        return msgs

    def user_text(self, question: str) -> str:
        return question.strip()

    def render(self, format_chat: FormatChat, question: str, steps: Sequence[str] = ()) -> str:
        return format_chat(self.messages(question)) + self.assistant_prefix + "".join(steps)

    # -- steps --------------------------------------------------------------
    def step_text(self, completion_text: str, stop_hit: str | None) -> str:
        return (completion_text or "") + (stop_hit or "")

    def parse(self, completion_text: str, stop_hit: str | None, finish_reason: str = "stop") -> ParsedStep:
        try:
            return self._parse(completion_text if isinstance(completion_text, str) else "", stop_hit, finish_reason)
        except Exception as e:  # never raise
            return _invalid(f"unparseable step ({type(e).__name__})")

    def _parse(self, text: str, stop_hit: str | None, finish_reason: str) -> ParsedStep:
        raise NotImplementedError

    def program(self, codes: Sequence[str]) -> str:
        parts = [c.strip("\n") for c in codes if c and c.strip()]
        return "\n".join(parts) + ("\n" if parts else "")

    def output_block(self, stdout: str) -> str:
        return ""

    def answer_from_output(self, stdout: str, step: ParsedStep | None = None) -> str | None:
        raise NotImplementedError

    def _cap(self, stdout: str | None) -> str:
        s = (stdout or "").rstrip("\n")
        if len(s) > self.max_output_chars:
            half = self.max_output_chars // 2
            s = s[:half] + "\n...\n" + s[-half:]
        return s


# ----------------------------------------------------------------------------
# default: "# Step k:" comments in one python block
# ----------------------------------------------------------------------------

_DEFAULT_SYSTEM = (
    "You are a careful math tutor who solves word problems by writing Python. "
    "Write the solution as one ```python code block, step by step. "
    "Begin every step with a comment line `# Step k: <what this step does>` followed by "
    "one or a few lines of plain top-level code for that step (no functions, no input()). "
    "In the last step print only the final answer as a number with print(...), "
    "then close the code block."
)

_HEADER_NUM_RE = re.compile(r"^\s*(\d+)\s*[:.)\-]?\s?")


@dataclass
class DefaultTemplate(StepTemplate):
    name: str = "default"
    stop: list[str] = field(default_factory=lambda: ["\n# Step", "```"])
    system: str = _DEFAULT_SYSTEM
    assistant_prefix: str = "```python\n# Step"
    fewshot: list = field(default_factory=lambda: list(FEWSHOT))

    def fewshot_solution(self, ex: FewShot) -> str:
        lines = ["```python"]
        for k, (why, code) in enumerate(ex.steps, 1):
            lines.append(f"# Step {k}: {why}")
            lines.append(code)
        lines.append("```")
        return "\n".join(lines)

    def _parse(self, text: str, stop_hit: str | None, finish_reason: str) -> ParsedStep:
        if stop_hit is None and finish_reason == "length":
            return _invalid("hit max_tokens without a stop string")
        if stop_hit is not None and stop_hit not in self.stop:
            return _invalid(f"unknown stop string {stop_hit!r}")
        final = stop_hit == "```" or (stop_hit is None)
        if not text.strip():
            return _invalid("empty step")
        if "```" in text:
            return _invalid("stray code fence inside a step")
        header, _, body = text.partition("\n")
        m = _HEADER_NUM_RE.match(header)
        num = m.group(1) if m else None
        reason = header[m.end():].strip() if m else header.strip()
        if not m and header.strip() and not header.startswith((" ", ":")):
            # e.g. "# Steps" or "# Stepping": the header does not continue "# Step"
            return _invalid("malformed step header")
        head_line = f"# Step {num}: {reason}".rstrip() if num else f"# Step: {reason}".rstrip()
        body = body.rstrip()
        if not _has_code(body):
            if final and not body.strip() and not reason:
                # the fence closed right after "# Step": the previous step was the last
                return ParsedStep(kind="final", code="", comment="", is_terminal=True)
            return _invalid("no code in step", comment=head_line)
        code = head_line + "\n" + body
        err = _check_code(code)
        comment = "\n".join(x for x in (head_line, _comment_text(body)) if x)
        if err:
            return _invalid(err, code=code, comment=comment)
        if final:
            return ParsedStep(kind="final", code=code, comment=comment, is_terminal=True)
        return ParsedStep(kind="code", code=code, comment=comment, is_terminal=False)

    def output_block(self, stdout: str) -> str:
        # the default format never shows output back: the last step ends the solution
        return ""

    def answer_from_output(self, stdout: str, step: ParsedStep | None = None) -> str | None:
        line = _last_line(stdout)
        if line is None:
            return None
        from rstar.grader import extract_answer

        if "\\boxed" in line:
            return extract_answer(line)
        # "Total: 72" / "answer = 72" / "The answer is 72" -> the part after the label
        m = re.search(r"(?:\bis\b|:|=)\s*(.+)$", line)
        if m and re.search(r"[A-Za-z]{3,}", line[: m.start()] or ""):
            line = m.group(1).strip().rstrip(".")
        # a sentence ("Natalia sold 72 clips in total.") -> its last number
        if re.search(r"[A-Za-z]{3,}", line) and not re.search(r"\\|sqrt|\bpi\b|frac|\boo\b|\binf\b", line):
            line = extract_answer(line) or line
        return line or None


# ----------------------------------------------------------------------------
# rStar-Math tags
# ----------------------------------------------------------------------------

_RSTAR_SYSTEM = (
    "You are a helpful assistant that solves math problems with Python code, step by step. "
    "Each step is a comment `# Step k: ...` with a few lines of code and ends with <end_of_step>. "
    "The last code step prints the result and ends with <end_of_code>. After the output, write the "
    "answer in \\boxed{} and end with <end_of_answer>."
)

_RSTAR_TAGS = ("<code>", "<end_of_step>", "<end_of_code>", "<output>", "<end_of_output>", "<answer>", "<end_of_answer>")


@dataclass
class RStarTemplate(StepTemplate):
    name: str = "rstar"
    stop: list[str] = field(default_factory=lambda: ["<end_of_step>", "<end_of_code>", "<end_of_answer>"])
    system: str = _RSTAR_SYSTEM
    assistant_prefix: str = "<code>\n"
    fewshot: list = field(default_factory=lambda: list(FEWSHOT))

    def fewshot_solution(self, ex: FewShot) -> str:
        parts = ["<code>\n"]
        n = len(ex.steps)
        for k, (why, code) in enumerate(ex.steps, 1):
            end = "<end_of_code>" if k == n else "<end_of_step>"
            parts.append(f"# Step {k}: {why}\n{code}\n{end}")
            if k < n:
                parts.append("\n")
        parts.append(self.output_block(ex.output))
        parts.append(f"The answer is \\boxed{{{ex.answer}}}.<end_of_answer>")
        return "".join(parts)

    def _parse(self, text: str, stop_hit: str | None, finish_reason: str) -> ParsedStep:
        if stop_hit is None and finish_reason == "length":
            return _invalid("hit max_tokens without a stop string")
        if stop_hit is not None and stop_hit not in self.stop:
            return _invalid(f"unknown stop string {stop_hit!r}")
        if not text.strip():
            return _invalid("empty step")
        if stop_hit == "<end_of_answer>":
            body = text.replace("<answer>", "").replace("<end_of_output>", "")
            from rstar.grader import extract_answer

            boxed = None
            if "\\boxed" in body or "\\fbox" in body:
                boxed = extract_answer(body)
            if not boxed:
                return _invalid("no \\boxed{} answer", comment=body.strip())
            return ParsedStep(kind="answer", code="", comment=body.strip(), answer=boxed, is_terminal=True)
        if stop_hit is None:
            # end of sequence without a tag
            return _invalid("ended without a step tag")
        code = text
        if code.lstrip().startswith("<code>"):
            code = code.lstrip()[len("<code>"):]
        for tag in _RSTAR_TAGS:
            if tag in code:
                return _invalid(f"unexpected {tag} inside a code step")
        code = code.strip("\n").rstrip()
        if not _has_code(code):
            return _invalid("no code in step", comment=_comment_text(code))
        comment = _comment_text(code)
        err = _check_code(code)
        if err:
            return _invalid(err, code=code, comment=comment)
        if stop_hit == "<end_of_code>":
            return ParsedStep(kind="final", code=code, comment=comment, is_terminal=False)
        return ParsedStep(kind="code", code=code, comment=comment, is_terminal=False)

    def output_block(self, stdout: str) -> str:
        return f"\n<output>{self._cap(stdout)}<end_of_output>\n<answer>"

    def answer_from_output(self, stdout: str, step: ParsedStep | None = None) -> str | None:
        # rStar-Math's answer is the \boxed{} of the answer step, not the output
        if step is not None and step.answer:
            return step.answer
        return None


TEMPLATES: dict[str, type[StepTemplate]] = {
    "default": DefaultTemplate,
    "rstar": RStarTemplate,
}


def get_template(name: str = "default", **overrides) -> StepTemplate:
    """A fresh template instance by name; keyword overrides set fields
    (e.g. ``max_steps=12``, ``fewshot=[]``)."""
    if isinstance(name, StepTemplate):
        return name
    try:
        cls = TEMPLATES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown template {name!r}; choose from: {', '.join(sorted(TEMPLATES))}") from None
    return cls(**overrides)
