"""rstar: rStar-Math style code-augmented tree search for small language models.

A policy model writes a solution as Python, one step at a time; each step's
program runs in a hardened Docker sandbox; steps that fail are cut; Monte Carlo
tree search over the surviving steps, with numbers kept in a C++ arena
(`rstar._core`), finds verified solutions and yields training data.
"""

__version__ = "0.1.0"
