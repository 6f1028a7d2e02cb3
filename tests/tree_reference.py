"""Pure-Python reference of the tree core: one object per node, same rules.

A test oracle, kept with the tests (it is not part of the installed package).

Used by the tests (which check that the C++ core gives identical selections,
visits, values and flags, bit for bit) and by ``benchmarks/bench_tree.py`` (as
the baseline it is measured against). Every floating point operation is done
in the order the core does it; float32 columns of the core (prior, reward_min,
reward_sum, q_backed) are rounded through float32 here too. See
``rstar.tree`` for the rules themselves.

Ids are assigned exactly as the core assigns them (the same first-fit over
the coalesced ranges of released slots, else fresh slots at the top), so ids
from one can be used on the other. Every arena slot is a ``Node`` object, as
in the core: live nodes, unborn child slots (UNBORN) and released slots
(RELEASED), with the same contents column for column. Errors are raised
as ValueError for the same inputs (messages may differ); dtype checks are the
binding's business and are not mirrored.
"""

from __future__ import annotations

import bisect
import math
import struct

import numpy as np

UCT, PUCT, MCTSR = 0, 1, 2
EXPANDED, TERMINAL, INVALID, PENDING, EXHAUSTED, UNBORN, RELEASED = 1, 2, 4, 8, 16, 32, 64
DEAD = TERMINAL | INVALID | EXHAUSTED
NOT_A_NODE = UNBORN | RELEASED
NO_PARENT = -1
MAX_CHILDREN = 65535
MAX_DEPTH = 65535
MAX_REWARDS = 65535
MAX_ABS_REWARD = 1e30
FLT_MAX = 3.4028234663852886e38
INF = math.inf
NAN = math.nan

_F32 = struct.Struct("f")


def f32(x: float) -> float:
    """Round a float64 to float32 (as the core's float32 columns do)."""
    return _F32.unpack(_F32.pack(x))[0]


DEFAULT_C = {UCT: 2.0, PUCT: 1.25, MCTSR: 1.4}
DEFAULT_FIRST_PLAY = {UCT: INF, PUCT: 0.0, MCTSR: INF}


class Node:
    __slots__ = (
        "id",
        "parent",
        "children",
        "depth",
        "flags",
        "visits",
        "in_flight",
        "value_sum",
        "prior",
        "reward_min",
        "reward_sum",
        "reward_count",
        "q_backed",
        "first_slot",
        "n_slots",
    )

    def __init__(self, id: int, parent: "Node | None", depth: int, prior: float, flags: int = 0):
        self.id = id
        self.parent = parent  # the owning node for an unborn slot
        self.children: list[Node] = []  # born children, in creation order
        self.first_slot = -1  # first slot of the child block (first_child), -1 while none
        self.n_slots = 0  # size of the child block: born children + unborn slots
        self.depth = depth
        self.flags = flags
        self.visits = 0
        self.in_flight = 0
        self.value_sum = 0.0
        self.prior = prior
        self.reward_min = INF
        self.reward_sum = 0.0
        self.reward_count = 0
        self.q_backed = NAN


def _params(rule, c, first_play, eps, max_children=0):
    c = DEFAULT_C.get(rule, 2.0) if c is None else float(c)
    fp = DEFAULT_FIRST_PLAY.get(rule, INF) if first_play is None else float(first_play)
    p = (rule, c, fp, float(eps), int(max_children))
    _check_params(p)
    return p


def _check_params(p):
    rule, c, fp, eps, max_children = p
    if not 0 <= max_children <= MAX_CHILDREN:
        raise ValueError(f"max_children must lie in [0, {MAX_CHILDREN}] (0: never stop early), got {max_children}")
    if rule not in (UCT, PUCT, MCTSR):
        raise ValueError(f"rule must be UCT (0), PUCT (1) or MCTSR (2), got {rule}")
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"c must be a finite number >= 0, got {c}")
    if math.isnan(fp):
        raise ValueError("first_play must not be NaN")
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps}")


