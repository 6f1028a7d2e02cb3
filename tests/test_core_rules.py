"""Hand-computed checks of the selection rules, virtual loss and terminal propagation."""

import math

import numpy as np
import pytest

from rstar.tree import DEAD, EXHAUSTED, EXPANDED, INVALID, MCTSR, PENDING, PUCT, TERMINAL, UCT, Forest


def one_root(f, rule=UCT, n_children=3, **kw):
    """A root, selected, expanded with `n_children` and backed up once (value 0)."""
    (r,) = f.create_roots(1, rule=rule, **kw)
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [r]
    kids = f.expand(leaves, [n_children])
    f.backprop(leaves, [0.0])
    return r, kids.tolist()


def visit(f, r, expected, value):
    leaves, owner = f.select([r], 1)
    assert leaves.tolist() == [expected]
    assert owner.tolist() == [0]
    f.backprop(leaves, [value])


def test_uct_hand_computed():
    f = Forest()
    r, (a, b, c) = one_root(f)
    # first_play = +inf: each unvisited child is tried once, lowest index first
    visit(f, r, a, 1.0)
    visit(f, r, b, 0.5)
    visit(f, r, c, -1.0)
    # N(root) = 4: a = 1 + 2 sqrt(ln 4 / 1) beats b = 0.5 + ..., c = -1 + ...
    visit(f, r, a, 0.0)
    # N(root) = 5; a: N=2, W=1; b: N=1, W=0.5; c: N=1, W=-1
    ln5 = math.log(5)
    scores = [1.0 / 2 + 2 * math.sqrt(ln5 / 2), 0.5 + 2 * math.sqrt(ln5), -1.0 + 2 * math.sqrt(ln5)]
    assert scores[1] > scores[0] > scores[2]  # 3.037, 2.294, 1.537
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [b]
    assert f.view("visits")[[r, a, b, c]].tolist() == [5, 2, 1, 1]
    assert f.view("in_flight")[[r, b]].tolist() == [1, 1]
    assert f.view("flags")[b] & PENDING


def test_uct_first_play_zero_as_in_rstar():
    f = Forest()
    r, (a, b, c) = one_root(f, first_play=0.0)
    # all unvisited score 0: a tie, lowest index wins
    visit(f, r, a, -0.5)
    # N(root)=2: a = -0.5 + 2 sqrt(ln 2) = 1.165 > 0 = b = c: a again
    visit(f, r, a, -3.5)
    # N(root)=3: a: W=-4, N=2: -2 + 2 sqrt(ln 3 / 2) = -0.518 < 0: b (tie b/c -> b)
    assert -2 + 2 * math.sqrt(math.log(3) / 2) < 0
    visit(f, r, b, 0.0)
    # N(root)=4: a = -2 + 2 sqrt(ln4/2) = -0.335; b = 0 + 2 sqrt(ln 4) = 2.35; c = 0
    visit(f, r, b, 0.0)


def test_uct_ties_lowest_index():
    f = Forest()
    r, kids = one_root(f, n_children=4)
    for k in kids:
        visit(f, r, k, 0.25)
    # all four children: N=1, W=0.25: identical scores
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [kids[0]]


def test_uct_unvisited_root_uses_ln_of_max_n_1():
    # a root expanded before any back-up: N(root) = 0 -> ln(max(0, 1)) = 0, scores are Q alone
    f = Forest()
    (r,) = f.create_roots(1, first_play=0.0)
    a, b = f.expand([r], [2]).tolist()
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [a]  # tie at first_play 0


def test_puct_hand_computed():
    f = Forest()
    (r,) = f.create_roots(1, rule=PUCT)
    assert f.get_rule(r) == {"rule": PUCT, "c": 1.25, "first_play": 0.0, "eps": 1e-5, "max_children": 0}
    leaves, _ = f.select([r], 1)
    a, b, c = f.expand(leaves, [3], np.array([0.2, 0.5, 0.3])).tolist()
    assert f.view("prior")[[a, b, c]].tolist() == pytest.approx([0.2, 0.5, 0.3])
    f.backprop(leaves, [0.0])
    # N(root)=1: score = 0 + 1.25 P sqrt(1) / 1: b (0.625)
    visit(f, r, b, -0.5)
    # N(root)=2: a = 1.25*.2*sqrt2 = 0.354; b = -0.5 + 1.25*.5*sqrt2/2 = -0.058; c = 1.25*.3*sqrt2 = 0.530
    s = [1.25 * 0.2 * math.sqrt(2), -0.5 + 1.25 * 0.5 * math.sqrt(2) / 2, 1.25 * 0.3 * math.sqrt(2)]
    assert s[2] > s[0] > s[1]
    visit(f, r, c, 1.0)
    # N(root)=3: a = .25*sqrt3 = 0.433; b = -0.5 + .625*sqrt3/2 = 0.041; c = 1 + .375*sqrt3/2 = 1.325
    visit(f, r, c, 0.0)


