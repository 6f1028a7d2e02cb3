// rstar tree core: the rules that move the numbers. See forest.hpp for the
// layout and the exact formulas; tests/tree_reference.py mirrors every floating
// point operation here in the same order (tests compare them bit for bit).
#include "forest.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

#include <sys/mman.h>

namespace rstar {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::string id_str(int64_t id) { return std::to_string(id); }

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kNaNf = std::numeric_limits<float>::quiet_NaN();

}  // namespace

namespace {

// Large columns live in anonymous mappings that reserve room for many times
// their capacity (MAP_NORESERVE: address space only) and are advised to use
// transparent huge pages: growing a forest touches fresh memory all the time,
// and page faults plus the copies of a doubling growth were most of the cost
// of expand. Small columns use malloc.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMapMinNodes = size_t(1) << 16;      // smaller capacities: malloc
constexpr size_t kReserveFactor = 16;                 // reservation = 16 x the capacity asked for ...
constexpr size_t kReserveMinNodes = size_t(1) << 24;  // ... and at least 16 Mi nodes (address space only)

size_t round_up(size_t bytes, size_t to) { return (bytes + to - 1) / to * to; }

// Maps `want` bytes (a multiple of kHugePage), 2 MiB aligned; nullptr on failure.
void* map_aligned(size_t want) {
  const size_t len = want + kHugePage;  // slack to align the start
  void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = round_up(start, kHugePage);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t tail = aligned + want, end = start + len;
  if (end > tail) munmap(reinterpret_cast<void*>(tail), end - tail);
  void* d = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  madvise(d, want, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return d;
}

// A fresh buffer able to hold `cap` elements of `elem` bytes (contents undefined).
void allocate(Buffer& b, size_t cap, size_t elem) {
  const size_t bytes = cap * elem;
  if (cap >= kMapMinNodes) {
    const size_t max_nodes = static_cast<size_t>(MAX_NODES);
    const size_t nodes = std::max(cap > max_nodes / kReserveFactor ? max_nodes : cap * kReserveFactor, kReserveMinNodes);
    const size_t need = round_up(bytes, kHugePage);
    size_t want = std::max(round_up(nodes * elem, kHugePage), need);
    void* d = map_aligned(want);
    if (d == nullptr && want > need) d = map_aligned(want = need);  // e.g. strict overcommit: no slack
    if (d != nullptr) {
      b.data = d;
      b.bytes = bytes;
      b.reserved = want;
      b.mapped = true;
      return;
    }
  }
  void* d = std::malloc(bytes ? bytes : 1);
  if (d == nullptr) throw std::bad_alloc();
  b.data = d;
  b.bytes = b.reserved = bytes;
  b.mapped = false;
}

}  // namespace

Buffer::~Buffer() {
  if (mapped) munmap(data, reserved);
  else std::free(data);
}

template <class T>
void Column<T>::reserve(size_t cap, size_t used) {
  const size_t bytes = cap * sizeof(T);
  // Grow in place when nothing else (a numpy view) holds this buffer.
  if (buf.use_count() == 1 && bytes <= buf->reserved) {
    buf->bytes = std::max(buf->bytes, bytes);
    return;
  }
  // Otherwise a fresh buffer: if a numpy view still points at the old one, the
  // view keeps it alive (shared_ptr in its capsule); otherwise it is freed here.
  auto nb = std::make_shared<Buffer>();
  allocate(*nb, cap, sizeof(T));
  if (used) std::memcpy(nb->data, buf->data, used * sizeof(T));
  buf = std::move(nb);
  p = static_cast<T*>(buf->data);
}

template struct Column<int32_t>;
template struct Column<uint16_t>;
template struct Column<uint8_t>;
template struct Column<double>;
template struct Column<float>;

Forest::Forest(double virtual_loss) : vl_(virtual_loss) {
  if (!std::isfinite(virtual_loss) || virtual_loss < 0)
    fail("virtual_loss must be a finite number >= 0, got " + std::to_string(virtual_loss));
}

void Forest::grow(int64_t extra) {
  const int64_t need = size_ + extra;
  if (extra < 0 || need > MAX_NODES)
    fail("the arena would exceed " + id_str(MAX_NODES) + " nodes (ids are int32)");
  if (static_cast<size_t>(need) <= cap_) return;
  size_t cap = std::max<size_t>({static_cast<size_t>(need), cap_ * 2, size_t(1024)});
  cap = std::min<size_t>(cap, static_cast<size_t>(MAX_NODES));
  const size_t used = static_cast<size_t>(size_);
  parent.reserve(cap, used);
  first_child.reserve(cap, used);
  num_children.reserve(cap, used);
  depth.reserve(cap, used);
  flags.reserve(cap, used);
  visits.reserve(cap, used);
  in_flight.reserve(cap, used);
  value_sum.reserve(cap, used);
  prior.reserve(cap, used);
  reward_min.reserve(cap, used);
  reward_sum.reserve(cap, used);
  reward_count.reserve(cap, used);
  q_backed.reserve(cap, used);
  cap_ = cap;
}

void Forest::init_node(int64_t id, int32_t par, uint16_t dep, float pri) {
  parent[id] = par;
  first_child[id] = NO_PARENT;
  num_children[id] = 0;
  depth[id] = dep;
  flags[id] = 0;
  visits[id] = 0;
  in_flight[id] = 0;
  value_sum[id] = 0.0;
  prior[id] = pri;
  reward_min[id] = std::numeric_limits<float>::infinity();
  reward_sum[id] = 0.0f;
  reward_count[id] = 0;
  q_backed[id] = kNaNf;
}

void Forest::check_id(int64_t id, const char* what) const {
  if (id < 0 || id >= size_)
    fail(std::string(what) + ": node id " + id_str(id) + " is out of range (this forest has " +
         id_str(size_) + " nodes)");
  const uint8_t fl = flags[id];
  if (fl & NOT_A_NODE) {
    if (fl & RELEASED) fail(std::string(what) + ": node " + id_str(id) + " was released");
    fail(std::string(what) + ": node " + id_str(id) + " is an unborn child slot of node " + id_str(parent[id]) +
         " (add_children turns it into a child)");
  }
}

void Forest::check_root(int64_t id, const char* what) const {
  check_id(id, what);
  if (parent[id] != NO_PARENT)
    fail(std::string(what) + ": node " + id_str(id) + " is not a root");
}

void Forest::check_params(const RuleParams& p) {
  if (p.rule != UCT && p.rule != PUCT && p.rule != MCTSR)
    fail("rule must be UCT (0), PUCT (1) or MCTSR (2), got " + std::to_string(p.rule));
  if (!std::isfinite(p.c) || p.c < 0) fail("c must be a finite number >= 0, got " + std::to_string(p.c));
  if (std::isnan(p.first_play)) fail("first_play must not be NaN");
  if (!std::isfinite(p.eps) || p.eps <= 0) fail("eps must be a finite number > 0, got " + std::to_string(p.eps));
  if (p.max_children < 0 || p.max_children > MAX_CHILDREN)
    fail("max_children must lie in [0, " + id_str(MAX_CHILDREN) + "] (0: never stop early), got " +
         std::to_string(p.max_children));
}

const RuleParams& Forest::params_of_root(int32_t root) const {
  auto it = rules_.find(root);
  if (it == rules_.end()) fail("internal: no rule recorded for root " + id_str(root));
  return it->second;
}

// ---------------------------------------------------------------- slots

void Forest::fill_fresh(size_t lo, size_t n) {
  std::fill_n(first_child.p + lo, n, NO_PARENT);
  std::fill_n(num_children.p + lo, n, uint16_t(0));
  std::fill_n(flags.p + lo, n, uint8_t(0));
  std::fill_n(visits.p + lo, n, 0);
  std::fill_n(in_flight.p + lo, n, 0);
  std::fill_n(value_sum.p + lo, n, 0.0);
  std::fill_n(reward_min.p + lo, n, std::numeric_limits<float>::infinity());
  std::fill_n(reward_sum.p + lo, n, 0.0f);
  std::fill_n(reward_count.p + lo, n, uint16_t(0));
  std::fill_n(q_backed.p + lo, n, kNaNf);
}

int32_t Forest::unborn_after(int32_t node) const {
  if (first_child[node] == NO_PARENT) return 0;
  int64_t s = static_cast<int64_t>(first_child[node]) + num_children[node];
  const int64_t start = s;
  while (s < size_ && (flags[s] & UNBORN) && parent[s] == node) ++s;
  return static_cast<int32_t>(s - start);
}

void Forest::add_free(int64_t start, int64_t len) {
  free_.emplace(start, len);
  free_by_len_[len].insert(start);
}

void Forest::drop_free(std::map<int64_t, int64_t>::iterator it) {
  auto bucket = free_by_len_.find(it->second);
  bucket->second.erase(it->first);
  if (bucket->second.empty()) free_by_len_.erase(bucket);
  free_.erase(it);
}

int64_t Forest::take(int64_t n, int64_t& top, std::vector<std::pair<int64_t, int64_t>>& taken) {
  // first fit: the lowest start among the ranges of length >= n
  int64_t best = -1;
  for (auto b = free_by_len_.lower_bound(n); b != free_by_len_.end(); ++b) {
    const int64_t s = *b->second.begin();
    if (best < 0 || s < best) best = s;
  }
  if (best >= 0) {
    auto it = free_.find(best);
    const int64_t len = it->second;
    drop_free(it);
    if (len > n) add_free(best + n, len - n);
    taken.emplace_back(best, n);
    return best;
  }
  const int64_t id = top;
  top += n;
  return id;
}

void Forest::commit_top(int64_t top, const std::vector<std::pair<int64_t, int64_t>>& taken) {
  if (top <= size_) return;
  try {
    grow(top - size_);
  } catch (...) {
    for (const auto& t : taken) free_range(t.first, t.second);
    throw;
  }
  size_ = top;
}

void Forest::free_range(int64_t lo, int64_t n) {
  if (n <= 0) return;
  auto next = free_.lower_bound(lo);
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == lo) {
      lo = prev->first;
      n += prev->second;
      drop_free(prev);
    }
  }
  if (next != free_.end() && lo + n == next->first) {
    n += next->second;
    drop_free(next);
  }
  add_free(lo, n);
}

