"""Property test: random operation sequences give identical results in the C++
core and the pure-Python reference (selections, ids, and every column of every
slot, bit for bit, live, unborn and released alike), including which calls are
refused."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import tree_reference as reference  # the pure-Python oracle of the core (tests/tree_reference.py)
from rstar.tree import DEAD, FIELDS, MCTSR, PENDING, PUCT, RELEASED, UCT, UNBORN, Forest

RULES = [UCT, PUCT, MCTSR]
VALUES = st.one_of(st.sampled_from([-1.0, 0.0, 0.5, 1.0]), st.floats(-1, 1, allow_nan=False))
REWARDS = st.one_of(st.integers(-100, 100).map(float), st.floats(-100, 100, allow_nan=False))


def same_call(core_fn, ref_fn):
    """Run both; either both raise ValueError or both return equal results."""
    core_err = ref_err = None
    core_out = ref_out = None
    try:
        core_out = core_fn()
    except ValueError as e:
        core_err = e
    try:
        ref_out = ref_fn()
    except ValueError as e:
        ref_err = e
    assert (core_err is None) == (ref_err is None), (core_err, ref_err)
    if core_err is None:
        if isinstance(core_out, tuple):
            assert [np.asarray(x).tolist() for x in core_out] == [list(x) for x in ref_out]
        elif core_out is not None:
            assert np.asarray(core_out).tolist() == list(ref_out)
    return core_out, core_err is None


def assert_same_state(core, ref):
    state = ref.state()
    assert core.num_nodes == ref.num_nodes
    assert core.num_live == ref.num_live
    for name in FIELDS:
        got, want = core.view(name), state[name]
        assert got.dtype == want.dtype, name
        if got.dtype.kind == "f":
            # bit for bit, NaN included (any NaN payload counts as NaN)
            nan = np.isnan(got)
            assert np.array_equal(nan, np.isnan(want)), name
            assert np.array_equal(got[~nan].view(f"u{got.itemsize}"), want[~nan].view(f"u{got.itemsize}")), name
        else:
            assert np.array_equal(got, want), name


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_random_operations_match_reference(data):
    vl = data.draw(st.sampled_from([0.0, 1.0, 2.5]), label="virtual_loss")
    core, ref = Forest(vl), reference.Forest(vl)
    roots: list[int] = []

    def pending():
        return np.flatnonzero(core.view("flags") & PENDING).tolist()

    def some_nodes(min_size=0, max_size=4):
        n = core.num_nodes
        ids = st.integers(0, max(n - 1, 0)) if n else st.just(0)
        ids = st.one_of(ids, st.sampled_from([-1, n, n + 7])) if data.draw(st.booleans()) and n else ids
        return data.draw(st.lists(ids, min_size=min_size, max_size=max_size))

    for _ in range(data.draw(st.integers(1, 30), label="n_ops")):
        op = data.draw(
            st.sampled_from(
                ["create", "cycle", "cycle", "cycle", "select", "expand", "backprop", "cancel",
                 "backup", "terminal", "invalid", "rewards", "set_rule", "release", "add", "grow"]
            )
        )
        if op == "create" or not roots:
            n = data.draw(st.integers(1, 3))
            rule = data.draw(st.sampled_from(RULES))
            c = data.draw(st.sampled_from([None, 0.0, 0.5, 2.0]))
            fp = data.draw(st.sampled_from([None, 0.0, -1.0, math.inf, -math.inf]))
            eps = data.draw(st.sampled_from([1e-5, 0.1]))
            k_max = data.draw(st.sampled_from([0, 0, 1, 2, 3, -1]))
            out, ok = same_call(lambda: core.create_roots(n, rule, c, fp, eps, k_max),
                                lambda: ref.create_roots(n, rule, c, fp, eps, k_max))
            if ok:
                roots += out.tolist()
        elif op == "set_rule":
            r = data.draw(st.sampled_from(roots))
            rule = data.draw(st.sampled_from(RULES))
            fp = data.draw(st.sampled_from([None, 0.0, math.inf]))
            k_max = data.draw(st.sampled_from([0, 2, 3]))
            same_call(lambda: core.set_rule([r], rule, None, fp, 1e-5, k_max),
                      lambda: ref.set_rule([r], rule, None, fp, 1e-5, k_max))
        elif op == "cycle":
            # one search step over every live root: select k, grow the leaves, back up
            live = [r for r in roots if not core.view("flags")[r] & DEAD]
            if not live:
                continue
            k = data.draw(st.integers(1, 4))
            (leaves, owner), ok = same_call(lambda: core.select(live, k), lambda: ref.select(live, k))
            leaves = leaves.tolist()
            grow = [x for x in leaves if not core.view("flags")[x] & DEAD]
            left = core.slots_left(grow).tolist()
            fresh = (core.view("first_child")[grow] < 0).tolist() if grow else []
            # fresh leaves: a block (maybe with spare slots); stopped-at or reserved nodes: the next slots
            counts = [data.draw(st.integers(0, 4 if f else s)) for f, s in zip(fresh, left)]
            reserve = None
            if data.draw(st.booleans()):
                reserve = [c + data.draw(st.integers(0, 2)) for c in counts]
            use_priors = data.draw(st.booleans())
            priors = data.draw(st.lists(st.floats(0, 2), min_size=sum(counts), max_size=sum(counts))) if use_priors else None
            same_call(lambda: core.add_children(grow, counts, priors, reserve),
                      lambda: ref.add_children(grow, counts, priors, reserve))
            values = data.draw(st.lists(VALUES, min_size=len(leaves), max_size=len(leaves)))
            same_call(lambda: core.backprop(leaves, values), lambda: ref.backprop(leaves, values))
        elif op == "select":
            sel = data.draw(st.lists(st.sampled_from(roots), min_size=1, max_size=3))
            k = data.draw(st.integers(-1, 5))
            override = data.draw(st.sampled_from([{}, {"rule": PUCT}, {"c": 0.0}, {"first_play": 0.0},
                                                  {"rule": MCTSR, "eps": 0.5}, {"max_children": 2},
                                                  {"max_children": 0}, {"rule": MCTSR, "max_children": 3}]))
            same_call(lambda: core.select(sel, k, **override), lambda: ref.select(sel, k, **override))
        elif op in ("expand", "add", "grow"):
            nodes = data.draw(st.one_of(st.just(pending()[:3]), st.just(some_nodes(1, 3))))
            counts = data.draw(st.lists(st.integers(-1, 4), min_size=len(nodes), max_size=len(nodes)))
            reserve = None
            if op == "grow" or data.draw(st.booleans()):
                reserve = data.draw(st.lists(st.integers(-1, 6), min_size=len(nodes), max_size=len(nodes)))
            fn = "expand" if op == "expand" else "add_children"
            same_call(lambda: getattr(core, fn)(nodes, counts, None, reserve),
                      lambda: getattr(ref, fn)(nodes, counts, None, reserve))
        elif op == "release":
            gone = data.draw(st.lists(st.sampled_from(roots), min_size=1, max_size=2))
            if data.draw(st.booleans()):
                gone = gone + some_nodes(0, 1)
            _, ok = same_call(lambda: core.release(gone), lambda: ref.release(gone))
            if ok:
                roots = [r for r in roots if r not in gone]
        elif op in ("backprop", "cancel"):
            p = pending()
            nodes = data.draw(st.one_of(st.lists(st.sampled_from(p), max_size=4) if p else st.just([]),
                                        st.just(some_nodes())))
            if op == "backprop":
                values = data.draw(st.lists(st.one_of(VALUES, st.just(math.nan)), min_size=len(nodes), max_size=len(nodes)))
                same_call(lambda: core.backprop(nodes, values), lambda: ref.backprop(nodes, values))
            else:
                same_call(lambda: core.cancel(nodes), lambda: ref.cancel(nodes))
        elif op == "backup":
            nodes = some_nodes(0, 3)
            values = data.draw(st.lists(st.one_of(VALUES, st.just(math.inf)), min_size=len(nodes), max_size=len(nodes)))
            same_call(lambda: core.backup(nodes, values), lambda: ref.backup(nodes, values))
        elif op in ("terminal", "invalid"):
            nodes = some_nodes(0, 2)
            fn = "mark_terminal" if op == "terminal" else "mark_invalid"
            same_call(lambda: getattr(core, fn)(nodes), lambda: getattr(ref, fn)(nodes))
        elif op == "rewards":
            nodes = some_nodes(1, 4)
            rewards = data.draw(st.lists(REWARDS, min_size=len(nodes), max_size=len(nodes)))
            same_call(lambda: core.add_rewards(nodes, rewards), lambda: ref.add_rewards(nodes, rewards))
        assert_same_state(core, ref)

    # reads agree too, refusals of unborn and released slots included
    for node in range(core.num_nodes):
        same_call(lambda: core.path(node), lambda: ref.path(node))
        same_call(lambda: core.children(node), lambda: ref.children(node))
        same_call(lambda: core.slots_left([node]), lambda: ref.slots_left([node]))
        for by in ("visits", "q"):
            same_call(lambda: [core.best_child(node, by)], lambda: [ref.best_child(node, by)])
    live = [i for i in range(core.num_nodes) if not core.view("flags")[i] & (UNBORN | RELEASED)]
    if live:
        assert core.root_of(live).tolist() == ref.root_of(live)
        np.testing.assert_array_equal(core.q(live), np.array(ref.q(live)))
    for r in roots:
        a, b = core.export_tree(r), ref.export_tree(r)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


BIG_VALUES = st.one_of(VALUES, st.sampled_from([1e308, -1e308, 1.5e308]))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.data())
def test_wide_nodes_and_extreme_numbers_match_reference(data):
    """Nodes wider than one scoring chunk (64 children), dead children among
    them, huge priors and value sums that overflow to +-inf: the same choices."""
    vl = data.draw(st.sampled_from([0.0, 1.0]), label="virtual_loss")
    core, ref = Forest(vl), reference.Forest(vl)
    rule = data.draw(st.sampled_from(RULES), label="rule")
    c = data.draw(st.sampled_from([None, 0.0, 2.0, 1e300]), label="c")
    fp = data.draw(st.sampled_from([None, 0.0, math.inf, -math.inf]), label="first_play")
    roots, _ = same_call(lambda: core.create_roots(2, rule, c, fp), lambda: ref.create_roots(2, rule, c, fp))
    roots = roots.tolist()
    for _ in range(data.draw(st.integers(1, 12), label="n_cycles")):
        live = [r for r in roots if not core.view("flags")[r] & 6]
        if not live:
            break
        k = data.draw(st.integers(1, 6))
        (leaves, _), _ = same_call(lambda: core.select(live, k), lambda: ref.select(live, k))
        leaves = leaves.tolist()
        unexp = [x for x in leaves if core.view("num_children")[x] == 0 and not core.view("flags")[x] & 7]
        counts = data.draw(st.lists(st.integers(0, 150), min_size=len(unexp), max_size=len(unexp)))
        priors = None
        if data.draw(st.booleans()):
            priors = data.draw(st.lists(st.one_of(st.floats(0, 2), st.just(3e38)), min_size=sum(counts),
                                        max_size=sum(counts)))
        new, _ = same_call(lambda: core.expand(unexp, counts, priors), lambda: ref.expand(unexp, counts, priors))
        if len(new):
            dead = data.draw(st.lists(st.sampled_from(new.tolist()), max_size=20))
            fn = data.draw(st.sampled_from(["mark_terminal", "mark_invalid"]))
            same_call(lambda: getattr(core, fn)(dead), lambda: getattr(ref, fn)(dead))
        values = data.draw(st.lists(BIG_VALUES, min_size=len(leaves), max_size=len(leaves)))
        same_call(lambda: core.backprop(leaves, values), lambda: ref.backprop(leaves, values))
        if rule == MCTSR and len(new):
            rated = data.draw(st.lists(st.sampled_from(new.tolist()), max_size=10))
            rewards = data.draw(st.lists(REWARDS, min_size=len(rated), max_size=len(rated)))
            same_call(lambda: core.add_rewards(rated, rewards), lambda: ref.add_rewards(rated, rewards))
        assert_same_state(core, ref)


def test_large_arena_growth_matches_reference():
    """Growth across the size where columns move to reserved mappings (and in
    place inside them), with a view held across one growth: same state, and the
    view stays a snapshot."""
    core, ref = Forest(), reference.Forest()
    roots = core.create_roots(3).tolist()
    assert ref.create_roots(3) == roots
    held = None
    for i, r in enumerate(roots):
        a = core.expand([r], [40000]).tolist()
        assert a == ref.expand([r], [40000])
        if i == 0:
            held = core.view("depth")  # shared buffer: the next growth must copy, not grow in place
            held_len = len(held)
    for _ in range(3):
        leaves, _ = core.select(roots, 4)
        assert leaves.tolist() == ref.select(roots, 4)[0]
        grow = leaves.tolist()[:4]
        assert core.expand(grow, [3] * len(grow)).tolist() == ref.expand(grow, [3] * len(grow))
        vals = np.linspace(-1, 1, len(leaves)).tolist()
        core.backprop(leaves, vals)
        ref.backprop(leaves.tolist(), vals)
    assert_same_state(core, ref)
    assert len(held) == held_len and held.tolist() == [0] * 3 + [1] * (held_len - 3)


def test_every_child_of_a_wide_node_can_win():
    """Each position of nodes up to two scoring chunks wide (64 children each)
    wins when its score is the highest, under every rule, with ties to the
    lowest index and dead children skipped; the reference agrees."""
    for rule in RULES:
        for width in (1, 2, 63, 64, 65, 127, 128, 130):
            for p in range(width):
                core, ref = Forest(), reference.Forest()
                fp = -math.inf
                (root,) = core.create_roots(1, rule, None, fp).tolist()
                ref.create_roots(1, rule, None, fp)
                priors = [1.0 if i == p else 0.5 for i in range(width)]
                kids = core.expand([root], [width], priors).tolist()
                ref.expand([root], [width], priors)
                values = [0.75 if i == p else 0.25 for i in range(width)]
                dead = [i for i in kids if (i - kids[0]) % 7 == 3 and i - kids[0] != p]
                for f in (core, ref):
                    f.backup(kids, values)
                    f.mark_invalid(dead)
                    if rule == MCTSR:
                        f.add_rewards(kids, values)
                want = [kids[p]]
                assert core.select([root], 1)[0].tolist() == want, (rule, width, p)
                assert ref.select([root], 1)[0] == want, (rule, width, p)
        # all equal: the first eligible child
        core = Forest()
        (root,) = core.create_roots(1, rule).tolist()
        kids = core.expand([root], [130]).tolist()
        core.mark_invalid(kids[:70])
        assert core.select([root], 1)[0].tolist() == [kids[70]]
