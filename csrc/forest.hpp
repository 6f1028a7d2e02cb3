// rstar tree core: one arena holding the nodes of many MCTS trees.
//
// Layout (struct of arrays, node id = index into every column; ids never
// change when the arena grows). An arena slot is in one of three states:
//   live      a node of some tree (flags has neither UNBORN nor RELEASED)
//   unborn    a reserved child slot of a live node, not a child yet (UNBORN)
//   released  freed by release(), waiting for reuse (RELEASED)
// Only live slots are nodes: every call taking ids refuses the other two.
//
//   column        type     bytes  invariant / units (live nodes unless said)
//   parent        int32    4      -1 (NO_PARENT) for a root, else the parent's id (any order: after
//                                 reuse a child may have a lower id than its parent); unborn: the
//                                 owning node; released: -1
//   first_child   int32    4      first slot of the node's child block, -1 while it has none. The
//                                 block is contiguous: born children first_child ..
//                                 first_child+num_children-1, in creation order, then the unborn
//                                 slots (UNBORN, parent = this node) still free for add_children
//   num_children  uint16   2      born children; > 0 iff flags & EXPANDED (a node may hold a block
//                                 of only unborn slots: first_child >= 0, num_children 0, a leaf)
//   depth         uint16   2      0 for a root, depth(parent) + 1 otherwise (unborn slots too)
//   flags         uint8    1      EXPANDED=1 TERMINAL=2 INVALID=4 PENDING=8 EXHAUSTED=16
//                                 UNBORN=32 RELEASED=64 (see below)
//   visits        int32    4      N: completed back-ups through this node
//   in_flight     int32    4      virtual-loss count: outstanding selections whose path holds this node
//   value_sum     float64  8      W: sum of backed-up values
//   prior         float32  4      P (PUCT); uniform 1/count of the call that made it unless given
//   reward_min    float32  4      MCTSr: min of the reward samples (+inf when none)
//   reward_sum    float32  4      MCTSr: sum of the reward samples (exact for integer rewards < 2^24)
//   reward_count  uint16   2      MCTSr: number of reward samples
//   q_backed      float32  4      MCTSr backed-up quality, NaN while unrated (see below)
//                         ---
//                          47 bytes per node
// Unborn and released slots hold fixed contents: parent/depth as above,
// first_child -1, flags UNBORN or RELEASED, prior 0, everything else as a
// fresh node (0 counts, reward_min +inf, q_backed NaN).
//
// Flags:
//   TERMINAL   set by mark_terminal: a step that gives an answer.
//   INVALID    set by mark_invalid.
//   EXHAUSTED  derived: every born child is dead (DEAD = TERMINAL | INVALID | EXHAUSTED);
//              set upward by mark_* (stopping at a node already dead), cleared upward
//              by add_children giving such a node a new (live) child.
//   PENDING    endpoint of an outstanding selection, cleared by backprop/cancel;
//              in_flight[root] > 0 iff some node of the tree is PENDING.
// Dead nodes are never selected; selecting from a dead root raises.
//
// Allocation: released slots form a set of free ranges (coalesced, ordered by
// id). A request for n contiguous slots (a root: 1; a child block: its reserve;
// an import: the whole tree) takes the first range by id that holds n (its
// lowest n slots), else n fresh slots at the top (num_nodes grows). Requests
// are served in call order (roots, then leaves in the order given). The
// reference implementation allocates identically, so ids agree.
//
// Selection scores (child c of node p; f = in_flight, N_eff = visits + f,
// W_eff = value_sum - virtual_loss * f, Np = visits[p] + in_flight[p] read
// before the current descent adds its own virtual loss):
//   UCT   : N_eff == 0 -> first_play;  else W_eff/N_eff + c * sqrt(ln(max(Np, 1)) / N_eff)
//   PUCT  : Q = (N_eff == 0 ? first_play : W_eff/N_eff);  Q + c * P * sqrt(Np) / (1 + N_eff)
//   MCTSR : q_backed is NaN -> first_play;  else q_backed + c * sqrt(ln(Np + 1) / (N_eff + eps))
//           (virtual loss acts through N only: MCTSr's Q does not come from W)
// The highest score wins; ties go to the lowest child index (strict >).
// Eligible children: not dead, and not a childless node in flight.
// Stopping early (max_children K > 0, any rule): the descent returns a node
// that has children when it is not PENDING and expandable: num_children < K
// and no child has q_backed > the node's q_backed (NaN compares false, so a
// NaN never beats and a NaN node is beaten by nobody).
//
// MCTSr quality, maintained eagerly by add_rewards for the node and every
// ancestor, so it is current after every call (backprop has nothing to add):
//   own(n)      = 0.5 * (reward_min + reward_sum / reward_count)   if reward_count > 0
//   best(n)     = max over born children with a non-NaN q_backed
//   q_backed(n) = 0.5 * (own + best) | own | best | NaN   (both / only own / only best / neither)
// all in float64, stored rounded to float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace rstar {