void Forest::check_distinct(const std::vector<int64_t>& ids, const char* what, const char* noun) {
  // a scratch bit on each id, always cleared again (ids are checked live first)
  size_t dup = ids.size();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (flags[ids[i]] & SCRATCH) { dup = i; break; }
    flags[ids[i]] |= SCRATCH;
  }
  for (size_t i = 0; i < dup; ++i) flags[ids[i]] &= static_cast<uint8_t>(~SCRATCH);
  if (dup != ids.size())
    fail(std::string(what) + ": node " + id_str(ids[dup]) + " appears twice in " + noun);
}

// ---------------------------------------------------------------- roots, rules

std::vector<int64_t> Forest::create_roots(int64_t n, const RuleParams& params) {
  if (n < 0) fail("create_roots: n must be >= 0, got " + id_str(n));
  check_params(params);
  if (n > (int64_t(1) << 20)) {  // refuse an impossible n before allocating its output
    int64_t free_slots = 0;
    for (const auto& r : free_) free_slots += r.second;
    if (n > MAX_NODES - size_ + free_slots)
      fail("the arena would exceed " + id_str(MAX_NODES) + " nodes (ids are int32)");
  }
  std::vector<int64_t> out(static_cast<size_t>(n));
  int64_t top = size_;
  std::vector<std::pair<int64_t, int64_t>> taken;
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = take(1, top, taken);
  commit_top(top, taken);
  for (int64_t id : out) {
    init_node(id, NO_PARENT, 0, 1.0f);
    rules_[static_cast<int32_t>(id)] = params;
  }
  live_ += n;
  return out;
}

