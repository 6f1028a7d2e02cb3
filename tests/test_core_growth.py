"""Children added to an expanded node (reserved, unborn slots) and selection
that stops at an expandable internal node (max_children, MCTSr's rule), with
hand-computed expectations."""

import math

import numpy as np
import pytest

import tree_reference as reference  # the pure-Python oracle of the core (tests/tree_reference.py)
from rstar.tree import EXPANDED, MCTSR, PENDING, PUCT, UCT, UNBORN, Forest


# ------------------------------------------------------------------ add_children


def test_reserved_slots_are_invisible_until_born():
    f = Forest()
    (r,) = f.create_roots(1).tolist()
    (a,) = f.expand([r], [1], reserve=[4]).tolist()
    assert a == 1
    assert f.num_nodes == 5 and f.num_live == 2
    assert f.children(r).tolist() == [a]
    assert f.slots_left(r) == 3 and f.slots_left([a]).tolist() == [0]
    fl = f.view("flags")
    assert fl[2:5].tolist() == [UNBORN] * 3
    assert f.view("parent")[2:5].tolist() == [r] * 3  # owned by r, one level down
    assert f.view("depth")[2:5].tolist() == [1] * 3
    for fn in (f.children, f.path):
        with pytest.raises(ValueError, match="node 3 is an unborn child slot of node 0"):
            fn(3)
    with pytest.raises(ValueError, match="unborn child slot"):
        f.mark_terminal([2])
    # selection sees one child; export holds two nodes
    leaves, _ = f.select([r], 5)
    assert leaves.tolist() == [a]
    f.cancel(leaves)
    assert f.export_tree(r)["node_ids"].tolist() == [r, a]
    # the block is born in order, ids stable; all children listed in creation order
    assert f.add_children([r], [2]).tolist() == [2, 3]
    assert f.add_children([r], [1]).tolist() == [4]
    assert f.children(r).tolist() == [1, 2, 3, 4]
    assert f.num_live == 5 and f.slots_left(r) == 0
    with pytest.raises(ValueError, match=r"node 0 has 0 unborn child slot\(s\) left.*larger reserve"):
        f.add_children([r], [1])


def test_add_children_priors_and_flags():
    f = Forest()
    (r,) = f.create_roots(1, rule=PUCT).tolist()
    a, b = f.expand([r], [2], reserve=[6]).tolist()
    c, d, e = f.add_children([r], [3]).tolist()  # uniform over this call's children: 1/3
    (g,) = f.add_children([r], [1], [0.75]).tolist()
    pr = f.view("prior")
    assert pr[[a, b]].tolist() == [0.5, 0.5]
    assert pr[[c, d, e]].tolist() == [np.float32(1 / 3)] * 3
    assert pr[g] == 0.75
    assert f.view("num_children")[r] == 6 and f.view("flags")[r] == EXPANDED
    assert f.view("flags")[[c, d, e, g]].tolist() == [0] * 4


def test_add_children_on_a_node_without_a_block_is_expand():
    f, g = Forest(), Forest()
    for x in (f, g):
        x.create_roots(3)
    assert f.add_children([2, 0], [2, 1], [0.5, 0.25, 1.0]).tolist() == g.expand([2, 0], [2, 1], [0.5, 0.25, 1.0]).tolist()
    for name in ("parent", "first_child", "num_children", "flags", "prior"):
        assert f.view(name).tolist() == g.view(name).tolist(), name
    # a reserve there works as in expand; a reserve for a node with a block is ignored
    (k,) = f.add_children([1], [1], reserve=[3]).tolist()
    assert f.slots_left(1) == 2
    assert f.add_children([1], [1], reserve=[9]).tolist() == [k + 1]
    assert f.slots_left(1) == 1


def test_add_children_reserves_room_for_max_children_by_default():
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, max_children=3).tolist()
    (u,) = f.create_roots(1, rule=UCT).tolist()
    a, b = f.expand([r], [2]).tolist()  # expand: the block is what was asked for
    assert f.slots_left(r) == 0
    (a1,) = f.add_children([a], [1]).tolist()  # a had no block: room for K = 3
    assert f.slots_left(a) == 2
    assert f.add_children([b], [0]).tolist() == [] and f.view("first_child")[b] == -1  # 0: untouched
    (b1,) = f.add_children([b], [1], reserve=[1]).tolist()  # an explicit reserve wins
    assert f.slots_left(b) == 0
    (u1,) = f.add_children([u], [1]).tolist()  # K = 0: just the children
    assert f.slots_left(u) == 0
    assert f.add_children([a], [2]).tolist() == [a1 + 1, a1 + 2]


