"""Bad input: a Python exception naming the problem, never a crash, a hang or
a partial change."""

import math

import numpy as np
import pytest

from rstar.tree import FIELDS, Forest, UCT


@pytest.fixture
def forest():
    """Two roots; root 0 selected, expanded with 2 children, backed up; child 2 in flight."""
    f = Forest()
    f.create_roots(2)
    leaves, _ = f.select([0], 1)
    f.expand(leaves, [2])
    f.backprop(leaves, [0.5])
    f.select([0], 1)  # takes child 2
    return f


def snapshot(f):
    return {name: f.view(name).copy() for name in FIELDS}


def unchanged(f, before):
    after = snapshot(f)
    return all(np.array_equal(before[k], after[k], equal_nan=True) for k in FIELDS)


def raises_unchanged(f, exc, match, fn, *args, **kw):
    before = snapshot(f)
    with pytest.raises(exc, match=match):
        fn(*args, **kw)
    assert unchanged(f, before)


OUT = "out of range"


def test_out_of_range_ids(forest):
    f = forest
    n = f.num_nodes
    raises_unchanged(f, ValueError, OUT, f.select, [n], 1)
    raises_unchanged(f, ValueError, OUT, f.select, [-1], 1)
    raises_unchanged(f, ValueError, OUT, f.expand, [n + 5], [1])
    raises_unchanged(f, ValueError, OUT, f.backprop, [2, 10**9], [0.0, 0.0])
    raises_unchanged(f, ValueError, OUT, f.cancel, [-3])
    raises_unchanged(f, ValueError, OUT, f.mark_terminal, [3, n])
    raises_unchanged(f, ValueError, OUT, f.mark_invalid, [2**40])
    raises_unchanged(f, ValueError, OUT, f.add_rewards, [n], [1.0])
    for fn in (f.children, f.path, f.best_child, f.export_tree):
        raises_unchanged(f, ValueError, OUT, fn, n)
    raises_unchanged(f, ValueError, OUT, f.root_of, [n])
    raises_unchanged(f, ValueError, OUT, f.q, [-1])
    with pytest.raises(ValueError, match="int64 range"):
        f.select(2**70, 1)


def test_foreign_ids(forest):
    f = forest
    other = Forest()
    big = other.create_roots(10)  # ids 0..9: 9 is foreign here
    raises_unchanged(f, ValueError, OUT, f.select, big[9:], 1)
    # a child passed where a root is needed
    raises_unchanged(f, ValueError, "node 2 is not a root", f.select, [2], 1)
    raises_unchanged(f, ValueError, "not a root", f.export_tree, 3)
    raises_unchanged(f, ValueError, "not a root", f.set_rule, [3], UCT)
    # a node that select did not return
    raises_unchanged(f, ValueError, "node 3 has no selection in flight", f.backprop, [3], [1.0])
    raises_unchanged(f, ValueError, "no selection in flight", f.cancel, [1])


def test_negative_and_oversized_counts(forest):
    f = forest
    raises_unchanged(f, ValueError, r"counts\[1\] is negative", f.expand, [2, 3], [1, -1])
    raises_unchanged(f, ValueError, "exceeds 65535", f.expand, [3], [70000])
    raises_unchanged(f, ValueError, "n must be >= 0", f.create_roots, -1)
    raises_unchanged(f, ValueError, "k must be >= 0", f.select, [1], -1)


def test_mismatched_lengths(forest):
    f = forest
    raises_unchanged(f, ValueError, "leaves and counts differ in length", f.expand, [2, 3], [1])
    raises_unchanged(f, ValueError, "priors has length 1 but counts sum to 3", f.expand, [2, 3], [1, 2], [0.5])
    raises_unchanged(f, ValueError, "leaves and values differ in length", f.backprop, [2], [1.0, 2.0])
    raises_unchanged(f, ValueError, "nodes and rewards differ in length", f.add_rewards, [2, 3], [1.0])


