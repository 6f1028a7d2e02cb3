"""Isolated execution of model-written Python: a pool of hardened Docker containers.

```python
from rstar.sandbox import SandboxPool, SandboxConfig
with SandboxPool(size=2, config=SandboxConfig(timeout_s=5)) as pool:
    results = pool.run(["print(1+1)", "1/0"])            # ExecResult per program, in order
    steps = pool.run_steps([["x = 1", "print(x + 1)"]])    # StepResult per search path
```

The image and its worker live in ``sandbox/`` (``rstar sandbox build``);
``pool.py`` is the host side, ``engine.py`` turns Docker failures into one
clear line, ``image.py`` builds the image, ``cli.py`` is ``rstar sandbox``.
"""

from rstar.sandbox.pool import STATUSES, ExecResult, SandboxConfig, SandboxPool, StepResult

__all__ = ["SandboxPool", "SandboxConfig", "ExecResult", "StepResult", "STATUSES"]
