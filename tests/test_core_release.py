"""Releasing finished trees: freed slots are reused (first fit over coalesced
ranges), released ids are refused everywhere, nothing relies on parent id <
child id, and a long run that creates, searches and releases trees keeps the
arena flat."""

import numpy as np
import pytest

import tree_reference as reference  # the pure-Python oracle of the core (tests/tree_reference.py)
from rstar.tree import (
    DEAD,
    EXHAUSTED,
    EXPANDED,
    MCTSR,
    PUCT,
    RELEASED,
    TERMINAL,
    UCT,
    Forest,
    load_tree,
    save_tree,
)


def test_release_frees_slots_and_first_fit_reuses_them():
    for f in (Forest(), reference.Forest()):
        ids = lambda x: np.asarray(x).tolist()  # noqa: E731
        assert ids(f.create_roots(2)) == [0, 1]
        assert ids(f.expand([0, 1], [2, 3])) == [2, 3, 4, 5, 6]
        assert f.num_nodes == 7 and f.num_live == 7
        f.release([0])  # frees 0 and 2..3: ranges [0, 1) and [2, 4)
        assert f.num_nodes == 7 and f.num_live == 4
        assert ids(f.create_roots(1)) == [0]  # the lowest range that fits
        assert ids(f.expand([0], [2])) == [2, 3]  # [2, 4) fits exactly
        assert ids(f.expand([4], [3])) == [7, 8, 9]  # nothing free: the top
        f.release([1])  # frees 1, 4..6 and 7..9: ranges [1, 2) and [4, 10) (coalesced)
        assert f.num_live == 3
        assert ids(f.expand([2], [6])) == [4, 5, 6, 7, 8, 9]  # one range of 6: coalescing worked
        assert ids(f.create_roots(2)) == [1, 10]
        assert f.num_nodes == 11 and f.num_live == 11


def test_first_fit_takes_the_lowest_range_that_fits_not_the_tightest():
    for f in (Forest(), reference.Forest()):
        f.create_roots(15)
        f.release([0, 1, 2, 3, 4])  # [0, 5)
        f.release([12, 10, 11])  # [10, 13), coalesced whatever the order
        assert list(f.expand([14], [3])) == [0, 1, 2]  # the lower range, though [10, 13) fits exactly
        assert list(f.expand([13], [3])) == [10, 11, 12]  # [3, 5) is too small now
        assert list(f.expand([5], [2])) == [3, 4]
        assert list(f.create_roots(1)) == [15]
        assert f.num_live == 16


def test_released_ids_are_refused_everywhere():
    f = Forest()
    r, keep = f.create_roots(2).tolist()
    kids = f.expand([r], [2]).tolist()
    f.expand([keep], [1])
    f.release([r])
    msg = "was released"
    for node in [r] + kids:
        for fn in (f.children, f.path, f.best_child, f.export_tree, f.get_rule):
            with pytest.raises(ValueError, match=f"node {node} {msg}"):
                fn(node)
    calls = [
        (f.select, ([r], 1)), (f.expand, ([kids[0]], [1])), (f.add_children, ([kids[0]], [1])),
        (f.backprop, ([r], [1.0])), (f.cancel, ([r],)), (f.backup, ([kids[1]], [1.0])),
        (f.mark_terminal, ([r],)), (f.mark_invalid, ([kids[0]],)), (f.add_rewards, ([r], [1.0])),
        (f.q, ([kids[0]],)), (f.root_of, ([r],)), (f.release, ([r],)), (f.set_rule, ([r], UCT)),
    ]
    for fn, args in calls:
        with pytest.raises(ValueError, match=msg):
            fn(*args)
    # views still cover every slot; released ones hold fixed contents
    assert f.view("flags")[[r] + kids].tolist() == [RELEASED] * 3
    assert f.view("parent")[[r] + kids].tolist() == [-1] * 3
    assert f.view("visits")[[r] + kids].tolist() == [0] * 3
    assert f.num_live == 2 and len(f.view("flags")) == f.num_nodes == 5