def test_expand_with_a_reserve_and_no_children_keeps_a_leaf():
    f = Forest()
    (r,) = f.create_roots(1).tolist()
    assert f.expand([r], [0], reserve=[2]).tolist() == []
    assert f.view("num_children")[r] == 0 and f.view("flags")[r] == 0
    assert f.view("first_child")[r] == 1 and f.slots_left(r) == 2
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [r]  # still a leaf
    with pytest.raises(ValueError, match="already has reserved child slots"):
        f.expand([r], [1])
    (a,) = f.add_children(leaves, [1]).tolist()  # the pending leaf gets its first child
    f.backprop(leaves, [1.0])
    assert f.view("visits")[[r, a]].tolist() == [1, 0]
    assert f.select([r], 1)[0].tolist() == [a]


def test_add_children_refusals_change_nothing():
    f = Forest()
    r, s = f.create_roots(2).tolist()
    a, b = f.expand([r], [2], reserve=[3]).tolist()
    f.mark_terminal([b])
    before = {k: f.view(k).copy() for k in ("flags", "num_children", "prior", "parent")}
    cases = [
        (([r], [2]), "1 unborn child slot"),
        (([b], [1]), f"node {b} is terminal"),
        (([r, r], [1, 0]), "appears twice"),
        (([r], [-1]), "negative"),
        (([s], [1], None, [0]), r"reserve\[0\] = 0 is less than counts\[0\] = 1"),
        (([s], [1], None, [70000]), "exceeds 65535"),
        (([r, s], [1]), "differ in length"),
        (([r, s], [1, 1], None, [1]), "reserve has length 1"),
        (([r, s], [1, 1], [0.5]), "priors has length 1 but counts sum to 2"),
        (([4], [1]), "unborn child slot of node 0"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            f.add_children(*args)
        for k, v in before.items():
            assert np.array_equal(f.view(k), v), (match, k)
    f.mark_invalid([a])
    with pytest.raises(ValueError, match=f"node {a} is invalid"):
        f.add_children([a], [1])


# ------------------------------------------------------------------ max_children


def test_max_children_in_rule_params():
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, max_children=3).tolist()
    assert f.get_rule(r)["max_children"] == 3
    f.set_rule([r], MCTSR, max_children=5)
    assert f.get_rule(r)["max_children"] == 5
    f.set_rule([r], MCTSR)
    assert f.get_rule(r)["max_children"] == 0
    for bad in (-1, 65536):
        with pytest.raises(ValueError, match="max_children must lie in"):
            f.create_roots(1, max_children=bad)
        with pytest.raises(ValueError, match="max_children must lie in"):
            f.select([r], 1, max_children=bad)


def test_mctsr_stops_at_the_root_until_it_has_max_children():
    """MCTSr, K = 2. Hand-computed q_backed: own = (min + mean) / 2, q = (own + best child) / 2."""
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, max_children=2).tolist()
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [r]  # no children: the leaf, as without K
    (a,) = f.add_children(leaves, [1], reserve=[2]).tolist()
    f.backprop(leaves, [0.0])
    f.add_rewards([r], [40.0])  # q(r) = 40
    f.add_rewards([a], [20.0])  # q(a) = 20; q(r) = (40 + 20) / 2 = 30
    q = f.view("q_backed")
    assert (q[r], q[a]) == (30.0, 20.0)
    # r has 1 < 2 children and a (20) does not beat r (30): the descent stops at r.
    # The second descent of the call cannot stop at r again (PENDING): it goes down to a.
    leaves, _ = f.select([r], 2)
    assert leaves.tolist() == [r, a]
    assert f.view("flags")[r] & PENDING and f.view("flags")[a] & PENDING
    assert f.view("in_flight")[[r, a]].tolist() == [2, 1]
    (b,) = f.add_children([r], [1]).tolist()  # the refinement of the stopped-at node
    f.backprop(leaves, [0.0, 0.0])
    assert f.view("visits")[[r, a, b]].tolist() == [3, 1, 0]
    # now 2 children = K: r is fully expanded; b is unrated (first_play +inf)
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [b]
    f.cancel(leaves)
    f.add_rewards([b], [90.0])  # q(b) = 90, q(r) = (40 + 90) / 2 = 65
    assert f.view("q_backed")[r] == 65.0


def test_a_better_child_means_the_node_is_fully_expanded():
    """K = 3: r (own 40) with child a rated 60: q(r) = 50 < 60, so r is not
    expandable although it has 1 < 3 children; a (60, one unrated child) is."""
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, max_children=3).tolist()
    (a,) = f.expand([r], [1], reserve=[3]).tolist()
    f.add_rewards([r, a], [40.0, 60.0])
    assert f.view("q_backed")[[r, a]].tolist() == [50.0, 60.0]
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [a]  # a is a leaf: the ordinary end of the descent
    (a1,) = f.add_children(leaves, [1], reserve=[3]).tolist()
    f.backprop(leaves, [0.0])
    # a1 unrated (NaN never beats): a is expandable with 1 < 3 children
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [a]
    f.cancel(leaves)
    # a1 rated 70 > q(a) = (60 + 70) / 2 = 65: a is fully expanded too; the descent reaches a1
    f.add_rewards([a1], [70.0])
    assert f.view("q_backed")[[a, a1]].tolist() == [65.0, 70.0]
    # r: q = (40 + 65) / 2 = 52.5 < a's 65
    assert f.select([r], 1)[0].tolist() == [a1]