void Forest::set_rule(const std::vector<int64_t>& roots, const RuleParams& params) {
  check_params(params);
  for (int64_t r : roots) check_root(r, "set_rule");
  for (int64_t r : roots) rules_[static_cast<int32_t>(r)] = params;
}

RuleParams Forest::get_rule(int64_t root) const {
  check_root(root, "get_rule");
  return params_of_root(static_cast<int32_t>(root));
}

// ---------------------------------------------------------------- select

// Selection scores (forest.hpp has the formulas) in two passes over the
// children of a node, a chunk at a time:
//  1. the formula of a visited (UCT, PUCT) or rated (MCTSR) child, for every
//     child, unconditionally: straight-line loops over the columns that the
//     compiler vectorizes (-fno-math-errno lets sqrt vectorize). The
//     operations are exactly those of the formulas, in the same order (and
//     those of reference.py): bit-identical scores. N = visits + in_flight is
//     formed as double(visits) + double(in_flight), exact for two int32 values
//     and so equal to converting their int64 sum.
//  2. scalar: skip ineligible children, substitute the first-play score of
//     unvisited / unrated children, and keep the best (strict >, so ties go to
//     the lowest index; the first eligible child is taken whatever its score;
//     +inf cannot be beaten, so the scan stops there).
namespace {

constexpr int32_t kChunk = 64;  // children scored per pass

struct ScoreArgs {
  const int32_t* visits;
  const int32_t* in_flight;
  const double* value_sum;
  const float* prior;
  const float* q_backed;
  double c, vl, eps;
  double log_np;   // UCT: ln(max(Np, 1)); MCTSR: ln(Np + 1)
  double sqrt_np;  // PUCT: sqrt(Np)
};

// UCT, N > 0: W_eff/N + c * sqrt(ln(max(Np, 1)) / N)
void scores_uct(const ScoreArgs& a, int32_t first, int32_t n, double* out, double*) {
  const int32_t* vis = a.visits + first;
  const int32_t* inf = a.in_flight + first;
  const double* w = a.value_sum + first;
  for (int32_t i = 0; i < n; ++i) {
    const double fd = static_cast<double>(inf[i]);
    const double nd = static_cast<double>(vis[i]) + fd;
    out[i] = (w[i] - a.vl * fd) / nd + a.c * std::sqrt(a.log_np / nd);
  }
}

// PUCT: Q + c * P * sqrt(Np) / (1 + N); out: Q = W_eff/N, bonus: the second term.
void scores_puct(const ScoreArgs& a, int32_t first, int32_t n, double* out, double* bonus) {
  const int32_t* vis = a.visits + first;
  const int32_t* inf = a.in_flight + first;
  const double* w = a.value_sum + first;
  const float* pr = a.prior + first;
  for (int32_t i = 0; i < n; ++i) {
    const double fd = static_cast<double>(inf[i]);
    const double nd = static_cast<double>(vis[i]) + fd;
    const double u = a.c * static_cast<double>(pr[i]) * a.sqrt_np / (1.0 + nd);
    out[i] = (w[i] - a.vl * fd) / nd + u;
    bonus[i] = u;
  }
}

// MCTSR, rated: q_backed + c * sqrt(ln(Np + 1) / (N + eps))
void scores_mctsr(const ScoreArgs& a, int32_t first, int32_t n, double* out, double*) {
  const int32_t* vis = a.visits + first;
  const int32_t* inf = a.in_flight + first;
  const float* qb = a.q_backed + first;
  for (int32_t i = 0; i < n; ++i) {
    const double nd = static_cast<double>(vis[i]) + static_cast<double>(inf[i]);
    out[i] = static_cast<double>(qb[i]) + a.c * std::sqrt(a.log_np / (nd + a.eps));
  }
}

}  // namespace