def test_puct_default_priors_uniform_and_ties():
    f = Forest()
    (r,) = f.create_roots(1, rule=PUCT)
    kids = f.expand([r], [4]).tolist()
    assert f.view("prior")[kids].tolist() == [0.25] * 4
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [kids[0]]  # sqrt(0) = 0: all tie at first_play


def test_puct_first_play_inf():
    f = Forest()
    (r,) = f.create_roots(1, rule=PUCT, first_play=math.inf)
    leaves, _ = f.select([r], 1)
    a, b = f.expand(leaves, [2], [0.9, 0.1]).tolist()
    f.backprop(leaves, [0.0])
    visit(f, r, a, 1.0)
    visit(f, r, b, 0.0)  # unvisited b scores inf despite its low prior


def test_mctsr_hand_computed_and_q_backed():
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR)
    assert f.get_rule(r) == {"rule": MCTSR, "c": 1.4, "first_play": math.inf, "eps": 1e-5, "max_children": 0}
    leaves, _ = f.select([r], 1)
    a, b = f.expand(leaves, [2]).tolist()
    f.add_rewards([a, a], [50.0, 30.0])  # own(a) = (30 + 40) / 2 = 35
    f.add_rewards([b, b], [60.0, -20.0])  # own(b) = (-20 + 20) / 2 = 0
    q = f.view("q_backed")
    assert q[a] == 35.0 and q[b] == 0.0
    assert q[r] == 35.0  # unrated root: the best child's quality
    f.add_rewards([r], [10.0])  # own(r) = 10 -> (10 + 35) / 2
    assert f.view("q_backed")[r] == 22.5
    assert f.view("reward_min")[b] == -20.0 and f.view("reward_sum")[b] == 40.0
    assert f.view("reward_count")[[r, a, b]].tolist() == [1, 2, 2]
    f.backprop(leaves, [0.0])
    # N(r)=1: both N=0: a = 35 + 1.4 sqrt(ln 2 / 1e-5), b = 0 + same: a
    visit(f, r, a, 0.0)
    # N(r)=2: a = 35 + 1.4 sqrt(ln 3 / (1 + 1e-5)) = 36.47; b = 1.4 sqrt(ln 3 / 1e-5) = 464
    assert 1.4 * math.sqrt(math.log(3) / 1e-5) > 35 + 1.4 * math.sqrt(math.log(3) / (1 + 1e-5))
    visit(f, r, b, 0.0)
    # back-up runs the whole path: a child of a rated 90 lifts a, then the root
    (a1,) = f.expand([a], [1]).tolist()
    assert math.isnan(f.view("q_backed")[a1])
    f.add_rewards([a1], [90.0])
    q = f.view("q_backed")
    assert q[a1] == 90.0
    assert q[a] == 62.5  # (35 + 90) / 2
    assert q[r] == 36.25  # (10 + max(62.5, 0)) / 2
    assert f.best_child(r, by="q") == a
    # unrated children score first_play (inf): the unrated one is taken before rated ones
    b1, b2 = f.expand([b], [2]).tolist()
    f.add_rewards([b1], [100.0])
    f.set_rule(r, MCTSR, c=0.0)  # exploration off: pure quality, so b (q=(0+100)/2=50) < a (62.5)
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [a1]
    f.cancel(leaves)
    f.set_rule(r, MCTSR, c=0.0, first_play=math.inf)
    f.mark_invalid([a])
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [b2]  # b1 rated 100 but b2 unrated: first_play inf


def test_mctsr_first_play_finite():
    f = Forest()
    (r,) = f.create_roots(1, rule=MCTSR, c=0.0, first_play=-5.0)
    a, b = f.expand([r], [2]).tolist()
    f.add_rewards([b], [-4.0])
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [b]  # -4 > first_play -5