enum Rule : int32_t { UCT = 0, PUCT = 1, MCTSR = 2 };

enum Flag : uint8_t {
  EXPANDED = 1,
  TERMINAL = 2,
  INVALID = 4,
  PENDING = 8,
  EXHAUSTED = 16,
  UNBORN = 32,
  RELEASED = 64,
  SCRATCH = 128,  // transient, used only inside one call (duplicate detection)
};
constexpr uint8_t DEAD = TERMINAL | INVALID | EXHAUSTED;
constexpr uint8_t NOT_A_NODE = UNBORN | RELEASED;
constexpr uint8_t EXPORTED_FLAGS = EXPANDED | TERMINAL | INVALID | EXHAUSTED;
constexpr int32_t NO_PARENT = -1;
constexpr int64_t MAX_NODES = 2147483647;  // ids are int32
constexpr int64_t MAX_CHILDREN = 65535;    // num_children is uint16
constexpr int64_t MAX_DEPTH = 65535;       // depth is uint16
constexpr int64_t MAX_REWARDS = 65535;     // reward_count is uint16
constexpr double MAX_ABS_REWARD = 1e30;    // keeps reward_sum finite in float32

constexpr size_t BYTES_PER_NODE =
    sizeof(int32_t) * 2 + sizeof(uint16_t) * 2 + sizeof(uint8_t) + sizeof(int32_t) * 2 +
    sizeof(double) + sizeof(float) * 4 + sizeof(uint16_t);
static_assert(BYTES_PER_NODE == 47, "node layout changed: update the table above");
static_assert(BYTES_PER_NODE <= 48, "the design target is at most 48 bytes per node");
static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE single/double expected");

struct RuleParams {
  int32_t rule = UCT;
  double c = 2.0;
  double first_play = 0.0;  // set from the rule's default at creation
  double eps = 1e-5;
  int32_t max_children = 0;  // > 0: a descent may stop at a node with fewer children (see above)
};

// Per-call change of the rule for select: with RULE set, `params` replace the
// tree's rule entirely; otherwise only the fields whose bit is set do.
struct RuleOverride {
  enum : int { RULE = 1, C = 2, FIRST_PLAY = 4, EPS = 8, MAX_CHILDREN_PARAM = 16 };
  int mask = 0;
  RuleParams params;
  RuleParams apply(const RuleParams& tree) const {
    if (mask & RULE) return params;
    RuleParams p = tree;
    if (mask & C) p.c = params.c;
    if (mask & FIRST_PLAY) p.first_play = params.first_play;
    if (mask & EPS) p.eps = params.eps;
    if (mask & MAX_CHILDREN_PARAM) p.max_children = params.max_children;
    return p;
  }
};

// One column's storage. Views (numpy arrays) hold a shared_ptr to the Buffer
// they were made from, so growth (which swaps in a new Buffer when an old one
// is still shared) never frees memory a view points at.
//
// Large columns reserve address space well beyond their capacity (an anonymous
// MAP_NORESERVE mapping: no memory is committed until a page is first written),
// so growth inside the reservation is a bump of `bytes`: no copy, and every page
// is touched once, by the write that fills it. A Buffer shared with a view is
// never grown in place (the view stays a snapshot); growth then copies.
struct Buffer {
  void* data = nullptr;
  size_t bytes = 0;     // usable now (capacity * element size)
  size_t reserved = 0;  // usable without moving: bytes for malloc'd buffers, the mapping's length for mapped ones
  bool mapped = false;  // data came from mmap (freed with munmap)
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();
};

template <class T>
struct Column {
  std::shared_ptr<Buffer> buf = std::make_shared<Buffer>();
  T* p = nullptr;
  void reserve(size_t cap, size_t used);  // keeps the first `used` elements
  T& operator[](size_t i) { return p[i]; }
  const T& operator[](size_t i) const { return p[i]; }
};

class Forest {
 public:
  explicit Forest(double virtual_loss = 1.0);

  // All methods validate every input before mutating anything and throw
  // std::invalid_argument (ValueError in Python) naming the problem.
  std::vector<int64_t> create_roots(int64_t n, const RuleParams& params);
  void set_rule(const std::vector<int64_t>& roots, const RuleParams& params);
  RuleParams get_rule(int64_t root) const;