// One descent from `root` by the rule; no state is changed. Returns false when
// some node on the way has no eligible child (or the root is a leaf in flight).
bool Forest::descend(int32_t root, const RuleParams& rp, int32_t& leaf) const {
  ScoreArgs a{visits.p, in_flight.p, value_sum.p, prior.p, q_backed.p, rp.c, vl_, rp.eps, 0.0, 0.0};
  const int32_t rule = rp.rule;
  void (*const score)(const ScoreArgs&, int32_t, int32_t, double*, double*) =
      rule == UCT ? scores_uct : rule == PUCT ? scores_puct : scores_mctsr;
  const double fp = rp.first_play;
  const int32_t max_kids = rp.max_children;
  double sc[kChunk], bonus[kChunk];
  int32_t node = root;
  while (num_children[node] > 0) {
    const int32_t first = first_child[node];
    const int32_t end = first + static_cast<int32_t>(num_children[node]);
    if (num_children[node] < max_kids && !(flags[node] & PENDING)) {
      // expandable unless some child's quality beats the node's (NaN compares false)
      const float qn = q_backed[node];
      int32_t ch = first;
      while (ch < end && !(q_backed[ch] > qn)) ++ch;
      if (ch == end) {
        leaf = node;
        return true;
      }
    }
    const double np = static_cast<double>(static_cast<int64_t>(visits[node]) + in_flight[node]);
    if (rule == UCT) a.log_np = std::log(np > 1.0 ? np : 1.0);
    else if (rule == PUCT) a.sqrt_np = std::sqrt(np);
    else a.log_np = std::log(np + 1.0);
    int32_t best = -1;
    double best_score = 0.0;
    for (int32_t lo = first; lo < end && !(best >= 0 && best_score == kInf); lo += kChunk) {
      const int32_t n = std::min(kChunk, end - lo);
      score(a, lo, n, sc, bonus);
      for (int32_t i = 0; i < n; ++i) {
        const int32_t ch = lo + i;
        const int32_t f = in_flight[ch];
        if ((flags[ch] & DEAD) != 0 || (f > 0 && num_children[ch] == 0)) continue;  // ineligible
        double s = sc[i];
        if (rule == MCTSR) {
          if (std::isnan(q_backed[ch])) s = fp;
        } else if ((visits[ch] | f) == 0) {  // N == 0 (both counts are >= 0)
          s = rule == UCT ? fp : fp + bonus[i];
        }
        if (best < 0 || s > best_score) {
          best = ch;
          best_score = s;
          if (s == kInf) break;
        }
      }
    }
    if (best < 0) return false;
    node = best;
  }
  if (in_flight[node] > 0) return false;
  leaf = node;
  return true;
}

void Forest::select(const std::vector<int64_t>& roots, int64_t k, const RuleOverride* ov,
                    std::vector<int64_t>& leaves, std::vector<int64_t>& owner) {
  if (k < 0) fail("select: k must be >= 0, got " + id_str(k));
  for (int64_t r : roots) {
    check_root(r, "select");
    if (flags[r] & TERMINAL) fail("select: root " + id_str(r) + " is terminal (its whole tree is finished)");
    if (flags[r] & INVALID) fail("select: root " + id_str(r) + " is invalid");
    if (flags[r] & EXHAUSTED)
      fail("select: root " + id_str(r) + " is exhausted (every child below it is terminal or invalid)");
    if (ov) check_params(ov->apply(params_of_root(static_cast<int32_t>(r))));
  }
  leaves.reserve(leaves.size() + roots.size() * static_cast<size_t>(std::min<int64_t>(k, 64)));
  for (size_t i = 0; i < roots.size(); ++i) {
    const int32_t r = static_cast<int32_t>(roots[i]);
    const RuleParams rp = ov ? ov->apply(params_of_root(r)) : params_of_root(r);
    for (int64_t j = 0; j < k; ++j) {
      int32_t leaf;
      if (!descend(r, rp, leaf)) break;  // nothing changed: the next try would fail too
      for (int32_t n = leaf; n != NO_PARENT; n = parent[n]) ++in_flight[n];
      flags[leaf] |= PENDING;
      leaves.push_back(leaf);
      owner.push_back(static_cast<int64_t>(i));
    }
  }
}

// ---------------------------------------------------------------- expand, add_children, release

std::vector<int64_t> Forest::expand(const std::vector<int64_t>& leaves, const std::vector<int64_t>& counts,
                                    const std::vector<double>* priors, const std::vector<int64_t>* reserve) {
  return make_children(leaves, counts, priors, reserve, false, "expand");
}

std::vector<int64_t> Forest::add_children(const std::vector<int64_t>& nodes, const std::vector<int64_t>& counts,
                                          const std::vector<double>* priors, const std::vector<int64_t>* reserve) {
  return make_children(nodes, counts, priors, reserve, true, "add_children");
}

void Forest::clear_exhausted_up(int32_t node) {
  // EXHAUSTED means "every born child is dead": a node that gains a live child is no longer,
  // and neither is each exhausted ancestor above it, until one that stays dead.
  for (int32_t n = node; n != NO_PARENT && (flags[n] & EXHAUSTED); n = parent[n]) {
    flags[n] &= static_cast<uint8_t>(~EXHAUSTED);
    if (flags[n] & DEAD) break;
  }
}