def test_release_refuses_without_changing_anything():
    f = Forest()
    a, b = f.create_roots(2).tolist()
    kids = f.expand([a], [2]).tolist()
    leaves, _ = f.select([a], 1)
    before = {k: f.view(k).copy() for k in ("flags", "parent", "in_flight")}

    def refused(match, roots):
        with pytest.raises(ValueError, match=match):
            f.release(roots)
        for k, v in before.items():
            assert np.array_equal(f.view(k), v), k
        assert f.num_live == 4

    refused(f"root {a} has 1 selection", [b, a])  # b is fine, but one bad root refuses the call
    refused(f"node {kids[0]} is not a root", [kids[0]])
    refused("appears twice", [b, b])
    refused("out of range", [99])
    f.cancel(leaves)
    f.release([a, b])
    assert f.num_live == 0 and f.num_nodes == 4


def test_rule_entry_goes_with_the_root():
    f = Forest()
    (r,) = f.create_roots(1, rule=PUCT, c=3.0).tolist()
    f.release([r])
    (again,) = f.create_roots(1, rule=MCTSR, max_children=2).tolist()
    assert again == r  # the slot is reused with the new tree's rule, not the old one
    assert f.get_rule(again) == {"rule": MCTSR, "c": 1.4, "first_play": float("inf"), "eps": 1e-5, "max_children": 2}
    (other,) = f.create_roots(1).tolist()
    f.release([again])
    (child,) = f.expand([other], [1]).tolist()
    assert child == r  # reused as a child: no rule of its own
    with pytest.raises(ValueError, match="not a root"):
        f.get_rule(child)


def reversed_tree(f):
    """Root 2 whose children got the lower ids 0 and 1 (freed by releasing roots 0 and 1)."""
    assert f.create_roots(3, rule=UCT, first_play=0.0).tolist() == [0, 1, 2]
    f.release([0, 1])
    kids = f.expand([2], [2]).tolist()
    assert kids == [0, 1]
    return 2, kids


def test_children_with_lower_ids_than_their_parent():
    f = Forest()
    r, (a, b) = reversed_tree(f)
    (a1,) = f.expand([a], [1]).tolist()
    assert a1 == 3
    assert f.view("parent")[[a, b, a1]].tolist() == [r, r, a]
    assert f.path(a1).tolist() == [r, a, a1]
    assert f.root_of([a, b, a1]).tolist() == [r, r, r]
    assert f.children(r).tolist() == [a, b]
    leaves, _ = f.select([r], 2)
    assert leaves.tolist() == [a1, b]  # first_play 0 ties go to the first child, then virtual loss
    f.backprop(leaves, [1.0, -1.0])
    assert f.view("visits")[[r, a, b, a1]].tolist() == [2, 1, 1, 1]
    assert f.view("value_sum")[r] == 0.0
    # export is breadth-first along the child blocks, whatever the ids
    arrays = f.export_tree(r)
    assert arrays["node_ids"].tolist() == [r, a, b, a1]
    assert arrays["parent"].tolist() == [-1, 0, 0, 1]
    assert arrays["first_child"].tolist() == [1, 3, -1, -1]
    g = Forest()
    new = g.import_tree(arrays)
    again = g.export_tree(new)
    for k in arrays:
        if k != "node_ids":
            np.testing.assert_array_equal(again[k], arrays[k], err_msg=k)
    # dead-propagation walks parents, not ids
    f.mark_terminal([a1])
    f.mark_invalid([b])
    fl = f.view("flags")
    assert fl[a] & EXHAUSTED and fl[r] & EXHAUSTED and not fl[r] & TERMINAL
    # and release frees the tree whatever its id order
    f.release([r])
    assert f.num_live == 0
    assert f.create_roots(1).tolist() == [0]
    assert f.expand([0], [3]).tolist() == [1, 2, 3]


def test_import_fills_a_free_range_and_save_load_after_reuse(tmp_path):
    f = Forest()
    r, (a, b) = reversed_tree(f)
    f.expand([b], [2])
    path = tmp_path / "t.npz"
    save_tree(f, r, path)
    g = Forest()
    g.create_roots(10)
    g.release([2, 3, 4, 5, 6])  # a free range [2, 7) of 5 slots: the 5-node tree fits there
    new = load_tree(g, path)
    assert new == 2
    assert g.path(new + 4).tolist() == [2, 4, 6]
    assert g.num_live == 10 and g.num_nodes == 10