def test_wrong_dtype_and_shape(forest):
    f = forest
    raises_unchanged(f, TypeError, "roots must be an int64 array, got dtype int32", f.select, np.array([1], np.int32), 1)
    raises_unchanged(f, TypeError, "leaves must be an int64 array, got dtype float64", f.expand, np.array([3.0]), [1])
    raises_unchanged(f, TypeError, "counts must be an int64 array", f.expand, [3], np.array([1], np.uint8))
    raises_unchanged(f, TypeError, "counts must hold integers", f.expand, [3], [1.5])
    raises_unchanged(f, TypeError, "values must be a float64", f.backprop, [2], np.array([1], np.int64))
    raises_unchanged(f, TypeError, "values must hold numbers", f.backprop, [2], ["x"])
    raises_unchanged(f, TypeError, "leaves must be", f.backprop, "2", [1.0])
    raises_unchanged(f, TypeError, "nodes must be int64 ids, got a bool", f.mark_terminal, True)
    raises_unchanged(f, TypeError, "priors must be a float64", f.expand, [3], [1], np.array([1], np.complex128))
    raises_unchanged(f, ValueError, "leaves must be 1-D", f.expand, np.array([[3]], np.int64), [1])
    raises_unchanged(f, TypeError, "incompatible function arguments", f.select, [1], "2")
    raises_unchanged(f, TypeError, "incompatible function arguments", f.create_roots, 1, UCT, "big")
    # lists, tuples, ints and float32 arrays are converted
    f.backprop(np.array([2]), np.array([0.25], np.float32))
    assert f.view("value_sum")[2] == 0.25


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf(forest, bad):
    f = forest
    raises_unchanged(f, ValueError, r"values\[1\] = .* is not finite", f.backprop, [2, 2], [0.0, bad])
    raises_unchanged(f, ValueError, r"priors\[0\]", f.expand, [3], [1], [bad])
    raises_unchanged(f, ValueError, r"rewards\[0\]", f.add_rewards, [3], [bad])
    raises_unchanged(f, ValueError, "c must be a finite number", f.create_roots, 1, UCT, bad)
    raises_unchanged(f, ValueError, "eps must be a finite number", f.create_roots, 1, UCT, None, None, bad)
    raises_unchanged(f, ValueError, "c must be a finite", f.select, [1], 1, None, bad)
    with pytest.raises(ValueError, match="virtual_loss"):
        Forest(virtual_loss=bad)
    if math.isnan(bad):
        raises_unchanged(f, ValueError, "first_play must not be NaN", f.create_roots, 1, UCT, None, bad)
    raises_unchanged(f, ValueError, "priors", f.expand, [3], [1], [-0.5])
    raises_unchanged(f, ValueError, "rewards", f.add_rewards, [3], [1e31])
    raises_unchanged(f, ValueError, "rule must be", f.create_roots, 1, 7)


def test_expand_twice_duplicates_and_dead_nodes(forest):
    f = forest
    raises_unchanged(f, ValueError, "node 0 is already expanded", f.expand, [0], [2])
    raises_unchanged(f, ValueError, "node 3 appears twice", f.expand, [3, 3], [1, 1])
    raises_unchanged(f, ValueError, "node 2 appears twice", f.backprop, [2, 2], [1.0, 1.0])
    f.mark_terminal([3])
    raises_unchanged(f, ValueError, "node 3 is terminal", f.expand, [3], [1])
    f.mark_invalid([1])
    raises_unchanged(f, ValueError, "node 1 is invalid", f.expand, [1], [1])
    raises_unchanged(f, ValueError, "root 1 is invalid", f.select, [1], 1)
    f.backprop([2], [1.0])
    raises_unchanged(f, ValueError, "no selection in flight", f.backprop, [2], [1.0])  # twice
    # a count of 0 changes nothing
    f.expand([2], [0])
    assert f.view("num_children")[2] == 0


