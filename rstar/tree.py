"""Python face of the tree core (`rstar._core`): many MCTS trees in one arena.

Node id = index into one arena shared by all trees; ids never change when the
arena grows. The numbers of every node live in C++ columns (struct of arrays):

=============  =======  =====================================================
column         dtype    meaning
=============  =======  =====================================================
parent         int32    parent id, NO_PARENT (-1) for a root
first_child    int32    id of the first child, -1 until expanded
num_children   uint16   children are first_child .. first_child+num_children-1
depth          uint16   0 for a root
flags          uint8    EXPANDED=1, TERMINAL=2, INVALID=4, PENDING=8
visits         int32    N, completed back-ups through the node
in_flight      int32    virtual-loss count (outstanding selections through it)
value_sum      float64  W, sum of backed-up values
prior          float32  P (PUCT); uniform 1/count unless given
reward_min     float32  MCTSr: min of the reward samples (+inf when none)
reward_sum     float32  MCTSr: sum of the reward samples
reward_count   uint16   MCTSr: number of reward samples
q_backed       float32  MCTSr backed-up quality (NaN while unrated)
=============  =======  =====================================================

47 bytes per node (``BYTES_PER_NODE``). Text (steps, code, outputs) lives in
Python, keyed by node id.

Rules (a tree's rule is set at ``create_roots`` / ``set_rule``; ``select`` can
override it for one call). For child ``a`` of node ``p``, with ``f`` the
child's in-flight count, ``N = visits + f``, ``W = value_sum -
virtual_loss * f`` and ``Np = visits[p] + in_flight[p]`` (read before the
current descent adds its own virtual loss):

- ``UCT`` (rStar-Math, c=2): ``first_play`` if ``N == 0``, else
  ``W/N + c * sqrt(ln(max(Np, 1)) / N)``. ``first_play`` defaults to +inf
  (every child is tried once first); rStar's public code uses 0.
- ``PUCT`` (AlphaMath, c=1.25): ``Q + c * P * sqrt(Np) / (1 + N)`` with
  ``Q = first_play`` (default 0) when ``N == 0``, else ``W/N``.
- ``MCTSR`` (c=1.4, eps=1e-5): ``first_play`` (default +inf) while the child
  has no ``q_backed`` (unrated), else ``q_backed + c * sqrt(ln(Np + 1) / (N + eps))``.
  Virtual loss acts through N only.

The highest score wins; ties go to the lowest child index.

MCTSr quality: ``own = (min R + mean R) / 2`` over a node's reward samples;
``q_backed = (own + max over rated children q_backed) / 2`` (just ``own`` or
just the children's max when one side is missing, NaN when both are). It is
recomputed for the node and all its ancestors by every ``add_rewards`` call,
so it is always current (``backprop`` leaves it alone: it has nothing to add).

Selection: ``select(roots, k)`` descends from each root ``k`` times in a row.
A descent skips terminal and invalid children and leaves already in flight,
adds virtual loss (``in_flight += 1``) on every node of its path (root and
leaf included) and stops at a node without children; the leaf is marked
PENDING until ``backprop`` or ``cancel``. A descent that meets a node with no
eligible child changes nothing and that tree yields fewer than ``k`` leaves.
An unexpanded root is itself the leaf. Selecting from a terminal or invalid
root raises ValueError.

``expand(leaves, counts, priors=None)`` appends ``counts[i]`` children to
``leaves[i]`` (contiguous, in order); a count of 0 leaves the node untouched.
``mark_terminal`` / ``mark_invalid`` set the flag, then a parent whose
children are all terminal or invalid becomes terminal, upward.

Inputs: ids and counts are int64 numpy arrays (or Python ints / lists of
ints, converted); values, priors and rewards float64 (float32 arrays and lists
of numbers are converted). Any other dtype raises TypeError naming the
argument; every other problem (ids out of range, not a root, lengths that
differ, negative counts, NaN or inf, expanding twice, backprop of a node that
has no selection in flight, ...) raises ValueError naming it. All inputs are
validated before anything changes. Batch calls release the GIL; a per-forest
mutex makes concurrent calls from several threads safe.

Views: ``view(name)`` is a read-only zero-copy numpy array over a column,
``num_nodes`` long at the time of the call. When the arena later grows, the
view keeps the old buffer alive: it stays valid (never dangling) but is a
snapshot that no longer sees changes; take a new view after growth.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from rstar._core import (  # noqa: F401  (re-exports)
    BYTES_PER_NODE,
    EXPANDED,
    FIELDS,
    INVALID,
    MCTSR,
    NO_PARENT,
    PENDING,
    PUCT,
    TERMINAL,
    UCT,
    Forest,
)

__all__ = [
    "Forest",
    "UCT",
    "PUCT",
    "MCTSR",
    "EXPANDED",
    "TERMINAL",
    "INVALID",
    "PENDING",
    "NO_PARENT",
    "ROOT_INDEX",
    "BYTES_PER_NODE",
    "FIELDS",
    "RULE_NAMES",
    "DEFAULT_C",
    "DEFAULT_FIRST_PLAY",
    "rule_from_name",
    "save_tree",
    "load_tree",
]

ROOT_INDEX = 0  # local id of the root in an exported tree
RULE_NAMES = {UCT: "uct", PUCT: "puct", MCTSR: "mctsr"}
DEFAULT_C = {UCT: 2.0, PUCT: 1.25, MCTSR: 1.4}
DEFAULT_FIRST_PLAY = {UCT: float("inf"), PUCT: 0.0, MCTSR: float("inf")}


def rule_from_name(name: str | int) -> int:
    """``"uct"`` / ``"puct"`` / ``"mctsr"`` (any case) or a rule constant -> the constant."""
    if isinstance(name, (int, np.integer)) and int(name) in RULE_NAMES:
        return int(name)
    by_name = {v: k for k, v in RULE_NAMES.items()}
    key = str(name).lower()
    if key not in by_name:
        raise ValueError(f"unknown selection rule {name!r} (one of: uct, puct, mctsr)")
    return by_name[key]


def save_tree(forest: Forest, root: int, path: str | os.PathLike) -> None:
    """Write one tree (``export_tree``) to an ``.npz`` file, atomically."""
    arrays = forest.export_tree(root)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def load_tree(forest: Forest, source: str | os.PathLike | Mapping[str, np.ndarray]) -> int:
    """Import a tree saved by ``save_tree`` (or an ``export_tree`` dict); returns its new root id."""
    if isinstance(source, Mapping):
        return forest.import_tree(dict(source))
    with np.load(os.fspath(source), allow_pickle=False) as data:
        return forest.import_tree({k: data[k] for k in data.files})
