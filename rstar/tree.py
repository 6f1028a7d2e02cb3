"""Python face of the tree core (`rstar._core`): many MCTS trees in one arena.

This docstring is the one place that states the core's behaviour;
``csrc/forest.hpp`` states the same layout and invariants for C++ readers.

Node id = index into one arena shared by all trees; ids never change when the
arena grows. Each arena slot is either a live node, an unborn child slot
(reserved by ``expand(..., reserve=...)`` for ``add_children``; flag UNBORN)
or a released slot (freed by ``release``; flag RELEASED). Every call that
takes ids refuses the last two ("node N was released"); views show all slots.
The numbers of every slot live in C++ columns (struct of arrays):

=============  =======  =====================================================
column         dtype    meaning
=============  =======  =====================================================
parent         int32    parent id, NO_PARENT (-1) for a root (any id order)
first_child    int32    first slot of the child block, -1 while it has none
num_children   uint16   born children: first_child .. first_child+num_children-1
depth          uint16   0 for a root
flags          uint8    EXPANDED=1 TERMINAL=2 INVALID=4 PENDING=8 EXHAUSTED=16
                        UNBORN=32 RELEASED=64
visits         int32    N, completed back-ups through the node
in_flight      int32    virtual-loss count (outstanding selections through it)
value_sum      float64  W, sum of backed-up values
prior          float32  P (PUCT); uniform 1/count of its call unless given
reward_min     float32  MCTSr: min of the reward samples (+inf when none)
reward_sum     float32  MCTSr: sum of the reward samples
reward_count   uint16   MCTSr: number of reward samples
q_backed       float32  MCTSr backed-up quality (NaN while unrated)
=============  =======  =====================================================

47 bytes per node (``BYTES_PER_NODE``). Text (steps, code, outputs) lives in
Python, keyed by node id.

A child block is contiguous: the born children in creation order, then the
unborn slots still free. After ``release`` ids are reused, so a child may have
a lower id than its parent; nothing relies on id order (export is breadth-first
along the blocks).

Rules (a tree's rule is set at ``create_roots`` / ``set_rule`` with ``rule``,
``c``, ``first_play``, ``eps`` and ``max_children``; ``get_rule`` returns them;
``select`` can override any of them for one call). For child ``a`` of node
``p``, with ``f`` the child's in-flight count, ``N = visits + f``, ``W =
value_sum - virtual_loss * f`` and ``Np = visits[p] + in_flight[p]`` (read
before the current descent adds its own virtual loss):

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
A descent skips dead children (TERMINAL, INVALID or EXHAUSTED: ``DEAD``) and
childless children already in flight, adds virtual loss (``in_flight += 1``)
on every node of its path (root and leaf included) and stops at a node without
children; the leaf is marked PENDING until ``backprop`` or ``cancel``. A
descent that meets a node with no eligible child changes nothing and that
tree yields fewer than ``k`` leaves. An unexpanded root is itself the leaf.
Selecting from a dead root raises ValueError.

Stopping at an internal node (MCTSr's expansion rule): with ``max_children``
K > 0, a descent also stops at a node that has children when the node is not
PENDING and is expandable: fewer than K children and no child whose
``q_backed`` is strictly greater than the node's (NaN compares false: an
unrated child never beats, and an unrated node is expandable exactly while it
has fewer than K children). That node is returned as the leaf, PENDING, with
virtual loss on its path. K = 0 (the default) never stops early. K applies
under any rule; with UCT/PUCT q_backed is usually NaN, so K caps the width.

Growing trees:

- ``expand(leaves, counts, priors=None, reserve=None)`` gives ``leaves[i]`` a
  child block of ``reserve[i]`` slots (default ``counts[i]``; ``reserve[i] >=
  counts[i]``) of which the first ``counts[i]`` are born as children (in
  order), the rest UNBORN. ``counts[i] = reserve[i] = 0`` leaves the node
  untouched; a count of 0 with a reserve gives a block but no child (the node
  stays a leaf). A node that is expanded or already has a block is refused.
- ``add_children(nodes, counts, priors=None, reserve=None)`` turns the next
  ``counts[i]`` unborn slots of ``nodes[i]`` into children after those it has
  (ids stay stable; ``children`` lists them all in creation order); too few
  unborn slots left raises ValueError (expand with a larger ``reserve``). A
  node without a block is expanded, with ``reserve`` as in ``expand`` except
  its default: ``max(counts[i], max_children of the tree)`` when ``counts[i]
  > 0`` (so the stop rule's nodes have room for their later children);
  ``reserve`` is ignored for nodes that have a block. Pending, in-flight and exhausted nodes may get
  children (an exhausted node, and each exhausted ancestor above it, is no
  longer exhausted); terminal and invalid ones may not. ``slots_left(nodes)``
  gives the unborn slots each node has left (0 without a block).
- Priors, in both: ``priors`` (one per child born, in order) or uniform
  ``1/counts[i]`` over the children born by that call.

Dead states: ``mark_terminal`` (a step that gives an answer) and
``mark_invalid`` set their flag; then a parent whose born children are all
dead becomes EXHAUSTED (a subtree with nothing left), upward, stopping at a
node already dead. TERMINAL is never derived: it always means an answer step.

Releasing: ``release(roots)`` frees every slot of those trees (nodes and
unborn slots) and their rules; the slots are reused by later
``create_roots``, ``expand``, ``add_children`` and ``import_tree`` (first fit
over the coalesced free ranges by id, else fresh slots at the top). A root
with a selection in flight is refused. ``num_nodes`` is the arena's
high-water mark (view length), ``num_live`` the live nodes, ``capacity`` the
allocated slots. A run that releases finished trees keeps all three flat.

Inputs: ids and counts are int64 numpy arrays (or Python ints / lists of
ints, converted); values, priors and rewards float64 (float32 arrays and lists
of numbers are converted). Any other dtype raises TypeError naming the
argument; every other problem (ids out of range or released, not a root,
lengths that differ, negative counts, NaN or inf, expanding twice, backprop of
a node that has no selection in flight, ...) raises ValueError naming it. All
inputs are validated before anything changes. Batch calls release the GIL; a
per-forest mutex makes concurrent calls from several threads safe.

Views: ``view(name)`` is a read-only zero-copy numpy array over a column,
``num_nodes`` long at the time of the call. When the arena later grows, the
view keeps the old buffer alive: it stays valid (never dangling) but is a
snapshot that no longer sees changes; take a new view after growth.

Export: ``export_tree(root)`` gives one tree breadth-first in local ids (root
0; parent, first_child, num_children, depth, flags without PENDING, visits,
value_sum, prior, the MCTSr columns, ``node_ids`` and the rule including
``max_children``); unborn slots are not exported, so an imported tree has no
room for ``add_children`` below an expanded node. ``import_tree`` places a tree
in one contiguous block of slots and returns its root id.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from rstar._core import (  # noqa: F401  (re-exports)
    BYTES_PER_NODE,
    DEAD,
    EXHAUSTED,
    EXPANDED,
    FIELDS,
    INVALID,
    MCTSR,
    NO_PARENT,
    PENDING,
    PUCT,
    RELEASED,
    TERMINAL,
    UNBORN,
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
    "EXHAUSTED",
    "UNBORN",
    "RELEASED",
    "DEAD",
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
