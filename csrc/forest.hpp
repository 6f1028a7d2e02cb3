// rstar tree core: one arena holding the nodes of many MCTS trees.
//
// Layout (struct of arrays, node id = index into every column; ids never
// change when the arena grows):
//
//   column        type     bytes  invariant / units
//   parent        int32    4      -1 (NO_PARENT) for a root, else parent id < own id
//   first_child   int32    4      -1 until expanded; children are first_child .. first_child+num_children-1
//   num_children  uint16   2      0 for a leaf; > 0 iff flags & EXPANDED
//   depth         uint16   2      0 for a root, depth(parent) + 1 otherwise
//   flags         uint8    1      EXPANDED=1 TERMINAL=2 INVALID=4 PENDING=8 (PENDING: endpoint
//                                 of an outstanding selection, cleared by backprop/cancel)
//   visits        int32    4      N: completed back-ups through this node
//   in_flight     int32    4      virtual-loss count: outstanding selections whose path holds this node
//   value_sum     float64  8      W: sum of backed-up values
//   prior         float32  4      P (PUCT); uniform 1/count unless given
//   reward_min    float32  4      MCTSr: min of the reward samples (+inf when none)
//   reward_sum    float32  4      MCTSr: sum of the reward samples (exact for integer rewards < 2^24)
//   reward_count  uint16   2      MCTSr: number of reward samples
//   q_backed      float32  4      MCTSr backed-up quality, NaN while unrated (see below)
//                         ---
//                          47 bytes per node
//
// Selection scores (child c of node p; f = in_flight, N_eff = visits + f,
// W_eff = value_sum - virtual_loss * f, Np = visits[p] + in_flight[p] read
// before the current descent adds its own virtual loss):
//   UCT   : N_eff == 0 -> first_play;  else W_eff/N_eff + c * sqrt(ln(max(Np, 1)) / N_eff)
//   PUCT  : Q = (N_eff == 0 ? first_play : W_eff/N_eff);  Q + c * P * sqrt(Np) / (1 + N_eff)
//   MCTSR : q_backed is NaN -> first_play;  else q_backed + c * sqrt(ln(Np + 1) / (N_eff + eps))
//           (virtual loss acts through N only: MCTSr's Q does not come from W)
// The highest score wins; ties go to the lowest child index (strict >).
//
// MCTSr quality, maintained eagerly by add_rewards for the node and every
// ancestor, so it is current after every call (backprop has nothing to add):
//   own(n)      = 0.5 * (reward_min + reward_sum / reward_count)   if reward_count > 0
//   best(n)     = max over children with a non-NaN q_backed
//   q_backed(n) = 0.5 * (own + best) | own | best | NaN   (both / only own / only best / neither)
// all in float64, stored rounded to float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
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
  SCRATCH = 128,  // transient, used only inside one call (duplicate detection)
};
constexpr uint8_t DEAD = TERMINAL | INVALID;
constexpr uint8_t EXPORTED_FLAGS = EXPANDED | TERMINAL | INVALID;
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
static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE single/double expected");

struct RuleParams {
  int32_t rule = UCT;
  double c = 2.0;
  double first_play = 0.0;  // set from the rule's default at creation
  double eps = 1e-5;
};

// Per-call change of the rule for select: with RULE set, `params` replace the
// tree's rule entirely; otherwise only the fields whose bit is set do.
struct RuleOverride {
  enum : int { RULE = 1, C = 2, FIRST_PLAY = 4, EPS = 8 };
  int mask = 0;
  RuleParams params;
  RuleParams apply(const RuleParams& tree) const {
    if (mask & RULE) return params;
    RuleParams p = tree;
    if (mask & C) p.c = params.c;
    if (mask & FIRST_PLAY) p.first_play = params.first_play;
    if (mask & EPS) p.eps = params.eps;
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
  std::vector<int64_t> expand(const std::vector<int64_t>& leaves, const std::vector<int64_t>& counts,
                              const std::vector<double>* priors);
  void backprop(const std::vector<int64_t>& leaves, const std::vector<double>& values);
  void cancel(const std::vector<int64_t>& leaves);
  // Adds values along the paths of nodes that were never selected (children evaluated as they
  // are created, e.g. terminal steps found by an expansion): N += 1, W += v up to the root,
  // virtual loss untouched.
  void backup(const std::vector<int64_t>& nodes, const std::vector<double>& values);
  void mark(const std::vector<int64_t>& nodes, uint8_t flag);  // TERMINAL or INVALID
  void add_rewards(const std::vector<int64_t>& nodes, const std::vector<double>& rewards);

  // Reads.
  int64_t num_nodes() const { return size_; }
  size_t capacity() const { return cap_; }
  std::vector<int64_t> children(int64_t node) const;
  std::vector<int64_t> path(int64_t node) const;
  std::vector<int64_t> root_of(const std::vector<int64_t>& nodes) const;
  std::vector<double> q(const std::vector<int64_t>& nodes) const;
  int64_t best_child(int64_t node, bool by_q) const;
  std::vector<int64_t> subtree(int64_t root) const;  // breadth-first order, root first

  // Import: arrays in local ids (root = 0); validated, appended; returns new root id.
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

  void check_id(int64_t id, const char* what) const;
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
  const RuleParams& params_of_root(int32_t root) const;
  bool descend(int32_t root, const RuleParams& rp, int32_t& leaf) const;
  void refresh_q(int32_t node);
  void propagate_dead(int32_t node);
  void check_pending(const std::vector<int64_t>& leaves, const char* what);

  double vl_;
  int64_t size_ = 0;
  size_t cap_ = 0;
  std::unordered_map<int32_t, RuleParams> rules_;  // root id -> its tree's rule
  std::mutex mu_;
};

}  // namespace rstar