def build_two_level(vl, wa, wb):
    """Root with internal children a (value wa) and b (value wb), each with 2 unvisited leaves."""
    f = Forest(virtual_loss=vl)
    r, (a, b) = one_root(f, n_children=2)
    visit(f, r, a, wa)
    visit(f, r, b, wb)
    a_kids = f.expand([a], [2]).tolist()
    b_kids = f.expand([b], [2]).tolist()
    return f, r, a_kids, b_kids


@pytest.mark.parametrize("vl,second_under", [(0.0, "a"), (1.0, "a"), (3.0, "b")])
def test_virtual_loss_steers_second_selection(vl, second_under):
    # N(root)=3. First descent: a = 1 + 2 sqrt(ln 3) = 3.10 > b = -1 + 2.10: a, then a's first leaf.
    # Second: Np = 3 + 1 = 4, a has N_eff = 2, W_eff = 1 - vl:
    #   a = (1 - vl)/2 + 2 sqrt(ln 4 / 2) = (1 - vl)/2 + 1.665;  b = -1 + 2 sqrt(ln 4) = 1.355
    f, r, (a1, a2), (b1, b2) = build_two_level(vl, 1.0, -1.0)
    leaves, owner = f.select([r], 2)
    assert leaves[0] == a1
    assert leaves[1] == (a2 if second_under == "a" else b1)
    assert owner.tolist() == [0, 0]
    inf = f.view("in_flight")
    assert inf[r] == 2
    f.backprop(leaves, [0.5, 0.5])
    assert f.view("in_flight").sum() == 0
    assert f.view("visits")[r] == 5


def test_in_flight_leaves_skipped_and_fewer_than_k():
    f = Forest()
    (r,) = f.create_roots(1)
    leaves, _ = f.select([r], 3)
    assert leaves.tolist() == [r]  # an unexpanded root is its own (only) leaf
    assert f.select([r], 2)[0].tolist() == []  # the root leaf is in flight
    kids = f.expand(leaves, [2]).tolist()
    more, _ = f.select([r], 5)
    assert more.tolist() == kids  # two leaves, then no eligible child: fewer than k
    assert f.view("in_flight")[r] == 3
    f.cancel(more)
    f.backprop(leaves, [1.0])
    assert f.view("in_flight").tolist() == [0, 0, 0]
    assert f.view("visits").tolist() == [1, 0, 0]


def test_select_many_roots_owner_and_per_call_rule():
    f = Forest()
    roots = f.create_roots(3)
    for r in roots:
        f.expand([r], [2])
    leaves, owner = f.select(roots[[2, 0]], 2)
    assert owner.tolist() == [0, 0, 1, 1]
    assert f.root_of(leaves).tolist() == [2, 2, 0, 0]
    f.cancel(leaves)
    # per-call rule: PUCT (with its defaults) on a UCT tree
    (r,) = f.create_roots(1)
    leaves, _ = f.select([r], 1)
    a, b = f.expand(leaves, [2], [0.1, 0.9]).tolist()
    f.backprop(leaves, [0.0])
    got, _ = f.select([r], 1, rule=PUCT)
    assert got.tolist() == [b]  # 1.25 * 0.9 > 1.25 * 0.1
    f.cancel(got)
    got, _ = f.select([r], 1)
    assert got.tolist() == [a]  # the tree's own UCT: first unvisited
    f.cancel(got)
    assert f.get_rule(r)["rule"] == UCT  # the override did not stick


def test_dead_children_make_the_parent_exhausted_not_terminal():
    f = Forest()
    (r,) = f.create_roots(1)
    a, b = f.expand([r], [2]).tolist()
    a1, a2 = f.expand([a], [2]).tolist()
    f.mark_terminal([a1])
    assert not f.view("flags")[a] & (TERMINAL | EXHAUSTED)
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [a2]  # a1 skipped
    f.cancel(leaves)
    f.mark_invalid([a2])
    fl = f.view("flags")
    # a's children are one answer and one failure: a is exhausted, never terminal (it gives no answer)
    assert fl[a] & EXHAUSTED and not fl[a] & TERMINAL
    assert fl[a2] == INVALID and fl[a1] == TERMINAL
    assert not fl[r] & DEAD
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [b]  # exhausted a skipped
    f.cancel(leaves)
    f.mark_terminal([b])
    fl = f.view("flags")
    assert fl[r] == EXPANDED | EXHAUSTED  # exhausted upward, still not terminal
    assert fl[b] == TERMINAL
    with pytest.raises(ValueError, match=f"root {r} is exhausted"):
        f.select([r], 1)
    # the flag is exported and imported with the tree
    g = Forest()
    new = g.import_tree(f.export_tree(r))
    assert g.view("flags")[new : new + 5].tolist() == fl[[r, a, b, a1, a2]].tolist()
    with pytest.raises(ValueError, match="is exhausted"):
        g.select([new], 1)