std::vector<int64_t> Forest::make_children(const std::vector<int64_t>& nodes, const std::vector<int64_t>& counts,
                                           const std::vector<double>* priors, const std::vector<int64_t>* reserve,
                                           bool append, const char* what) {
  const std::string w(what);
  if (nodes.size() != counts.size())
    fail(w + ": " + (append ? "nodes" : "leaves") + " and counts differ in length (" + std::to_string(nodes.size()) +
         " vs " + std::to_string(counts.size()) + ")");
  if (reserve && reserve->size() != nodes.size())
    fail(w + ": reserve has length " + std::to_string(reserve->size()) + " but there are " +
         std::to_string(nodes.size()) + " nodes");
  int64_t total = 0;
  std::vector<int64_t> res_of(nodes.size(), 0);  // slots of the block a node without one gets
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t id = nodes[i];
    check_id(id, what);
    const int64_t cnt = counts[i];
    const auto at = [i] { return "[" + std::to_string(i) + "]"; };  // built only for a message
    if (cnt < 0) fail(w + ": counts" + at() + " is negative (" + id_str(cnt) + ")");
    if (cnt > MAX_CHILDREN) fail(w + ": counts" + at() + " = " + id_str(cnt) + " exceeds " + id_str(MAX_CHILDREN));
    int64_t res = reserve ? (*reserve)[i] : cnt;
    if (!reserve && append && cnt > 0 && first_child[id] == NO_PARENT) {
      // add_children's default: room for the tree's max_children (the stop rule's limit)
      int32_t root = static_cast<int32_t>(id);
      while (parent[root] != NO_PARENT) root = parent[root];
      res = std::max<int64_t>(cnt, params_of_root(root).max_children);
    }
    res_of[i] = res;
    if (res < cnt) fail(w + ": reserve" + at() + " = " + id_str(res) + " is less than counts" + at() + " = " + id_str(cnt));
    if (res > MAX_CHILDREN) fail(w + ": reserve" + at() + " = " + id_str(res) + " exceeds " + id_str(MAX_CHILDREN));
    const uint8_t fl = flags[id];
    if (fl & TERMINAL) fail(w + ": node " + id_str(id) + " is terminal");
    if (fl & INVALID) fail(w + ": node " + id_str(id) + " is invalid");
    const bool has_block = first_child[id] != NO_PARENT;
    if (!append) {
      if (fl & EXPANDED) fail(w + ": node " + id_str(id) + " is already expanded (add_children adds more)");
      if (has_block) fail(w + ": node " + id_str(id) + " already has reserved child slots (use add_children)");
    } else if (has_block) {
      const int32_t left = unborn_after(static_cast<int32_t>(id));
      if (cnt > left)
        fail(w + ": node " + id_str(id) + " has " + std::to_string(left) + " unborn child slot(s) left, counts" + at() +
             " = " + id_str(cnt) + " (expand it with a larger reserve= to keep room for later children)");
      continue;
    }
    if (res > 0 && depth[id] >= MAX_DEPTH)
      fail(w + ": node " + id_str(id) + " is at the maximum depth " + id_str(MAX_DEPTH));
    total += cnt;
  }
  if (append) {
    total = 0;
    for (int64_t c : counts) total += c;
  }
  check_distinct(nodes, what, append ? "nodes" : "leaves");
  if (priors) {
    if (static_cast<int64_t>(priors->size()) != total)
      fail(w + ": priors has length " + std::to_string(priors->size()) + " but counts sum to " + id_str(total));
    for (size_t j = 0; j < priors->size(); ++j) {
      const double p = (*priors)[j];
      if (!std::isfinite(p) || p < 0 || p > static_cast<double>(FLT_MAX))
        fail(w + ": priors[" + std::to_string(j) + "] = " + std::to_string(p) +
             " is not a finite number in [0, FLT_MAX]");
    }
  }
  // Blocks for the nodes that have none, in the order given.
  const int64_t old_size = size_;
  int64_t top = size_;
  std::vector<std::pair<int64_t, int64_t>> taken;
  std::vector<int64_t> block(nodes.size(), -1);
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (first_child[nodes[i]] != NO_PARENT) continue;
    if (res_of[i] > 0) block[i] = take(res_of[i], top, taken);
  }
  commit_top(top, taken);
  // Fresh blocks: every slot starts as a fresh node, the columns that are the same for all
  // in one pass over the new top (blocks there are contiguous, in order) plus one per block
  // taken from the free ranges.
  if (top > old_size) fill_fresh(static_cast<size_t>(old_size), static_cast<size_t>(top - old_size));
  for (const auto& t : taken) fill_fresh(static_cast<size_t>(t.first), static_cast<size_t>(t.second));
  std::vector<int64_t> out(static_cast<size_t>(total));
  size_t j = 0;  // index into out / priors
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t id = nodes[i];
    const size_t cnt = static_cast<size_t>(counts[i]);
    size_t lo;  // first slot to be born
    if (block[i] >= 0) {
      const size_t res = static_cast<size_t>(res_of[i]);
      lo = static_cast<size_t>(block[i]);
      first_child[id] = static_cast<int32_t>(lo);
      std::fill_n(parent.p + lo, res, static_cast<int32_t>(id));
      std::fill_n(depth.p + lo, res, static_cast<uint16_t>(depth[id] + 1));
      if (res > cnt) {
        std::fill_n(flags.p + lo + cnt, res - cnt, uint8_t(UNBORN));
        std::fill_n(prior.p + lo + cnt, res - cnt, 0.0f);
      }
    } else {
      if (cnt == 0) continue;
      lo = static_cast<size_t>(first_child[id]) + num_children[id];
      std::fill_n(flags.p + lo, cnt, uint8_t(0));
    }
    if (cnt == 0) continue;
    num_children[id] = static_cast<uint16_t>(num_children[id] + cnt);
    flags[id] |= EXPANDED;
    if (flags[id] & EXHAUSTED) clear_exhausted_up(static_cast<int32_t>(id));
    if (priors) {
      const double* src = priors->data() + j;
      float* dst = prior.p + lo;
      for (size_t c = 0; c < cnt; ++c) dst[c] = static_cast<float>(src[c]);
    } else {
      std::fill_n(prior.p + lo, cnt, static_cast<float>(1.0 / static_cast<double>(cnt)));
    }
    for (size_t c = 0; c < cnt; ++c) out[j + c] = static_cast<int64_t>(lo + c);
    j += cnt;
  }
  live_ += total;
  return out;
}