  // Appends to leaves/owner. `ov` null: each tree's own rule.
  void select(const std::vector<int64_t>& roots, int64_t k, const RuleOverride* ov,
              std::vector<int64_t>& leaves, std::vector<int64_t>& owner);
  // reserve null: reserve[i] = counts[i]. reserve[i] >= counts[i] slots are allocated per leaf,
  // the first counts[i] born, the rest unborn (for add_children).
  std::vector<int64_t> expand(const std::vector<int64_t>& leaves, const std::vector<int64_t>& counts,
                              const std::vector<double>* priors, const std::vector<int64_t>* reserve = nullptr);
  // Turns the next counts[i] unborn slots of nodes[i] into children (after any it has); a node
  // without a child block is expanded (reserve as in expand).
  std::vector<int64_t> add_children(const std::vector<int64_t>& nodes, const std::vector<int64_t>& counts,
                                    const std::vector<double>* priors, const std::vector<int64_t>* reserve = nullptr);
  // Frees every slot of these trees (nodes and unborn slots) and their rules.
  void release(const std::vector<int64_t>& roots);
  void backprop(const std::vector<int64_t>& leaves, const std::vector<double>& values);
  void cancel(const std::vector<int64_t>& leaves);
  // Adds values along the paths of nodes that were never selected (children evaluated as they
  // are created, e.g. terminal steps found by an expansion): N += 1, W += v up to the root,
  // virtual loss untouched.
  void backup(const std::vector<int64_t>& nodes, const std::vector<double>& values);
  void mark(const std::vector<int64_t>& nodes, uint8_t flag);  // TERMINAL or INVALID
  void add_rewards(const std::vector<int64_t>& nodes, const std::vector<double>& rewards);

  // Reads.
  int64_t num_nodes() const { return size_; }  // slots ever used (high-water mark)
  int64_t num_live() const { return live_; }    // live nodes
  size_t capacity() const { return cap_; }
  std::vector<int64_t> children(int64_t node) const;
  std::vector<int64_t> path(int64_t node) const;
  std::vector<int64_t> root_of(const std::vector<int64_t>& nodes) const;
  std::vector<double> q(const std::vector<int64_t>& nodes) const;
  std::vector<int64_t> slots_left(const std::vector<int64_t>& nodes) const;  // unborn slots per node
  int64_t best_child(int64_t node, bool by_q) const;
  // Breadth-first order following the child blocks (never id order), root first, born children only.
  std::vector<int64_t> subtree(int64_t root) const;

  // Import: arrays in local ids, breadth-first as export writes them (root = 0, parent[i] < i,
  // children contiguous); validated, placed in one contiguous block of slots; returns the root id.
  struct TreeArrays {
    int64_t n = 0;
    const int32_t* parent;
    const int32_t* first_child;
    const uint16_t* num_children;
    const uint16_t* depth;
    const uint8_t* flags;
    const int32_t* visits;
    const double* value_sum;
    const float* prior;
    const float* reward_min;
    const float* reward_sum;
    const uint16_t* reward_count;
    const float* q_backed;
    RuleParams params;
  };
  int64_t import_tree(const TreeArrays& a);

  void check_id(int64_t id, const char* what) const;  // a live node
  void check_root(int64_t id, const char* what) const;
  static void check_params(const RuleParams& p);

  double virtual_loss() const { return vl_; }
  std::mutex& mutex() { return mu_; }

  // Columns (public for the bindings' views and export).
  Column<int32_t> parent, first_child, visits, in_flight;
  Column<uint16_t> num_children, depth, reward_count;
  Column<uint8_t> flags;
  Column<double> value_sum;
  Column<float> prior, reward_min, reward_sum, q_backed;

 private:
  void grow(int64_t extra);  // makes room for `extra` more nodes
  void init_node(int64_t id, int32_t par, uint16_t dep, float pri);
  void fill_fresh(size_t lo, size_t n);   // every column but parent, depth, prior: a fresh node
  int32_t unborn_after(int32_t node) const;  // unborn slots left in the node's block
  // Slot allocation (see the header comment). take() serves one request from the free ranges
  // or the top (bumping `top`, not size_); commit_top() grows the arena to `top`, giving the
  // taken free ranges back if that fails.
  int64_t take(int64_t n, int64_t& top, std::vector<std::pair<int64_t, int64_t>>& taken);
  void commit_top(int64_t top, const std::vector<std::pair<int64_t, int64_t>>& taken);
  void free_range(int64_t lo, int64_t n);
  void check_distinct(const std::vector<int64_t>& ids, const char* what, const char* noun);
  void clear_exhausted_up(int32_t node);
  std::vector<int64_t> make_children(const std::vector<int64_t>& nodes, const std::vector<int64_t>& counts,
                                     const std::vector<double>* priors, const std::vector<int64_t>* reserve,
                                     bool append, const char* what);
  const RuleParams& params_of_root(int32_t root) const;
  bool descend(int32_t root, const RuleParams& rp, int32_t& leaf) const;
  void refresh_q(int32_t node);
  void propagate_dead(int32_t node);
  void check_pending(const std::vector<int64_t>& leaves, const char* what);

  double vl_;
  int64_t size_ = 0;
  int64_t live_ = 0;
  size_t cap_ = 0;
  // Released slots: start -> length, coalesced (no two ranges touch), and the same ranges by
  // length -> starts, so first fit looks at one candidate per distinct length >= n, not every range.
  std::map<int64_t, int64_t> free_;
  std::map<int64_t, std::set<int64_t>> free_by_len_;
  void add_free(int64_t start, int64_t len);
  void drop_free(std::map<int64_t, int64_t>::iterator it);
  std::unordered_map<int32_t, RuleParams> rules_;  // root id -> its tree's rule
  std::mutex mu_;
};

}  // namespace rstar