def test_long_run_keeps_the_arena_flat():
    """10,000 trees created, searched and released in sequence, a few alive at
    a time, with uneven child blocks (fragmentation): the arena stays bounded
    by a small multiple of the live peak, and stops growing."""
    rng = np.random.default_rng(0)
    f = Forest()
    alive: list[tuple[int, int]] = []  # (root, birth round)
    peak_live = 0
    caps = []
    n_trees = 10_000
    for t in range(n_trees):
        (root,) = f.create_roots(1, rule=UCT).tolist()
        alive.append((root, t))
        roots = np.array([x for x, _ in alive], np.int64)
        leaves, _ = f.select(roots, 2)
        grow = leaves[f.view("num_children")[leaves] == 0]
        fresh = f.view("first_child")[grow] < 0
        # fresh leaves get a block with spare slots; leaves with a block fill some of them
        counts = np.where(fresh, rng.integers(0, 6, len(grow)), rng.integers(0, 3, len(grow)))
        counts = np.where(fresh, counts, np.minimum(counts, f.slots_left(grow)))
        f.add_children(grow, counts, reserve=counts + rng.integers(0, 3, len(grow)))
        f.backprop(leaves, rng.uniform(-1, 1, len(leaves)))
        peak_live = max(peak_live, f.num_live)
        # release trees after 6 rounds (a random one sometimes earlier)
        done = [x for x, born in alive if t - born >= 6 or (rng.random() < 0.05 and x != root)]
        if done:
            f.release(done)
            alive = [(x, b) for x, b in alive if x not in done]
        if t in (n_trees // 10, n_trees - 1):
            caps.append((f.num_nodes, f.capacity))
    f.release([x for x, _ in alive])
    assert f.num_live == 0
    assert peak_live > 50  # the trees did grow
    assert f.num_nodes <= 3 * peak_live, (f.num_nodes, peak_live)
    assert caps[0][1] == caps[1][1]  # no allocation after the first tenth of the run
    # the released arena is one free range: a tree of num_nodes slots fits at id 0 again
    assert f.create_roots(1).tolist() == [0]
    f.expand([0], [min(f.num_nodes - 1, 65535)])
    assert f.num_nodes == caps[1][0]


def test_release_matches_the_reference_in_a_long_run():
    rng = np.random.default_rng(1)
    core, ref = Forest(), reference.Forest()
    alive = []
    for t in range(300):
        rule = [UCT, PUCT, MCTSR][t % 3]
        new = core.create_roots(1, rule=rule).tolist()
        assert ref.create_roots(1, rule=rule) == new
        alive += new
        leaves, _ = core.select(alive, 2)
        assert ref.select(alive, 2)[0] == leaves.tolist()
        grow = [x for x in leaves.tolist() if core.view("num_children")[x] == 0]
        left = core.slots_left(grow).tolist()
        assert ref.slots_left(grow) == left
        counts = [min(int(rng.integers(0, 5)), s) if s else int(rng.integers(0, 5)) for s in left]
        reserve = [c + int(rng.integers(0, 2)) for c in counts]
        assert core.add_children(grow, counts, reserve=reserve).tolist() == ref.add_children(grow, counts, reserve=reserve)
        vals = rng.uniform(-1, 1, len(leaves)).tolist()
        core.backprop(leaves, vals)
        ref.backprop(leaves.tolist(), vals)
        if len(alive) > 5:
            gone = [alive.pop(int(rng.integers(0, len(alive)))) for _ in range(2)]
            core.release(gone)
            ref.release(gone)
        assert core.num_live == ref.num_live
    state = ref.state()
    for k, want in state.items():
        np.testing.assert_array_equal(core.view(k), want, err_msg=k)


def test_dead_constant_covers_every_dead_state():
    assert DEAD == TERMINAL | EXHAUSTED | 4
    assert not DEAD & EXPANDED


def test_threads_create_search_and_release_concurrently():
    import threading

    f = Forest()
    errors = []

    def work(i):
        try:
            rng = np.random.default_rng(i)
            for _ in range(300):
                roots = f.create_roots(3)
                for _ in range(4):
                    leaves, _ = f.select(roots, 2)
                    grow = leaves[f.view("num_children")[leaves] == 0]
                    f.add_children(grow, rng.integers(1, 4, len(grow)))
                    f.backprop(leaves, np.full(len(leaves), 0.5))
                for r in roots.tolist():  # no slot of a live tree was handed to another
                    ids = f.export_tree(r)["node_ids"]
                    assert f.root_of(ids).tolist() == [r] * len(ids)
                f.release(roots)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert f.num_live == 0
    assert (f.view("flags") & RELEASED).all()  # every slot went back
    assert f.num_nodes < 360  # 6 trees of at most 25 nodes alive at a time; 600 trees without reuse
