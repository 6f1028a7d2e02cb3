"""Views that outlive growth, and export/import of whole trees."""

import gc

import numpy as np

import tree_reference as reference  # the pure-Python oracle of the core (tests/tree_reference.py)
from rstar.tree import BYTES_PER_NODE, FIELDS, MCTSR, PUCT, Forest, load_tree, save_tree


def grow_random_tree(f, root, rng, sims=200, branch=3, rewards=False):
    for _ in range(sims):
        leaves, _ = f.select([root], 2)
        unexp = [x for x in leaves.tolist() if f.view("num_children")[x] == 0]
        counts = rng.integers(0, branch + 1, len(unexp))
        kids = f.expand(unexp, counts, rng.random(int(counts.sum())))
        if rewards and len(kids):
            f.add_rewards(kids, rng.integers(-100, 100, len(kids)).astype(float))
        f.backprop(leaves, rng.uniform(-1, 1, len(leaves)))
        if rng.random() < 0.05 and len(kids):
            f.mark_invalid(kids[:1])


def test_layout_is_47_bytes_per_node():
    f = Forest()
    f.create_roots(1)
    assert BYTES_PER_NODE == 47
    assert sum(f.view(name).itemsize for name in FIELDS) == BYTES_PER_NODE


def test_views_survive_growth_and_the_forest():
    f = Forest()
    roots = f.create_roots(4)
    f.expand(roots, [3, 3, 3, 3])
    leaves, _ = f.select(roots, 2)
    f.backprop(leaves, np.linspace(-1, 1, len(leaves)))
    old_visits = f.view("visits")
    old_values = f.view("value_sum")
    expect_v, expect_w = old_visits.copy(), old_values.copy()
    assert not old_visits.flags.writeable
    # grow the arena by 1e5 nodes (many reallocations)
    for _ in range(50):
        f.create_roots(2000)
    assert f.num_nodes == 16 + 100_000
    assert np.array_equal(old_visits, expect_v) and np.array_equal(old_values, expect_w)
    assert old_visits.sum() == expect_v.sum()
    # new views see the grown arena; old ones are snapshots of the old buffer
    leaves, _ = f.select(roots[:1], 1)
    f.backprop(leaves, [1.0])
    assert len(f.view("visits")) == f.num_nodes
    assert f.view("visits")[roots[0]] == expect_v[roots[0]] + 1
    assert old_visits[roots[0]] == expect_v[roots[0]]
    # the forest itself can go; views still own their buffers
    parent = f.view("parent")
    del f
    gc.collect()
    assert parent[:16].tolist() == [-1] * 4 + [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert old_visits.sum() == expect_v.sum()


def test_export_import_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    f = Forest()
    r1, r2 = f.create_roots(2, rule=PUCT, c=1.5)
    (r3,) = f.create_roots(1, rule=MCTSR)
    grow_random_tree(f, r1, rng)
    grow_random_tree(f, r2, rng, sims=20)
    grow_random_tree(f, r3, rng, sims=50, rewards=True)
    for root in (r1, r3):
        arrays = f.export_tree(root)
        assert arrays["parent"][0] == -1 and arrays["node_ids"][0] == root
        assert sorted(arrays["node_ids"].tolist()) == sorted(
            np.flatnonzero(f.root_of(np.arange(f.num_nodes)) == root).tolist())
        new_root = f.import_tree(arrays)
        again = f.export_tree(new_root)
        for k in arrays:
            if k != "node_ids":
                np.testing.assert_array_equal(again[k], arrays[k], err_msg=k)
        assert f.get_rule(new_root) == f.get_rule(root)
        # through a file as well, into another forest
        path = tmp_path / f"tree{root}.npz"
        save_tree(f, root, path)
        g = Forest()
        g.create_roots(3)
        loaded = load_tree(g, path)
        assert loaded == 3
        third = g.export_tree(loaded)
        for k in arrays:
            if k != "node_ids":
                np.testing.assert_array_equal(third[k], arrays[k], err_msg=k)
        # the imported copy searches exactly like the original
        a, _ = f.select([root], 4)
        b, _ = g.select([loaded], 4)
        local = {int(g_id): i for i, g_id in enumerate(arrays["node_ids"])}
        assert len(a) >= 1
        assert [local[x] for x in a.tolist()] == (b - loaded).tolist()
        f.cancel(a)


def test_export_drops_in_flight_import_starts_clean():
    f = Forest()
    (r,) = f.create_roots(1)
    f.expand([r], [2])
    leaves, _ = f.select([r], 2)
    arrays = f.export_tree(r)
    assert "in_flight" not in arrays
    new = f.import_tree(arrays)
    assert f.view("in_flight")[new:].tolist() == [0, 0, 0]
    assert f.select([new], 5)[0].tolist() == [new + 1, new + 2]


def test_reference_ids_match_core():
    f, ref = Forest(), reference.Forest()
    assert f.create_roots(2).tolist() == ref.create_roots(2)
    assert f.expand([1, 0], [2, 3]).tolist() == ref.expand([1, 0], [2, 3])
    assert f.children(0).tolist() == ref.children(0) == [4, 5, 6]

