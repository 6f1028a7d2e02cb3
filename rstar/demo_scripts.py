"""Deterministic scripted policies, importable by every process and every Ray worker.

Use one as a model spec ``scripted:rstar.demo_scripts:NAME``; the scripted
backend (``rstar.policy.ScriptedPolicy``) calls ``NAME(prompt, n)`` and treats
each returned text as raw model output. Nothing here loads a model, so tests and
benchmarks measure the search loop, the sandbox and the scale-out around it.

``gsm8k_arithmetic`` writes valid steps in the ``default`` template's format
(``# Step k:`` comments in one Python block). It reads the numbers of the
question (the last user message of the prompt) and, step by step:

1. lists the numbers and picks a way to combine them; candidate ``j`` of an
   expansion picks operation ``j`` of :data:`OPERATIONS` (sum, product, ...),
   so an expansion has up to four distinct children;
2. computes the result (three wordings of the same code); one candidate in
   four writes a step that fails when run (a NameError), so the search meets
   invalid nodes too;
3. prints the result and closes the code block (the terminal step).

``gsm8k_arithmetic_paced`` is the same script taking a fixed time per prompt
(:data:`PACE_S`), for runs that must last a while. The texts depend only on
the prompt and on ``j``: the same problem gives the
same tree in any process, on any node, in any batch.

``arithmetic_problems(n)`` makes matching questions ("What is the total of
A, B and C?") with gold answers, for which the ``sum`` candidates are right.
"""

from __future__ import annotations

import random
import re
import time

__all__ = ["OPERATIONS", "PACE_S", "gsm8k_arithmetic", "gsm8k_arithmetic_paced", "question_numbers",
           "arithmetic_problems"]

PACE_S = 0.02  # seconds gsm8k_arithmetic_paced spends per prompt, standing in for a model's time

# name -> the code of step 2 (computes `result` from `nums`)
OPERATIONS: dict[str, str] = {
    "sum": "result = sum(nums)",
    "product": "result = 1\nfor x in nums:\n    result = result * x",
    "difference": "result = max(nums) - min(nums)",
    "sum times last": "result = sum(nums[:-1]) * nums[-1]",
}

_PREFIX = "```python\n# Step"          # the default template's assistant prefix
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_OP_RE = re.compile(r'^op = "([^"]+)"$', re.M)


def _split(prompt: str) -> tuple[str, str]:
    """(chat part, steps written so far) of a default-template prompt."""
    if _PREFIX in prompt:
        chat, steps = prompt.rsplit(_PREFIX, 1)
        return chat, steps
    return prompt, ""


def _question(chat: str) -> str:
    """The last user message: ChatML markers when present, else what follows the last few-shot block."""
    marker = "<|im_start|>user\n"
    if marker in chat:
        return chat.rsplit(marker, 1)[1].split("<|im_end|>", 1)[0]
    return chat.rsplit("```", 1)[-1]


def question_numbers(question: str) -> list[str]:
    """The numbers of a question as Python literals, thousands separators removed ("1,200" -> "1200")."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", question)
    out = []
    for tok in _NUMBER_RE.findall(text):
        out.append(str(int(tok)) if "." not in tok else repr(float(tok)))
    return out or ["0"]


def gsm8k_arithmetic(prompt: str, n: int) -> list[str]:
    """``n`` candidate next steps for a default-template prompt (see the module docstring)."""
    chat, steps = _split(prompt)
    k = steps.count("\n# Step") + 1  # each finished step's text ends with the stop string "\n# Step"
    names = list(OPERATIONS)
    if k == 1:
        nums = ", ".join(question_numbers(_question(chat)))
        return [f" 1: the numbers in the question, combined by {names[j % len(names)]}\n"
                f"nums = [{nums}]\nop = \"{names[j % len(names)]}\"\n# Step" for j in range(n)]
    if k == 2:
        m = _OP_RE.search(steps)
        op = m.group(1) if m and m.group(1) in OPERATIONS else "sum"
        says = (f"the {op} of the numbers", f"compute the {op}", f"work out the {op}")
        out = []
        for j in range(n):
            if j % 4 == 3:
                out.append(f" 2: combine the numbers\nresult = combine_{j}(nums)\n# Step")
            else:
                out.append(f" 2: {says[j % 4]}\n{OPERATIONS[op]}\n# Step")
        return out
    return [f" {k}: print the answer\nprint(result)\n```" for _ in range(n)]


def gsm8k_arithmetic_paced(prompt: str, n: int) -> list[str]:
    """:func:`gsm8k_arithmetic` taking :data:`PACE_S` seconds per prompt, like a (very fast) model:
    the same texts, so the same trees, with time that parallel workers can overlap."""
    time.sleep(PACE_S)
    return gsm8k_arithmetic(prompt, n)


def arithmetic_problems(n: int, seed: int = 0) -> list[dict]:
    """``n`` dataset records ``{"id", "question", "answer"}``: totals of two to four numbers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        nums = [rng.randint(2, 99) for _ in range(rng.randint(2, 4))]
        listed = ", ".join(map(str, nums[:-1])) + f" and {nums[-1]}"
        out.append({"id": f"arith-{i}", "question": f"What is the total of {listed}?", "answer": str(sum(nums))})
    return out