void Forest::release(const std::vector<int64_t>& roots) {
  for (int64_t r : roots) {
    check_root(r, "release");
    if (in_flight[r] > 0)
      fail("release: root " + id_str(r) + " has " + std::to_string(in_flight[r]) +
           " selection(s) in flight (backprop or cancel them first)");
  }
  check_distinct(roots, "release", "roots");
  std::vector<int32_t> stack;
  std::vector<std::pair<int64_t, int64_t>> ranges;  // slots to free
  int64_t released = 0;
  for (int64_t r : roots) {
    stack.assign(1, static_cast<int32_t>(r));
    ranges.emplace_back(r, 1);
    while (!stack.empty()) {
      const int32_t n = stack.back();
      stack.pop_back();
      ++released;
      if (first_child[n] == NO_PARENT) continue;
      const int32_t first = first_child[n], born = num_children[n];
      ranges.emplace_back(first, static_cast<int64_t>(born) + unborn_after(n));
      for (int32_t c = first; c < first + born; ++c) stack.push_back(c);
    }
    rules_.erase(static_cast<int32_t>(r));
  }
  // Blocks allocated by one call lie side by side: merge touching ranges first (fewer, longer
  // fills and free-range updates).
  std::sort(ranges.begin(), ranges.end());
  size_t m = 0;
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[m].first + ranges[m].second == ranges[i].first) ranges[m].second += ranges[i].second;
    else ranges[++m] = ranges[i];
  }
  if (!ranges.empty()) ranges.resize(m + 1);
  for (const auto& rg : ranges) {
    const size_t lo = static_cast<size_t>(rg.first), n = static_cast<size_t>(rg.second);
    fill_fresh(lo, n);
    std::fill_n(parent.p + lo, n, NO_PARENT);
    std::fill_n(depth.p + lo, n, uint16_t(0));
    std::fill_n(prior.p + lo, n, 0.0f);
    std::fill_n(flags.p + lo, n, uint8_t(RELEASED));
  }
  for (const auto& rg : ranges) free_range(rg.first, rg.second);
  live_ -= released;
}

// ---------------------------------------------------------------- backprop, cancel

void Forest::check_pending(const std::vector<int64_t>& leaves, const char* what) {
  for (int64_t id : leaves) {
    check_id(id, what);
    if (!(flags[id] & PENDING))
      fail(std::string(what) + ": node " + id_str(id) +
           " has no selection in flight (it was not returned by select, or was already backed up or cancelled)");
  }
  check_distinct(leaves, what, "leaves");
}

void Forest::backprop(const std::vector<int64_t>& leaves, const std::vector<double>& values) {
  if (leaves.size() != values.size())
    fail("backprop: leaves and values differ in length (" + std::to_string(leaves.size()) + " vs " +
         std::to_string(values.size()) + ")");
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i]))
      fail("backprop: values[" + std::to_string(i) + "] = " + std::to_string(values[i]) + " is not finite");
  check_pending(leaves, "backprop");
  for (size_t i = 0; i < leaves.size(); ++i) {
    int32_t n = static_cast<int32_t>(leaves[i]);
    const double v = values[i];
    flags[n] &= static_cast<uint8_t>(~PENDING);
    for (; n != NO_PARENT; n = parent[n]) {
      ++visits[n];
      value_sum[n] += v;
      --in_flight[n];
    }
  }
}

void Forest::cancel(const std::vector<int64_t>& leaves) {
  check_pending(leaves, "cancel");
  for (int64_t id : leaves) {
    int32_t n = static_cast<int32_t>(id);
    flags[n] &= static_cast<uint8_t>(~PENDING);
    for (; n != NO_PARENT; n = parent[n]) --in_flight[n];
  }
}

void Forest::backup(const std::vector<int64_t>& nodes, const std::vector<double>& values) {
  if (nodes.size() != values.size())
    fail("backup: nodes and values differ in length (" + std::to_string(nodes.size()) + " vs " +
         std::to_string(values.size()) + ")");
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i]))
      fail("backup: values[" + std::to_string(i) + "] = " + std::to_string(values[i]) + " is not finite");
  for (int64_t id : nodes) check_id(id, "backup");
  for (size_t i = 0; i < nodes.size(); ++i) {
    const double v = values[i];
    for (int32_t n = static_cast<int32_t>(nodes[i]); n != NO_PARENT; n = parent[n]) {
      ++visits[n];
      value_sum[n] += v;
    }
  }
}

