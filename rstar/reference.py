"""Pure-Python reference of the tree core: one object per node, same rules.

Used by the tests (which check that the C++ core gives identical selections,
visits, values and flags, bit for bit) and by ``benchmarks/bench_tree.py`` (as
the baseline it is measured against). Every floating point operation is done
in the order the core does it; float32 columns of the core (prior, reward_min,
reward_sum, q_backed) are rounded through float32 here too. See
``rstar.tree`` for the rules themselves.

Ids are assigned exactly as the core assigns them (roots and children in
creation order), so ids from one can be used on the other. Errors are raised
as ValueError for the same inputs (messages may differ); dtype checks are the
binding's business and are not mirrored.
"""

from __future__ import annotations

import math
import struct

import numpy as np

UCT, PUCT, MCTSR = 0, 1, 2
EXPANDED, TERMINAL, INVALID, PENDING = 1, 2, 4, 8
DEAD = TERMINAL | INVALID
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
    )

    def __init__(self, id: int, parent: "Node | None", depth: int, prior: float):
        self.id = id
        self.parent = parent
        self.children: list[Node] = []
        self.depth = depth
        self.flags = 0
        self.visits = 0
        self.in_flight = 0
        self.value_sum = 0.0
        self.prior = prior
        self.reward_min = INF
        self.reward_sum = 0.0
        self.reward_count = 0
        self.q_backed = NAN


def _params(rule, c, first_play, eps):
    c = DEFAULT_C.get(rule, 2.0) if c is None else float(c)
    fp = DEFAULT_FIRST_PLAY.get(rule, INF) if first_play is None else float(first_play)
    p = (rule, c, fp, float(eps))
    _check_params(p)
    return p


def _check_params(p):
    rule, c, fp, eps = p
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
        self.nodes: list[Node] = []
        self.rules: dict[int, tuple] = {}

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    # ------------------------------------------------------------ checks

    def _node(self, i: int, what: str) -> Node:
        if i < 0 or i >= len(self.nodes):
            raise ValueError(f"{what}: node id {i} is out of range (this forest has {len(self.nodes)} nodes)")
        return self.nodes[i]

    def _root(self, i: int, what: str) -> Node:
        n = self._node(i, what)
        if n.parent is not None:
            raise ValueError(f"{what}: node {i} is not a root")
        return n

    # ------------------------------------------------------------ roots, rules

    def create_roots(self, n: int, rule=UCT, c=None, first_play=None, eps=1e-5) -> list[int]:
        if n < 0:
            raise ValueError(f"create_roots: n must be >= 0, got {n}")
        p = _params(rule, c, first_play, eps)
        out = []
        for _ in range(n):
            node = Node(len(self.nodes), None, 0, 1.0)
            self.nodes.append(node)
            self.rules[node.id] = p
            out.append(node.id)
        return out

    def set_rule(self, roots, rule=UCT, c=None, first_play=None, eps=1e-5) -> None:
        p = _params(rule, c, first_play, eps)
        roots = _ints(roots)
        for r in roots:
            self._root(r, "set_rule")
        for r in roots:
            self.rules[r] = p

    def get_rule(self, root: int) -> dict:
        self._root(root, "get_rule")
        rule, c, fp, eps = self.rules[root]
        return {"rule": rule, "c": c, "first_play": fp, "eps": eps}

    # ------------------------------------------------------------ select

    def _descend(self, root: Node, p) -> Node | None:
        rule, c, fp, eps = p
        vl = self.virtual_loss
        node = root
        while node.children:
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

    def select(self, roots, k: int = 1, rule=None, c=None, first_play=None, eps=None):
        roots = _ints(roots)
        if k < 0:
            raise ValueError(f"select: k must be >= 0, got {k}")
        per_root = []
        for r in roots:
            node = self._root(r, "select")
            if node.flags & TERMINAL:
                raise ValueError(f"select: root {r} is terminal")
            if node.flags & INVALID:
                raise ValueError(f"select: root {r} is invalid")
            tree = self.rules[r]
            if rule is not None:
                p = (rule,
                     DEFAULT_C.get(rule, 2.0) if c is None else float(c),
                     DEFAULT_FIRST_PLAY.get(rule, INF) if first_play is None else float(first_play),
                     1e-5 if eps is None else float(eps))
            else:
                p = (tree[0],
                     tree[1] if c is None else float(c),
                     tree[2] if first_play is None else float(first_play),
                     tree[3] if eps is None else float(eps))
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

    # ------------------------------------------------------------ expand

    def expand(self, leaves, counts, priors=None) -> list[int]:
        leaves = _ints(leaves)
        counts = _ints(counts)
        if len(leaves) != len(counts):
            raise ValueError("expand: leaves and counts differ in length")
        total = 0
        for i, (lid, cnt) in enumerate(zip(leaves, counts)):
            node = self._node(lid, "expand")
            if cnt < 0:
                raise ValueError(f"expand: counts[{i}] is negative ({cnt})")
            if cnt > MAX_CHILDREN:
                raise ValueError(f"expand: counts[{i}] exceeds {MAX_CHILDREN}")
            if node.flags & EXPANDED:
                raise ValueError(f"expand: node {lid} is already expanded")
            if node.flags & TERMINAL:
                raise ValueError(f"expand: node {lid} is terminal")
            if node.flags & INVALID:
                raise ValueError(f"expand: node {lid} is invalid")
            if cnt > 0 and node.depth >= MAX_DEPTH:
                raise ValueError(f"expand: node {lid} is at the maximum depth")
            total += cnt
        if len(set(leaves)) != len(leaves):
            raise ValueError("expand: a node appears twice in leaves")
        if priors is not None:
            priors = _floats(priors)
            if len(priors) != total:
                raise ValueError(f"expand: priors has length {len(priors)} but counts sum to {total}")
            for j, pr in enumerate(priors):
                if not math.isfinite(pr) or pr < 0 or pr > FLT_MAX:
                    raise ValueError(f"expand: priors[{j}] = {pr} is not a finite number in [0, FLT_MAX]")
        out = []
        nodes = self.nodes
        j = 0
        for lid, cnt in zip(leaves, counts):
            if cnt == 0:
                continue
            parent = nodes[lid]
            parent.flags |= EXPANDED
            dep = parent.depth + 1
            uniform = f32(1.0 / cnt)
            kids = parent.children
            for _ in range(cnt):
                pr = f32(priors[j]) if priors is not None else uniform
                child = Node(len(nodes), parent, dep, pr)
                nodes.append(child)
                kids.append(child)
                out.append(child.id)
                j += 1
        return out

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

    # ------------------------------------------------------------ terminal / invalid

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
                p.flags |= TERMINAL
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
        """Every column as a numpy array with the core's dtypes (for comparisons)."""
        ns = self.nodes
        return {
            "parent": np.array([n.parent.id if n.parent is not None else -1 for n in ns], np.int32),
            "first_child": np.array([n.children[0].id if n.children else -1 for n in ns], np.int32),
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