def test_select_from_dead_roots(forest):
    f = forest
    f.cancel([2])
    f.mark_terminal([2, 3])
    raises_unchanged(f, ValueError, "root 0 is exhausted", f.select, [1, 0], 1)
    g = Forest()
    g.create_roots(1)
    g.mark_terminal([0])
    raises_unchanged(g, ValueError, "root 0 is terminal", g.select, [0], 1)
    # the other root still works, and one bad root refuses the whole call
    leaves, _ = f.select([1], 1)
    assert leaves.tolist() == [1]


def test_select_with_everything_in_flight_returns_empty_fast(forest):
    f = forest
    leaves, _ = f.select([0], 10**9)  # k far beyond the tree: returns, no hang
    assert leaves.tolist() == [3]
    leaves, _ = f.select([0], 5)
    assert leaves.tolist() == []


def test_best_child_and_view_bad_names(forest):
    with pytest.raises(ValueError, match="by must be 'visits' or 'q'"):
        forest.best_child(0, by="value")
    with pytest.raises(ValueError, match="unknown array 'nope'"):
        forest.view("nope")


def test_import_rejects_corrupt_trees(forest):
    f = forest
    good = f.export_tree(0)
    n_before = f.num_nodes

    def broken(**changes):
        d = {k: v.copy() for k, v in good.items()}
        d.update(changes)
        return d

    cases = [
        (broken(parent=np.array([-1, 0, 5], np.int32)), ValueError, r"parent\[2\] = 5"),
        (broken(parent=np.array([0, 0, 0], np.int32)), ValueError, r"parent\[0\] must be -1"),
        (broken(first_child=np.array([2, -1, -1], np.int32)), ValueError, "first_child"),
        (broken(num_children=np.array([3, 0, 0], np.uint16)), ValueError, "num_children"),
        (broken(depth=np.array([0, 1, 2], np.uint16)), ValueError, "depth"),
        (broken(flags=np.array([1, 32, 0], np.uint8)), ValueError, "unknown bits"),
        (broken(flags=np.array([0, 0, 0], np.uint8)), ValueError, "EXPANDED"),
        (broken(visits=good["visits"].astype(np.int64)), TypeError, "'visits' must have dtype int32"),
        (broken(value_sum=np.array([np.nan, 0, 0])), ValueError, "value_sum"),
        (broken(prior=np.array([1, 1], np.float32)), ValueError, "'prior' has length 2"),
        (broken(rule=np.array(9)), ValueError, "rule"),
        (broken(eps=np.array(0.0)), ValueError, "eps"),
        ({k: v for k, v in good.items() if k != "q_backed"}, ValueError, "missing array 'q_backed'"),
    ]
    for arrays, exc, match in cases:
        raises_unchanged(f, exc, match, f.import_tree, arrays)
    assert f.num_nodes == n_before


def test_threads_share_a_forest_safely():
    import threading

    f = Forest()
    roots = f.create_roots(64)
    errors = []

    def work(part):
        try:
            for _ in range(200):
                leaves, _ = f.select(part, 2)
                unexp = [x for x in leaves.tolist() if f.view("num_children")[x] == 0]
                f.expand(unexp, [2] * len(unexp))
                f.backprop(leaves, np.full(len(leaves), 0.5))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(roots[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert f.view("in_flight").sum() == 0
    assert f.view("visits")[roots].tolist() == [1 + 199 * 2] * 64  # a fresh root yields 1 leaf


def test_backup_rejects_bad_input_without_changing_anything():
    import math

    import pytest

    from rstar.tree import Forest

    f = Forest()
    root = int(f.create_roots(1)[0])
    with pytest.raises(ValueError, match="out of range"):
        f.backup([5], [1.0])
    with pytest.raises(ValueError, match="differ in length"):
        f.backup([root], [1.0, 2.0])
    with pytest.raises(ValueError, match="not finite"):
        f.backup([root, root], [1.0, math.nan])
    assert f.view("visits")[root] == 0 and f.view("value_sum")[root] == 0.0