def test_exhausted_stops_at_a_dead_ancestor_and_clears_when_a_child_is_added():
    f = Forest()
    (r,) = f.create_roots(1)
    a, b = f.expand([r], [2], reserve=[3]).tolist()
    (a1,) = f.expand([a], [1], reserve=[2]).tolist()
    f.mark_terminal([b])
    f.mark_invalid([a1])
    assert f.view("flags")[a] & EXHAUSTED and f.view("flags")[r] & EXHAUSTED
    # a new child of a: a and r are no longer exhausted (a live child below each)
    (a2,) = f.add_children([a], [1]).tolist()
    fl = f.view("flags")
    assert not fl[a] & DEAD and not fl[r] & DEAD
    assert f.children(a).tolist() == [a1, a2]
    leaves, _ = f.select([r], 1)
    assert leaves.tolist() == [a2]
    f.cancel(leaves)
    # a node that is itself terminal and exhausted: clearing stops there (it stays dead)
    f.mark_invalid([a2])
    assert f.view("flags")[r] & EXHAUSTED
    f.mark_terminal([a])  # a: EXHAUSTED | TERMINAL now
    (c,) = f.add_children([r], [1]).tolist()  # r's third reserved slot
    assert not f.view("flags")[r] & EXHAUSTED
    assert f.select([r], 1)[0].tolist() == [c]


def test_reads_children_path_best_child_q():
    f = Forest()
    (r,) = f.create_roots(1)
    a, b = f.expand([r], [2]).tolist()
    (b1,) = f.expand([b], [1]).tolist()
    assert f.children(r).tolist() == [a, b]
    assert f.children(b1).tolist() == []
    assert f.path(b1).tolist() == [r, b, b1]
    assert f.path(r).tolist() == [r]
    assert f.root_of(b1) == r
    assert f.view("depth")[[r, a, b, b1]].tolist() == [0, 1, 1, 2]
    leaves, _ = f.select([r], 2)
    assert leaves.tolist() == [a, b1]
    f.backprop(leaves, [1.0, 0.5])
    # N(root)=2: a = 1 + 2 sqrt(ln 2) beats b = 0.5 + 2 sqrt(ln 2)
    visit(f, r, a, -1.0)
    # a: N=2, Q=0; b: N=1, Q=0.5
    assert f.best_child(r, by="visits") == a
    assert f.best_child(r, by="q") == b
    assert f.q([a, b]).tolist() == [0.0, 0.5]
    assert f.q(r) == pytest.approx(0.5 / 3)
    assert math.isnan(f.q([f.expand([a], [1])[0]])[0])  # unvisited: NaN
    f.mark_invalid([b])
    assert f.best_child(r, by="q") == a  # invalid children are never the answer
    assert f.best_child(b1) == -1  # no children


def test_backup_adds_values_along_the_path_without_touching_virtual_loss():
    from rstar.tree import Forest

    f = Forest()
    root = int(f.create_roots(1)[0])
    leaves, _ = f.select([root], 1)
    kids = f.expand(leaves, [2])
    # the search found two terminal children while expanding the selected root: +1 and -1
    f.backup(kids, [1.0, -1.0])
    assert f.view("visits")[root] == 2 and f.view("value_sum")[root] == 0.0
    assert f.view("visits")[kids].tolist() == [1, 1]
    assert f.view("value_sum")[kids].tolist() == [1.0, -1.0]
    assert f.view("in_flight")[root] == 1  # the selection is still outstanding
    f.cancel(leaves)
    assert f.view("in_flight")[root] == 0 and f.view("visits")[root] == 2