def _ints(xs) -> list[int]:
    if isinstance(xs, (int, np.integer)):
        return [int(xs)]
    return [int(x) for x in xs]


def _floats(xs) -> list[float]:
    if isinstance(xs, (int, float, np.number)):
        return [float(xs)]
    return [float(x) for x in xs]


class Forest:
    """Reference forest with the core's API (lists in, lists out)."""

    def __init__(self, virtual_loss: float = 1.0):
        if not math.isfinite(virtual_loss) or virtual_loss < 0:
            raise ValueError("virtual_loss must be a finite number >= 0")
        self.virtual_loss = float(virtual_loss)
        self.nodes: list[Node] = []  # every slot of the arena (a Node in every state)
        self.rules: dict[int, tuple] = {}
        self.free: list[list[int]] = []  # released slots: [start, length] runs, sorted, coalesced
        self.num_live = 0

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    # ------------------------------------------------------------ slots

    def _take(self, n: int, top: list[int]) -> int:
        """First free run (by id) holding n slots, else n new slots at the top."""
        for i, (start, length) in enumerate(self.free):
            if length >= n:
                if length > n:
                    self.free[i] = [start + n, length - n]
                else:
                    del self.free[i]
                return start
        start = top[0]
        top[0] += n
        return start

    def _extend(self, top: int) -> None:
        """New slots up to `top`, to be filled by the caller (every one is)."""
        self.nodes.extend([None] * (top - len(self.nodes)))

    def _free(self, lo: int, n: int) -> None:
        i = bisect.bisect_left(self.free, [lo, 0])
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == lo:
            i -= 1
            lo, n = self.free[i][0], self.free[i][1] + n
            del self.free[i]
        if i < len(self.free) and lo + n == self.free[i][0]:
            n += self.free[i][1]
            del self.free[i]
        self.free.insert(i, [lo, n])

    # ------------------------------------------------------------ checks

    def _node(self, i: int, what: str) -> Node:
        if i < 0 or i >= len(self.nodes):
            raise ValueError(f"{what}: node id {i} is out of range (this forest has {len(self.nodes)} nodes)")
        n = self.nodes[i]
        if n.flags & RELEASED:
            raise ValueError(f"{what}: node {i} was released")
        if n.flags & UNBORN:
            raise ValueError(f"{what}: node {i} is an unborn child slot of node {n.parent.id}")
        return n

    def _root(self, i: int, what: str) -> Node:
        n = self._node(i, what)
        if n.parent is not None:
            raise ValueError(f"{what}: node {i} is not a root")
        return n

    # ------------------------------------------------------------ roots, rules

    def create_roots(self, n: int, rule=UCT, c=None, first_play=None, eps=1e-5, max_children=0) -> list[int]:
        if n < 0:
            raise ValueError(f"create_roots: n must be >= 0, got {n}")
        p = _params(rule, c, first_play, eps, max_children)
        top = [len(self.nodes)]
        out = [self._take(1, top) for _ in range(n)]
        self._extend(top[0])
        for i in out:
            self.nodes[i] = Node(i, None, 0, 1.0)
            self.rules[i] = p
        self.num_live += n
        return out

    def set_rule(self, roots, rule=UCT, c=None, first_play=None, eps=1e-5, max_children=0) -> None:
        p = _params(rule, c, first_play, eps, max_children)
        roots = _ints(roots)
        for r in roots:
            self._root(r, "set_rule")
        for r in roots:
            self.rules[r] = p

    def get_rule(self, root: int) -> dict:
        self._root(root, "get_rule")
        rule, c, fp, eps, max_children = self.rules[root]
        return {"rule": rule, "c": c, "first_play": fp, "eps": eps, "max_children": max_children}

    # ------------------------------------------------------------ select

    def _descend(self, root: Node, p) -> Node | None:
        rule, c, fp, eps, max_kids = p
        vl = self.virtual_loss
        node = root
        while node.children:
            if len(node.children) < max_kids and not node.flags & PENDING:
                qn = node.q_backed
                if not any(ch.q_backed > qn for ch in node.children):  # NaN compares false
                    return node
            np_ = node.visits + node.in_flight
            best = None
            best_s = 0.0
            if rule == UCT:
                log_np = math.log(float(np_) if np_ > 1 else 1.0)
                for ch in node.children:
                    if ch.flags & DEAD or (not ch.children and ch.in_flight > 0):
                        continue
                    f = ch.in_flight
                    n = ch.visits + f
                    if n == 0:
                        s = fp
                    else:
                        nd = float(n)
                        s = (ch.value_sum - vl * f) / nd + c * math.sqrt(log_np / nd)
                    if best is None or s > best_s:
                        best, best_s = ch, s
                        if s == INF:
                            break
            elif rule == PUCT:
                sqrt_np = math.sqrt(float(np_))
                for ch in node.children:
                    if ch.flags & DEAD or (not ch.children and ch.in_flight > 0):
                        continue
                    f = ch.in_flight
                    n = ch.visits + f
                    nd = float(n)
                    q = fp if n == 0 else (ch.value_sum - vl * f) / nd
                    s = q + c * ch.prior * sqrt_np / (1.0 + nd)
                    if best is None or s > best_s:
                        best, best_s = ch, s
                        if s == INF:
                            break
            else:  # MCTSR
                log_np1 = math.log(float(np_) + 1.0)
                for ch in node.children:
                    if ch.flags & DEAD or (not ch.children and ch.in_flight > 0):
                        continue
                    q = ch.q_backed
                    if q != q:  # NaN: unrated
                        s = fp
                    else:
                        nd = float(ch.visits + ch.in_flight)
                        s = q + c * math.sqrt(log_np1 / (nd + eps))
                    if best is None or s > best_s:
                        best, best_s = ch, s
                        if s == INF:
                            break
            if best is None:
                return None
            node = best
        if node.in_flight > 0:
            return None
        return node

    def select(self, roots, k: int = 1, rule=None, c=None, first_play=None, eps=None, max_children=None):
        roots = _ints(roots)
        if k < 0:
            raise ValueError(f"select: k must be >= 0, got {k}")
        if max_children is not None and not 0 <= max_children <= MAX_CHILDREN:
            raise ValueError(f"max_children must lie in [0, {MAX_CHILDREN}], got {max_children}")
        per_root = []
        for r in roots:
            node = self._root(r, "select")
            if node.flags & TERMINAL:
                raise ValueError(f"select: root {r} is terminal")
            if node.flags & INVALID:
                raise ValueError(f"select: root {r} is invalid")
            if node.flags & EXHAUSTED:
                raise ValueError(f"select: root {r} is exhausted")
            tree = self.rules[r]
            if rule is not None:
                p = (rule,
                     DEFAULT_C.get(rule, 2.0) if c is None else float(c),
                     DEFAULT_FIRST_PLAY.get(rule, INF) if first_play is None else float(first_play),
                     1e-5 if eps is None else float(eps),
                     0 if max_children is None else int(max_children))
            else:
                p = (tree[0],
                     tree[1] if c is None else float(c),
                     tree[2] if first_play is None else float(first_play),
                     tree[3] if eps is None else float(eps),
                     tree[4] if max_children is None else int(max_children))
            _check_params(p)
            per_root.append((node, p))
        leaves, owner = [], []
        for i, (root, p) in enumerate(per_root):
            for _ in range(k):
                leaf = self._descend(root, p)
                if leaf is None:
                    break
                n = leaf
                while n is not None:
                    n.in_flight += 1
                    n = n.parent
                leaf.flags |= PENDING
                leaves.append(leaf.id)
                owner.append(i)
        return leaves, owner

    # ------------------------------------------------------------ expand, add_children, release

    def expand(self, leaves, counts, priors=None, reserve=None) -> list[int]:
        return self._make_children(leaves, counts, priors, reserve, False, "expand")

    def add_children(self, nodes, counts, priors=None, reserve=None) -> list[int]:
        return self._make_children(nodes, counts, priors, reserve, True, "add_children")

    def _make_children(self, ids, counts, priors, reserve, append, what) -> list[int]:
        ids = _ints(ids)
        counts = _ints(counts)
        if len(ids) != len(counts):
            raise ValueError(f"{what}: ids and counts differ in length")
        given = reserve is not None
        if given:
            reserve = _ints(reserve)
            if len(reserve) != len(ids):
                raise ValueError(f"{what}: reserve has length {len(reserve)} but there are {len(ids)} nodes")
        else:
            reserve = list(counts)
        for i, (nid, cnt) in enumerate(zip(ids, counts)):
            node = self._node(nid, what)
            if not given and append and cnt > 0 and node.first_slot < 0:
                root = node
                while root.parent is not None:
                    root = root.parent
                reserve[i] = max(cnt, self.rules[root.id][4])
            res = reserve[i]
            if cnt < 0:
                raise ValueError(f"{what}: counts[{i}] is negative ({cnt})")
            if cnt > MAX_CHILDREN:
                raise ValueError(f"{what}: counts[{i}] exceeds {MAX_CHILDREN}")
            if res < cnt:
                raise ValueError(f"{what}: reserve[{i}] is less than counts[{i}]")
            if res > MAX_CHILDREN:
                raise ValueError(f"{what}: reserve[{i}] exceeds {MAX_CHILDREN}")
            if node.flags & TERMINAL:
                raise ValueError(f"{what}: node {nid} is terminal")
            if node.flags & INVALID:
                raise ValueError(f"{what}: node {nid} is invalid")
            if not append:
                if node.flags & EXPANDED:
                    raise ValueError(f"{what}: node {nid} is already expanded")
                if node.first_slot >= 0:
                    raise ValueError(f"{what}: node {nid} already has reserved child slots")
            elif node.first_slot >= 0:
                if cnt > node.n_slots - len(node.children):
                    raise ValueError(f"{what}: node {nid} has too few unborn child slots left")
                continue
            if res > 0 and node.depth >= MAX_DEPTH:
                raise ValueError(f"{what}: node {nid} is at the maximum depth")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{what}: a node appears twice")
        total = sum(counts)
        if priors is not None:
            priors = _floats(priors)
            if len(priors) != total:
                raise ValueError(f"{what}: priors has length {len(priors)} but counts sum to {total}")
            for j, pr in enumerate(priors):
                if not math.isfinite(pr) or pr < 0 or pr > FLT_MAX:
                    raise ValueError(f"{what}: priors[{j}] = {pr} is not a finite number in [0, FLT_MAX]")
        nodes = self.nodes
        top = [len(nodes)]
        blocks = [
            self._take(res, top) if res > 0 and nodes[nid].first_slot < 0 else -1
            for nid, res in zip(ids, reserve)
        ]
        self._extend(top[0])
        out = []
        j = 0
        for nid, cnt, res, lo in zip(ids, counts, reserve, blocks):
            parent = nodes[nid]
            kids = parent.children
            uniform = f32(1.0 / cnt) if cnt else 0.0
            if lo >= 0:  # a new block: born children, then unborn slots
                parent.first_slot, parent.n_slots = lo, res
                dep = parent.depth + 1
                for s in range(lo, lo + cnt):
                    child = Node(s, parent, dep, f32(priors[j]) if priors is not None else uniform)
                    nodes[s] = child
                    kids.append(child)
                    out.append(s)
                    j += 1
                for s in range(lo + cnt, lo + res):
                    nodes[s] = Node(s, parent, dep, 0.0, UNBORN)
            elif cnt:  # the next unborn slots of the node's block
                start = parent.first_slot + len(kids)
                for s in range(start, start + cnt):
                    child = nodes[s]
                    child.flags = 0
                    child.prior = f32(priors[j]) if priors is not None else uniform
                    kids.append(child)
                    out.append(s)
                    j += 1
            if cnt == 0:
                continue
            parent.flags |= EXPANDED
            n = parent
            while n is not None and n.flags & EXHAUSTED:
                n.flags &= ~EXHAUSTED
                if n.flags & DEAD:
                    break
                n = n.parent
        self.num_live += total
        return out

    def release(self, roots) -> None:
        roots = _ints(roots)
        for r in roots:
            node = self._root(r, "release")
            if node.in_flight > 0:
                raise ValueError(f"release: root {r} has a selection in flight")
        if len(set(roots)) != len(roots):
            raise ValueError("release: a root appears twice")
        for r in roots:
            ranges = [(r, 1)]
            stack = [self.nodes[r]]
            while stack:
                n = stack.pop()
                self.num_live -= 1
                if n.first_slot >= 0:
                    ranges.append((n.first_slot, n.n_slots))
                    stack.extend(n.children)
            for lo, n in ranges:
                for s in range(lo, lo + n):
                    self.nodes[s] = Node(s, None, 0, 0.0, RELEASED)
                self._free(lo, n)
            del self.rules[r]

    # ------------------------------------------------------------ backprop, cancel

    def _pending(self, leaves, what):
        for lid in leaves:
            node = self._node(lid, what)
            if not node.flags & PENDING:
                raise ValueError(f"{what}: node {lid} has no selection in flight")
        if len(set(leaves)) != len(leaves):
            raise ValueError(f"{what}: a node appears twice in leaves")

    def backprop(self, leaves, values) -> None:
        leaves = _ints(leaves)
        values = _floats(values)
        if len(leaves) != len(values):
            raise ValueError("backprop: leaves and values differ in length")
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise ValueError(f"backprop: values[{i}] = {v} is not finite")
        self._pending(leaves, "backprop")
        nodes = self.nodes
        for lid, v in zip(leaves, values):
            n = nodes[lid]
            n.flags &= ~PENDING
            while n is not None:
                n.visits += 1
                n.value_sum += v
                n.in_flight -= 1
                n = n.parent

    def backup(self, nodes, values) -> None:
        nodes = _ints(nodes)
        values = _floats(values)
        if len(nodes) != len(values):
            raise ValueError("backup: nodes and values differ in length")
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise ValueError(f"backup: values[{i}] = {v} is not finite")
        for nid in nodes:
            self._node(nid, "backup")
        for nid, v in zip(nodes, values):
            n = self.nodes[nid]
            while n is not None:
                n.visits += 1
                n.value_sum += v
                n = n.parent

    def cancel(self, leaves) -> None:
        leaves = _ints(leaves)
        self._pending(leaves, "cancel")
        for lid in leaves:
            n = self.nodes[lid]
            n.flags &= ~PENDING
            while n is not None:
                n.in_flight -= 1
                n = n.parent

    # ------------------------------------------------------------ terminal / invalid / exhausted

    def _mark(self, nodes, flag, what):
        nodes = _ints(nodes)
        for i in nodes:
            self._node(i, what)
        for i in nodes:
            n = self.nodes[i]
            n.flags |= flag
            p = n.parent
            while p is not None and not p.flags & DEAD:
                if any(not ch.flags & DEAD for ch in p.children):
                    break
                p.flags |= EXHAUSTED
                p = p.parent

    def mark_terminal(self, nodes) -> None:
        self._mark(nodes, TERMINAL, "mark_terminal")

    def mark_invalid(self, nodes) -> None:
        self._mark(nodes, INVALID, "mark_invalid")

    # ------------------------------------------------------------ MCTSr rewards

    def add_rewards(self, nodes, rewards) -> None:
        nodes = _ints(nodes)
        rewards = _floats(rewards)
        if len(nodes) != len(rewards):
            raise ValueError("add_rewards: nodes and rewards differ in length")
        for i, (nid, r) in enumerate(zip(nodes, rewards)):
            self._node(nid, "add_rewards")
            if not math.isfinite(r) or abs(r) > MAX_ABS_REWARD:
                raise ValueError(f"add_rewards: rewards[{i}] = {r} is not a finite number in [-1e30, 1e30]")
        seen: dict[int, int] = {}
        for nid in nodes:
            seen[nid] = seen.get(nid, 0) + 1
        for nid, m in seen.items():
            if self.nodes[nid].reward_count + m > MAX_REWARDS:
                raise ValueError(f"add_rewards: node {nid} would hold more than {MAX_REWARDS} reward samples")
        for nid, r in zip(nodes, rewards):
            node = self.nodes[nid]
            rf = f32(r)
            if rf < node.reward_min:
                node.reward_min = rf
            node.reward_sum = f32(node.reward_sum + rf)
            node.reward_count += 1
            n = node
            while n is not None:
                has_own = n.reward_count > 0
                own = 0.5 * (n.reward_min + n.reward_sum / n.reward_count) if has_own else 0.0
                has_best, best = False, 0.0
                for ch in n.children:
                    qc = ch.q_backed
                    if qc != qc:
                        continue
                    if not has_best or qc > best:
                        best, has_best = qc, True
                if has_own and has_best:
                    q = 0.5 * (own + best)
                elif has_own:
                    q = own
                elif has_best:
                    q = best
                else:
                    q = NAN
                n.q_backed = f32(q)
                n = n.parent

    # ------------------------------------------------------------ reads

    def children(self, node: int) -> list[int]:
        return [ch.id for ch in self._node(node, "children").children]

    def path(self, node: int) -> list[int]:
        n = self._node(node, "path")
        out = []
        while n is not None:
            out.append(n.id)
            n = n.parent
        return out[::-1]

    def root_of(self, nodes):
        scalar = isinstance(nodes, (int, np.integer))
        out = []
        for i in _ints(nodes):
            n = self._node(i, "root_of")
            while n.parent is not None:
                n = n.parent
            out.append(n.id)
        return out[0] if scalar else out

    def q(self, nodes):
        scalar = isinstance(nodes, (int, np.integer))
        out = []
        for i in _ints(nodes):
            n = self._node(i, "q")
            out.append(n.value_sum / n.visits if n.visits > 0 else NAN)
        return out[0] if scalar else out

    def slots_left(self, nodes):
        scalar = isinstance(nodes, (int, np.integer))
        out = []
        for i in _ints(nodes):
            n = self._node(i, "slots_left")
            out.append(n.n_slots - len(n.children))
        return out[0] if scalar else out

    def best_child(self, node: int, by: str = "visits") -> int:
        if by not in ("visits", "q"):
            raise ValueError(f"best_child: by must be 'visits' or 'q', got {by!r}")
        n = self._node(node, "best_child")
        root = n
        while root.parent is not None:
            root = root.parent
        mctsr = self.rules[root.id][0] == MCTSR
        best, best_v = -1, 0.0
        for ch in n.children:
            if ch.flags & INVALID:
                continue
            if by == "visits":
                v = float(ch.visits)
            elif mctsr:
                if ch.q_backed != ch.q_backed:
                    continue
                v = ch.q_backed
            else:
                if ch.visits == 0:
                    continue
                v = ch.value_sum / ch.visits
            if best < 0 or v > best_v:
                best, best_v = ch.id, v
        return best

    def state(self) -> dict[str, np.ndarray]:
        """Every column of every slot as a numpy array with the core's dtypes (for comparisons)."""
        ns = self.nodes
        return {
            "parent": np.array([n.parent.id if n.parent is not None else -1 for n in ns], np.int32),
            "first_child": np.array([n.first_slot for n in ns], np.int32),
            "num_children": np.array([len(n.children) for n in ns], np.uint16),
            "depth": np.array([n.depth for n in ns], np.uint16),
            "flags": np.array([n.flags for n in ns], np.uint8),
            "visits": np.array([n.visits for n in ns], np.int32),
            "in_flight": np.array([n.in_flight for n in ns], np.int32),
            "value_sum": np.array([n.value_sum for n in ns], np.float64),
            "prior": np.array([n.prior for n in ns], np.float32),
            "reward_min": np.array([n.reward_min for n in ns], np.float32),
            "reward_sum": np.array([n.reward_sum for n in ns], np.float32),
            "reward_count": np.array([n.reward_count for n in ns], np.uint16),
            "q_backed": np.array([n.q_backed for n in ns], np.float32),
        }

    def export_tree(self, root: int) -> dict[str, np.ndarray]:
        """The core's export_tree: breadth-first, local ids, born children only."""
        r = self._root(root, "export_tree")
        order = [r]
        for n in order:
            order.extend(n.children)
        local = {n.id: i for i, n in enumerate(order)}
        rule, c, fp, eps, max_children = self.rules[root]
        return {
            "parent": np.array([local[n.parent.id] if n.parent is not None else -1 for n in order], np.int32),
            "first_child": np.array([local[n.children[0].id] if n.children else -1 for n in order], np.int32),
            "num_children": np.array([len(n.children) for n in order], np.uint16),
            "depth": np.array([n.depth for n in order], np.uint16),
            "flags": np.array([n.flags & (EXPANDED | TERMINAL | INVALID | EXHAUSTED) for n in order], np.uint8),
            "visits": np.array([n.visits for n in order], np.int32),
            "value_sum": np.array([n.value_sum for n in order], np.float64),
            "prior": np.array([n.prior for n in order], np.float32),
            "reward_min": np.array([n.reward_min for n in order], np.float32),
            "reward_sum": np.array([n.reward_sum for n in order], np.float32),
            "reward_count": np.array([n.reward_count for n in order], np.uint16),
            "q_backed": np.array([n.q_backed for n in order], np.float32),
            "node_ids": np.array([n.id for n in order], np.int64),
            "rule": np.array(rule, np.int64),
            "c": np.array(c, np.float64),
            "first_play": np.array(fp, np.float64),
            "eps": np.array(eps, np.float64),
            "max_children": np.array(max_children, np.int64),
        }

    def import_tree(self, arrays) -> int:
        """The core's import_tree for trees this module or the core exported (validation light:
        the structure must be breadth-first with contiguous children, as export writes it)."""
        parent = [int(x) for x in arrays["parent"]]
        n = len(parent)
        if n < 1 or parent[0] != -1 or any(not 0 <= parent[i] < i for i in range(1, n)):
            raise ValueError("import_tree: the parent column is not breadth-first from root 0")
        p = _params(int(arrays["rule"]), float(arrays["c"]), float(arrays["first_play"]), float(arrays["eps"]),
                    int(arrays["max_children"]) if "max_children" in arrays else 0)
        top = [len(self.nodes)]
        base = self._take(n, top)
        self._extend(top[0])
        new = []
        for i in range(n):
            node = Node(base + i, new[parent[i]] if i else None, int(arrays["depth"][i]), float(arrays["prior"][i]),
                        int(arrays["flags"][i]))
            node.visits = int(arrays["visits"][i])
            node.value_sum = float(arrays["value_sum"][i])
            node.reward_min = float(arrays["reward_min"][i])
            node.reward_sum = float(arrays["reward_sum"][i])
            node.reward_count = int(arrays["reward_count"][i])
            node.q_backed = float(arrays["q_backed"][i])
            if i:
                par = new[parent[i]]
                if not par.children:
                    par.first_slot = base + i
                par.children.append(node)
                par.n_slots += 1
            new.append(node)
            self.nodes[base + i] = node
        self.rules[base] = p
        self.num_live += n
        return base