def test_equal_quality_does_not_beat_and_nan_nodes_stop_only_below_k():
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, max_children=2).tolist()
    (a,) = f.expand([r], [1], reserve=[2]).tolist()
    # r unrated, a unrated: r's q is NaN; nothing beats it; 1 < 2 children: stop
    assert math.isnan(f.view("q_backed")[r])
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [r]
    f.cancel(leaves)
    f.add_rewards([a], [10.0])  # r unrated with a rated child: q(r) = best = 10 = q(a): no child beats
    assert f.select([r], 1)[0].tolist() == [r]
    f.cancel([r])
    (b,) = f.add_children([r], [1]).tolist()
    # 2 = K children, r's q from its children: not stopped at, whatever the qualities
    got, _ = f.select([r], 1)
    assert got.tolist() == [b]  # unrated b: first_play +inf
    f.cancel(got)


def test_max_children_caps_width_under_uct_and_select_override():
    f = Forest()
    (r,) = f.create_roots(1, rule=UCT, max_children=2).tolist()
    (a,) = f.expand([r], [1], reserve=[2]).tolist()
    assert f.select([r], 1)[0].tolist() == [r]  # q_backed NaN: only the width counts
    f.cancel([r])
    got, _ = f.select([r], 1, max_children=0)  # per-call override: no early stop
    assert got.tolist() == [a]
    f.cancel(got)
    got, _ = f.select([r], 1, rule=UCT)  # a whole-rule override without max_children: 0
    assert got.tolist() == [a]
    f.cancel(got)
    assert f.get_rule(r)["max_children"] == 2  # the overrides did not stick


def test_dead_nodes_are_never_stopped_at():
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, max_children=3).tolist()
    a, b, c = f.expand([r], [3]).tolist()
    (a1,) = f.expand([a], [1], reserve=[3]).tolist()
    f.mark_invalid([a1])  # a: exhausted, with 1 < 3 children
    f.mark_terminal([b])
    leaves, _ = f.select([r], 3)
    assert leaves.tolist() == [c]  # a and b skipped; then nothing eligible
    f.cancel(leaves)


def test_a_stopped_node_with_every_child_in_flight_yields_nothing_more():
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, max_children=3).tolist()
    (a,) = f.expand([r], [1], reserve=[3]).tolist()
    leaves, _ = f.select([r], 5)
    assert leaves.tolist() == [r, a]  # stop at r, then a; r pending and a in flight: done
    f.cancel(leaves)
    assert f.view("in_flight").sum() == 0 and not (f.view("flags") & PENDING).any()


def test_max_children_round_trips_through_export():
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, max_children=4).tolist()
    f.expand([r], [2])
    arrays = f.export_tree(r)
    assert int(arrays["max_children"]) == 4
    g = Forest()
    assert g.get_rule(g.import_tree(arrays))["max_children"] == 4
    # trees saved before max_children existed import with 0
    old = {k: v for k, v in arrays.items() if k != "max_children"}
    assert g.get_rule(g.import_tree(old))["max_children"] == 0
    with pytest.raises(ValueError, match="max_children"):
        g.import_tree({**arrays, "max_children": np.array(-2)})


def test_growth_matches_the_reference():
    """A scripted MCTSr-like run (stop, refine, rate, back up) on both sides."""
    core, ref = Forest(), reference.Forest()
    rng = np.random.default_rng(3)
    assert core.create_roots(3, MCTSR, None, None, 1e-5, 3).tolist() == ref.create_roots(3, MCTSR, None, None, 1e-5, 3)
    roots = [0, 1, 2]
    for _ in range(60):
        leaves, _ = core.select(roots, 2)
        assert leaves.tolist() == ref.select(roots, 2)[0]
        leaves = leaves.tolist()
        left = core.slots_left(leaves).tolist()
        fresh = (core.view("first_child")[leaves] < 0).tolist()
        counts = [1 if (f or s) else 0 for f, s in zip(fresh, left)]
        kids = core.add_children(leaves, counts, reserve=[3] * len(leaves)).tolist()
        assert kids == ref.add_children(leaves, counts, reserve=[3] * len(leaves))
        rewards = rng.integers(-100, 95, len(kids)).astype(float).tolist()
        core.add_rewards(kids, rewards)
        ref.add_rewards(kids, rewards)
        vals = rng.uniform(-1, 1, len(leaves)).tolist()
        core.backprop(leaves, vals)
        ref.backprop(leaves, vals)
    state = ref.state()
    for k, want in state.items():
        np.testing.assert_array_equal(core.view(k), want, err_msg=k)
    assert (core.view("num_children")[roots] == 3).all()  # the roots filled up to K