// ---------------------------------------------------------------- terminal / invalid

void Forest::propagate_dead(int32_t node) {
  for (int32_t p = parent[node]; p != NO_PARENT; p = parent[p]) {
    if (flags[p] & DEAD) break;
    const int32_t end = first_child[p] + static_cast<int32_t>(num_children[p]);
    for (int32_t ch = first_child[p]; ch < end; ++ch)
      if (!(flags[ch] & DEAD)) return;
    flags[p] |= EXHAUSTED;
  }
}

void Forest::mark(const std::vector<int64_t>& nodes, uint8_t flag) {
  const char* what = flag == TERMINAL ? "mark_terminal" : "mark_invalid";
  for (int64_t id : nodes) check_id(id, what);
  for (int64_t id : nodes) {
    flags[id] |= flag;
    propagate_dead(static_cast<int32_t>(id));
  }
}

// ---------------------------------------------------------------- MCTSr rewards

void Forest::refresh_q(int32_t node) {
  for (int32_t n = node; n != NO_PARENT; n = parent[n]) {
    const bool has_own = reward_count[n] > 0;
    double own = 0.0;
    if (has_own)
      own = 0.5 * (static_cast<double>(reward_min[n]) +
                   static_cast<double>(reward_sum[n]) / static_cast<double>(reward_count[n]));
    bool has_best = false;
    double best = 0.0;
    const int32_t end = first_child[n] + static_cast<int32_t>(num_children[n]);
    for (int32_t ch = first_child[n]; ch < end; ++ch) {
      const float qf = q_backed[ch];
      if (std::isnan(qf)) continue;
      const double qc = static_cast<double>(qf);
      if (!has_best || qc > best) {
        best = qc;
        has_best = true;
      }
    }
    double q;
    if (has_own && has_best) q = 0.5 * (own + best);
    else if (has_own) q = own;
    else if (has_best) q = best;
    else q = std::numeric_limits<double>::quiet_NaN();
    q_backed[n] = static_cast<float>(q);
  }
}

void Forest::add_rewards(const std::vector<int64_t>& nodes, const std::vector<double>& rewards) {
  if (nodes.size() != rewards.size())
    fail("add_rewards: nodes and rewards differ in length (" + std::to_string(nodes.size()) + " vs " +
         std::to_string(rewards.size()) + ")");
  for (size_t i = 0; i < nodes.size(); ++i) {
    check_id(nodes[i], "add_rewards");
    const double r = rewards[i];
    if (!std::isfinite(r) || std::fabs(r) > MAX_ABS_REWARD)
      fail("add_rewards: rewards[" + std::to_string(i) + "] = " + std::to_string(r) +
           " is not a finite number in [-1e30, 1e30]");
  }
  std::vector<int64_t> sorted(nodes);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
    if (static_cast<int64_t>(reward_count[sorted[i]]) + static_cast<int64_t>(j - i) > MAX_REWARDS)
      fail("add_rewards: node " + id_str(sorted[i]) + " would hold more than " + id_str(MAX_REWARDS) +
           " reward samples");
    i = j;
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t id = nodes[i];
    const float rf = static_cast<float>(rewards[i]);
    if (rf < reward_min[id]) reward_min[id] = rf;
    reward_sum[id] = reward_sum[id] + rf;
    ++reward_count[id];
    refresh_q(static_cast<int32_t>(id));
  }
}

// ---------------------------------------------------------------- reads

std::vector<int64_t> Forest::children(int64_t node) const {
  check_id(node, "children");
  std::vector<int64_t> out(num_children[node]);
  for (size_t i = 0; i < out.size(); ++i) out[i] = first_child[node] + static_cast<int64_t>(i);
  return out;
}

std::vector<int64_t> Forest::path(int64_t node) const {
  check_id(node, "path");
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(depth[node]) + 1);
  for (int32_t n = static_cast<int32_t>(node); n != NO_PARENT; n = parent[n]) out.push_back(n);
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<int64_t> Forest::root_of(const std::vector<int64_t>& nodes) const {
  for (int64_t id : nodes) check_id(id, "root_of");
  std::vector<int64_t> out(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    int32_t n = static_cast<int32_t>(nodes[i]);
    while (parent[n] != NO_PARENT) n = parent[n];
    out[i] = n;
  }
  return out;
}

std::vector<double> Forest::q(const std::vector<int64_t>& nodes) const {
  for (int64_t id : nodes) check_id(id, "q");
  std::vector<double> out(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t id = nodes[i];
    out[i] = visits[id] > 0 ? value_sum[id] / static_cast<double>(visits[id])
                            : std::numeric_limits<double>::quiet_NaN();
  }
  return out;
}

std::vector<int64_t> Forest::slots_left(const std::vector<int64_t>& nodes) const {
  for (int64_t id : nodes) check_id(id, "slots_left");
  std::vector<int64_t> out(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) out[i] = unborn_after(static_cast<int32_t>(nodes[i]));
  return out;
}

