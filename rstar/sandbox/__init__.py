"""Isolated execution of model-written Python: a pool of hardened Docker containers.

```python
from rstar.sandbox import SandboxPool, SandboxConfig
with SandboxPool(size=2, config=SandboxConfig(timeout_s=5)) as pool:
    results = pool.run(["print(1+1)", "1/0"])            # ExecResult per program, in order
    steps = pool.run_steps([["x = 1", "print(x + 1)"]])    # StepResult per search path
    # incremental mode (the default): name the nodes, and a step forks its parent's state
    pool.run_steps([["x = 1"]], nodes=[("tree-7", 0, None)])
    pool.run_steps([["x = 1", "print(x + 1)"]], nodes=[("tree-7", 1, 0)])  # runs only print(x + 1)
    pool.release("tree-7")                                  # the tree is finished: drop its states
```

Results are the same in both modes for deterministic programs. What may
legitimately differ: programs that read the clock, unseeded random numbers
(a step forked from a state continues its parent's generator), object ids and
addresses, files a step left in /tmp (removed after every program, so a later
step never sees them; re-running the path would), and limits: in incremental
mode the wall-clock and CPU limits apply to each step's own run, while
re-running a path counts the whole path (the address-space limit and the
output cap count the whole path in both modes).

The image and its worker live in ``sandbox/`` (``rstar sandbox build``);
``pool.py`` is the host side, ``engine.py`` turns Docker failures into one
clear line, ``image.py`` builds the image, ``cli.py`` is ``rstar sandbox``.
"""

from rstar.sandbox.pool import STATUSES, ExecResult, SandboxConfig, SandboxPool, StepResult

__all__ = ["SandboxPool", "SandboxConfig", "ExecResult", "StepResult", "STATUSES"]
