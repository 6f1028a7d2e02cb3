"""Scripts for rstar's ScriptedPolicy shared by the search tests: a continuation chosen by the
step number of the prompt, so a test knows exactly which steps the "model" wrote."""

from rstar.templates import get_template

T = get_template("default")


def step_no(prompt: str) -> int:
    """1 + the number of steps already written after the assistant prefix."""
    tail = prompt.rsplit(T.assistant_prefix, 1)[1]
    return tail.count("\n# Step") + 1


def by_step(table):
    """A script: step k of any prompt gets the candidates table[k] (a list of raw continuations)."""
    def script(prompt, n):
        cands = table.get(step_no(prompt), ["garbage"])
        return [cands[i % len(cands)] for i in range(n)]
    return script
