"""Answer grading internals; the public API is ``rstar.grader``.

* ``normalize``: string normalisation and the numeric fast path (host, no sympy);
* ``pyparse``: program-printed answers to sympy objects by a whitelisted AST walk;
* ``compare``: three-valued mathematical equality (worker process);
* ``worker``: the guarded worker processes.
"""