int64_t Forest::best_child(int64_t node, bool by_q) const {
  check_id(node, "best_child");
  int32_t root = static_cast<int32_t>(node);
  while (parent[root] != NO_PARENT) root = parent[root];
  const bool mcts_r = params_of_root(root).rule == MCTSR;
  int64_t best = -1;
  double best_v = 0.0;
  const int32_t end = first_child[node] + static_cast<int32_t>(num_children[node]);
  for (int32_t ch = first_child[node]; ch < end; ++ch) {
    if (flags[ch] & INVALID) continue;
    double v;
    if (!by_q) {
      v = static_cast<double>(visits[ch]);
    } else if (mcts_r) {
      if (std::isnan(q_backed[ch])) continue;
      v = static_cast<double>(q_backed[ch]);
    } else {
      if (visits[ch] == 0) continue;
      v = value_sum[ch] / static_cast<double>(visits[ch]);
    }
    if (best < 0 || v > best_v) {
      best = ch;
      best_v = v;
    }
  }
  return best;
}

std::vector<int64_t> Forest::subtree(int64_t root) const {
  check_root(root, "export_tree");
  std::vector<int64_t> order;
  order.push_back(root);
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t n = order[i];
    const int64_t end = first_child[n] + static_cast<int64_t>(num_children[n]);
    for (int64_t ch = first_child[n]; ch < end; ++ch) order.push_back(ch);
  }
  return order;
}

// ---------------------------------------------------------------- import

int64_t Forest::import_tree(const TreeArrays& a) {
  const int64_t n = a.n;
  if (n < 1) fail("import_tree: the tree has no nodes");
  check_params(a.params);
  if (a.parent[0] != NO_PARENT) fail("import_tree: parent[0] must be -1 (node 0 is the root)");
  if (a.depth[0] != 0) fail("import_tree: depth[0] must be 0");
  // Expected children ranges from the parent column.
  std::vector<int64_t> first(static_cast<size_t>(n), -1), count(static_cast<size_t>(n), 0);
  for (int64_t i = 1; i < n; ++i) {
    const int64_t p = a.parent[i];
    if (p < 0 || p >= i)
      fail("import_tree: parent[" + id_str(i) + "] = " + id_str(p) + " must lie in [0, " + id_str(i) + ")");
    if (first[p] < 0) first[p] = i;
    if (i - first[p] != count[p])
      fail("import_tree: the children of node " + id_str(p) + " are not contiguous");
    ++count[p];
    if (a.depth[i] != a.depth[p] + 1)
      fail("import_tree: depth[" + id_str(i) + "] must be depth[parent] + 1");
  }
  for (int64_t i = 0; i < n; ++i) {
    const auto at = [i] { return "[" + id_str(i) + "]"; };  // built only for a message
    if (a.num_children[i] != count[i])
      fail("import_tree: num_children" + at() + " = " + id_str(a.num_children[i]) + " but the parent column gives " +
           id_str(count[i]));
    if (a.first_child[i] != (count[i] ? first[i] : -1))
      fail("import_tree: first_child" + at() + " = " + id_str(a.first_child[i]) + " disagrees with the parent column");
    if (a.flags[i] & ~EXPORTED_FLAGS) fail("import_tree: flags" + at() + " has unknown bits");
    if (((a.flags[i] & EXPANDED) != 0) != (count[i] > 0))
      fail("import_tree: flags" + at() + ": EXPANDED must be set exactly when the node has children");
    if ((a.flags[i] & EXHAUSTED) && count[i] == 0)
      fail("import_tree: flags" + at() + ": EXHAUSTED needs children (it means every child is dead)");
    if (a.visits[i] < 0) fail("import_tree: visits" + at() + " is negative");
    if (!std::isfinite(a.value_sum[i])) fail("import_tree: value_sum" + at() + " is not finite");
    if (!std::isfinite(a.prior[i]) || a.prior[i] < 0) fail("import_tree: prior" + at() + " is not finite and >= 0");
    if (a.reward_count[i] > 0 && (!std::isfinite(a.reward_min[i]) || !std::isfinite(a.reward_sum[i])))
      fail("import_tree: reward_min/reward_sum" + at() + " are not finite");
    if (std::isinf(a.q_backed[i])) fail("import_tree: q_backed" + at() + " is infinite");
  }
  int64_t top = size_;
  std::vector<std::pair<int64_t, int64_t>> taken;
  const int64_t base = take(n, top, taken);  // one contiguous block: local id i -> base + i
  commit_top(top, taken);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = base + i;
    parent[id] = i == 0 ? NO_PARENT : static_cast<int32_t>(base + a.parent[i]);
    first_child[id] = a.first_child[i] < 0 ? NO_PARENT : static_cast<int32_t>(base + a.first_child[i]);
    num_children[id] = a.num_children[i];
    depth[id] = a.depth[i];
    flags[id] = a.flags[i];
    visits[id] = a.visits[i];
    in_flight[id] = 0;
    value_sum[id] = a.value_sum[i];
    prior[id] = a.prior[i];
    reward_min[id] = a.reward_min[i];
    reward_sum[id] = a.reward_sum[i];
    reward_count[id] = a.reward_count[i];
    q_backed[id] = a.q_backed[i];
  }
  live_ += n;
  rules_[static_cast<int32_t>(base)] = a.params;
  return base;
}

}  // namespace rstar
