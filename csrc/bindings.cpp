// pybind11 face of the tree core (module rstar._core).
//
// Every call: convert and copy the inputs while holding the GIL (so no other
// thread can change them under us), then release the GIL, take the forest's
// mutex, validate everything, mutate, and drop the mutex before the GIL is
// taken back (so a thread holding the mutex never waits for the GIL).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>

#include "forest.hpp"

namespace py = pybind11;
using rstar::Forest;
using rstar::RuleOverride;
using rstar::RuleParams;

namespace {

template <class Fn>
auto locked(Forest& f, Fn&& fn) {
  py::gil_scoped_release release;
  std::lock_guard<std::mutex> lock(f.mutex());
  return fn();
}

// Deliberately leaked: a static py::object would be destroyed by a C++ exit handler after the
// interpreter has finalized, and crash the process on exit.
py::module_& numpy() {
  static py::module_* np = new py::module_(py::module_::import("numpy"));
  return *np;
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Python int, list/tuple of ints, or a 1-D numpy int64 array -> int64 vector.
std::vector<int64_t> to_ids(py::handle obj, const char* name) {
  if (py::isinstance<py::bool_>(obj))
    throw py::type_error(std::string(name) + " must be int64 ids, got a bool");
  if (py::isinstance<py::int_>(obj)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
    if (overflow) throw py::value_error(std::string(name) + " is out of the int64 range");
    return {static_cast<int64_t>(v)};
  }
  py::array arr;
  if (py::isinstance<py::array>(obj)) {
    arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().equal(py::dtype::of<int64_t>()))
      throw py::type_error(std::string(name) + " must be an int64 array, got dtype " + dtype_str(arr));
  } else if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj) ||
             py::hasattr(obj, "dtype")) {  // lists, tuples, numpy integer scalars
    py::array conv = numpy().attr("asarray")(obj);
    const char kind = conv.dtype().kind();
    if (conv.size() == 0) return {};
    if (kind != 'i' && kind != 'u')
      throw py::type_error(std::string(name) + " must hold integers, got dtype " + dtype_str(conv));
    arr = conv.attr("astype")(py::dtype::of<int64_t>());
    if (arr.ndim() == 0) arr = arr.attr("reshape")(1);
  } else {
    throw py::type_error(std::string(name) + " must be an int64 numpy array, a list of ints or an int, got " +
                         py::str(py::type::of(obj)).cast<std::string>());
  }
  if (arr.ndim() != 1)
    throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(arr.ndim()) + " dimensions");
  auto a = py::reinterpret_borrow<py::array_t<int64_t>>(arr).unchecked<1>();
  std::vector<int64_t> out(static_cast<size_t>(a.shape(0)));
  for (py::ssize_t i = 0; i < a.shape(0); ++i) out[static_cast<size_t>(i)] = a(i);
  return out;
}

// Python number, list/tuple of numbers, or a 1-D float16/32/64 array -> double vector.
std::vector<double> to_floats(py::handle obj, const char* name) {
  if (py::isinstance<py::bool_>(obj))
    throw py::type_error(std::string(name) + " must be float64 values, got a bool");
  if (py::isinstance<py::float_>(obj) || py::isinstance<py::int_>(obj)) return {obj.cast<double>()};
  py::array arr;
  if (py::isinstance<py::array>(obj)) {
    arr = py::reinterpret_borrow<py::array>(obj);
    if (arr.dtype().kind() != 'f' || arr.dtype().itemsize() > 8)
      throw py::type_error(std::string(name) + " must be a float64 (or float32) array, got dtype " + dtype_str(arr));
  } else if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj) || py::hasattr(obj, "dtype")) {
    arr = numpy().attr("asarray")(obj);
    const char kind = arr.dtype().kind();
    if (arr.size() == 0) return {};
    if (kind != 'f' && kind != 'i' && kind != 'u')
      throw py::type_error(std::string(name) + " must hold numbers, got dtype " + dtype_str(arr));
    if (arr.ndim() == 0) arr = arr.attr("reshape")(1);
  } else {
    throw py::type_error(std::string(name) + " must be a float64 numpy array, a list of numbers or a number, got " +
                         py::str(py::type::of(obj)).cast<std::string>());
  }
  if (arr.ndim() != 1)
    throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(arr.ndim()) + " dimensions");
  if (!arr.dtype().equal(py::dtype::of<double>())) arr = arr.attr("astype")(py::dtype::of<double>());
  auto a = py::reinterpret_borrow<py::array_t<double>>(arr).unchecked<1>();
  std::vector<double> out(static_cast<size_t>(a.shape(0)));
  for (py::ssize_t i = 0; i < a.shape(0); ++i) out[static_cast<size_t>(i)] = a(i);
  return out;
}

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(static_cast<py::ssize_t>(heap->size()), heap->data(), owner);
}

double default_c(int rule) { return rule == rstar::PUCT ? 1.25 : rule == rstar::MCTSR ? 1.4 : 2.0; }
double default_first_play(int rule) { return rule == rstar::PUCT ? 0.0 : INFINITY; }

int32_t to_max_children(int64_t k) {
  if (k < 0 || k > rstar::MAX_CHILDREN)
    throw py::value_error("max_children must lie in [0, " + std::to_string(rstar::MAX_CHILDREN) +
                          "] (0: never stop early), got " + std::to_string(k));
  return static_cast<int32_t>(k);
}

RuleParams make_params(int rule, std::optional<double> c, std::optional<double> first_play, double eps,
                       int64_t max_children) {
  RuleParams p;
  p.rule = rule;
  p.c = c ? *c : default_c(rule);
  p.first_play = first_play ? *first_play : default_first_play(rule);
  p.eps = eps;
  p.max_children = to_max_children(max_children);
  return p;
}

py::dict params_dict(const RuleParams& p) {
  py::dict d;
  d["rule"] = p.rule;
  d["c"] = p.c;
  d["first_play"] = p.first_play;
  d["eps"] = p.eps;
  d["max_children"] = p.max_children;
  return d;
}

template <class T>
py::array column_view(const rstar::Column<T>& col, int64_t n) {
  std::shared_ptr<rstar::Buffer> keep = col.buf;  // the view owns a reference to its buffer
  auto* holder = new std::shared_ptr<rstar::Buffer>(std::move(keep));
  py::capsule owner(holder, [](void* p) { delete static_cast<std::shared_ptr<rstar::Buffer>*>(p); });
  py::array_t<T> arr(static_cast<py::ssize_t>(n), col.p, owner);
  // read-only (the same flag pybind11's eigen casters clear); no Python-level setflags call
  py::detail::array_proxy(arr.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return std::move(arr);
}

const char* const kFields[] = {"parent",   "first_child", "num_children", "depth",       "flags",
                               "visits",   "in_flight",   "value_sum",    "prior",       "reward_min",
                               "reward_sum", "reward_count", "q_backed"};

py::array view_of(Forest& f, const std::string& name) {
  // Snapshot (buffer, size) under the lock, build the array with the GIL.
#define RSTAR_VIEW(col)                                                            \
  if (name == #col) {                                                              \
    auto snap = locked(f, [&] { return std::make_pair(f.col, f.num_nodes()); });   \
    return column_view(snap.first, snap.second);                                   \
  }
  RSTAR_VIEW(parent)
  RSTAR_VIEW(first_child)
  RSTAR_VIEW(num_children)
  RSTAR_VIEW(depth)
  RSTAR_VIEW(flags)
  RSTAR_VIEW(visits)
  RSTAR_VIEW(in_flight)
  RSTAR_VIEW(value_sum)
  RSTAR_VIEW(prior)
  RSTAR_VIEW(reward_min)
  RSTAR_VIEW(reward_sum)
  RSTAR_VIEW(reward_count)
  RSTAR_VIEW(q_backed)
#undef RSTAR_VIEW
  std::string names;
  for (const char* k : kFields) names += std::string(names.empty() ? "" : ", ") + k;
  throw py::value_error("view: unknown array '" + name + "' (one of: " + names + ")");
}

// Exact-dtype column from an import dict.
template <class T>
std::vector<T> import_column(const py::dict& arrays, const char* key, py::ssize_t n_expected, py::ssize_t* n_out) {
  if (!arrays.contains(key)) throw py::value_error(std::string("import_tree: missing array '") + key + "'");
  py::object obj = arrays[key];
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string("import_tree: '") + key + "' must be a numpy array");
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().equal(py::dtype::of<T>()))
    throw py::type_error(std::string("import_tree: '") + key + "' must have dtype " +
                         py::str(py::dtype::of<T>()).cast<std::string>() + ", got " + dtype_str(arr));
  if (arr.ndim() != 1) throw py::value_error(std::string("import_tree: '") + key + "' must be 1-D");
  if (n_out) *n_out = arr.shape(0);
  else if (arr.shape(0) != n_expected)
    throw py::value_error(std::string("import_tree: '") + key + "' has length " + std::to_string(arr.shape(0)) +
                          ", expected " + std::to_string(n_expected));
  auto a = py::reinterpret_borrow<py::array_t<T>>(arr).template unchecked<1>();
  std::vector<T> out(static_cast<size_t>(a.shape(0)));
  for (py::ssize_t i = 0; i < a.shape(0); ++i) out[static_cast<size_t>(i)] = a(i);
  return out;
}

double import_scalar(const py::dict& arrays, const char* key) {
  if (!arrays.contains(key)) throw py::value_error(std::string("import_tree: missing '") + key + "'");
  py::array arr = numpy().attr("asarray")(arrays[key]);
  if (arr.size() != 1) throw py::value_error(std::string("import_tree: '") + key + "' must hold one number");
  const char kind = arr.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u')
    throw py::type_error(std::string("import_tree: '") + key + "' must be a number");
  return arr.attr("reshape")(-1).attr("__getitem__")(0).cast<double>();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rstar tree core: an arena of many MCTS trees (see rstar.tree for the documentation)";
  m.attr("UCT") = static_cast<int>(rstar::UCT);
  m.attr("PUCT") = static_cast<int>(rstar::PUCT);
  m.attr("MCTSR") = static_cast<int>(rstar::MCTSR);
  m.attr("EXPANDED") = static_cast<int>(rstar::EXPANDED);
  m.attr("TERMINAL") = static_cast<int>(rstar::TERMINAL);
  m.attr("INVALID") = static_cast<int>(rstar::INVALID);
  m.attr("PENDING") = static_cast<int>(rstar::PENDING);
  m.attr("EXHAUSTED") = static_cast<int>(rstar::EXHAUSTED);
  m.attr("UNBORN") = static_cast<int>(rstar::UNBORN);
  m.attr("RELEASED") = static_cast<int>(rstar::RELEASED);
  m.attr("DEAD") = static_cast<int>(rstar::DEAD);
  m.attr("NO_PARENT") = static_cast<int>(rstar::NO_PARENT);
  m.attr("BYTES_PER_NODE") = static_cast<int>(rstar::BYTES_PER_NODE);
  py::list fields;
  for (const char* k : kFields) fields.append(k);
  m.attr("FIELDS") = py::tuple(fields);

  py::class_<Forest>(m, "Forest")
      .def(py::init<double>(), py::arg("virtual_loss") = 1.0)
      .def_property_readonly("num_nodes", [](Forest& f) { return locked(f, [&] { return f.num_nodes(); }); })
      .def_property_readonly("num_live", [](Forest& f) { return locked(f, [&] { return f.num_live(); }); })
      .def_property_readonly("capacity", [](Forest& f) { return locked(f, [&] { return f.capacity(); }); })
      .def_property_readonly("virtual_loss", &Forest::virtual_loss)
      .def("__len__", [](Forest& f) { return locked(f, [&] { return f.num_nodes(); }); })
      .def(
          "create_roots",
          [](Forest& f, int64_t n, int rule, std::optional<double> c, std::optional<double> first_play, double eps,
             int64_t max_children) {
            RuleParams p = make_params(rule, c, first_play, eps, max_children);
            return to_numpy(locked(f, [&] { return f.create_roots(n, p); }));
          },
          py::arg("n"), py::arg("rule") = 0, py::arg("c") = py::none(), py::arg("first_play") = py::none(),
          py::arg("eps") = 1e-5, py::arg("max_children") = 0)
      .def(
          "set_rule",
          [](Forest& f, py::handle roots, int rule, std::optional<double> c, std::optional<double> first_play,
             double eps, int64_t max_children) {
            auto r = to_ids(roots, "roots");
            RuleParams p = make_params(rule, c, first_play, eps, max_children);
            locked(f, [&] { f.set_rule(r, p); });
          },
          py::arg("roots"), py::arg("rule") = 0, py::arg("c") = py::none(), py::arg("first_play") = py::none(),
          py::arg("eps") = 1e-5, py::arg("max_children") = 0)
      .def(
          "get_rule", [](Forest& f, int64_t root) { return params_dict(locked(f, [&] { return f.get_rule(root); })); },
          py::arg("root"))
      .def(
          "select",
          [](Forest& f, py::handle roots, int64_t k, std::optional<int> rule, std::optional<double> c,
             std::optional<double> first_play, std::optional<double> eps, std::optional<int64_t> max_children) {
            auto r = to_ids(roots, "roots");
            RuleOverride ov;
            if (rule) {
              ov.mask |= RuleOverride::RULE;
              ov.params = make_params(*rule, c, first_play, eps ? *eps : 1e-5, max_children ? *max_children : 0);
            } else {
              if (c) ov.mask |= RuleOverride::C, ov.params.c = *c;
              if (first_play) ov.mask |= RuleOverride::FIRST_PLAY, ov.params.first_play = *first_play;
              if (eps) ov.mask |= RuleOverride::EPS, ov.params.eps = *eps;
              if (max_children) {
                ov.mask |= RuleOverride::MAX_CHILDREN_PARAM;
                ov.params.max_children = to_max_children(*max_children);
              }
            }
            std::vector<int64_t> leaves, owner;
            locked(f, [&] { f.select(r, k, ov.mask ? &ov : nullptr, leaves, owner); });
            return py::make_tuple(to_numpy(std::move(leaves)), to_numpy(std::move(owner)));
          },
          py::arg("roots"), py::arg("k") = 1, py::arg("rule") = py::none(), py::arg("c") = py::none(),
          py::arg("first_play") = py::none(), py::arg("eps") = py::none(), py::arg("max_children") = py::none())
      .def(
          "expand",
          [](Forest& f, py::handle leaves, py::handle counts, py::handle priors, py::handle reserve) {
            auto l = to_ids(leaves, "leaves");
            auto c = to_ids(counts, "counts");
            std::optional<std::vector<double>> p;
            if (!priors.is_none()) p = to_floats(priors, "priors");
            std::optional<std::vector<int64_t>> res;
            if (!reserve.is_none()) res = to_ids(reserve, "reserve");
            return to_numpy(locked(f, [&] { return f.expand(l, c, p ? &*p : nullptr, res ? &*res : nullptr); }));
          },
          py::arg("leaves"), py::arg("counts"), py::arg("priors") = py::none(), py::arg("reserve") = py::none())
      .def(
          "add_children",
          [](Forest& f, py::handle nodes, py::handle counts, py::handle priors, py::handle reserve) {
            auto n = to_ids(nodes, "nodes");
            auto c = to_ids(counts, "counts");
            std::optional<std::vector<double>> p;
            if (!priors.is_none()) p = to_floats(priors, "priors");
            std::optional<std::vector<int64_t>> res;
            if (!reserve.is_none()) res = to_ids(reserve, "reserve");
            return to_numpy(
                locked(f, [&] { return f.add_children(n, c, p ? &*p : nullptr, res ? &*res : nullptr); }));
          },
          py::arg("nodes"), py::arg("counts"), py::arg("priors") = py::none(), py::arg("reserve") = py::none())
      .def(
          "release",
          [](Forest& f, py::handle roots) {
            auto r = to_ids(roots, "roots");
            locked(f, [&] { f.release(r); });
          },
          py::arg("roots"))
      .def(
          "backprop",
          [](Forest& f, py::handle leaves, py::handle values) {
            auto l = to_ids(leaves, "leaves");
            auto v = to_floats(values, "values");
            locked(f, [&] { f.backprop(l, v); });
          },
          py::arg("leaves"), py::arg("values"))
      .def(
          "backup",
          [](Forest& f, py::handle nodes, py::handle values) {
            auto n = to_ids(nodes, "nodes");
            auto v = to_floats(values, "values");
            locked(f, [&] { f.backup(n, v); });
          },
          py::arg("nodes"), py::arg("values"),
          "Add values along the paths of nodes that were never selected (N += 1, W += v up to the\n"
          "root); virtual loss is untouched. For children scored as they are created.")
      .def(
          "cancel",
          [](Forest& f, py::handle leaves) {
            auto l = to_ids(leaves, "leaves");
            locked(f, [&] { f.cancel(l); });
          },
          py::arg("leaves"))
      .def(
          "mark_terminal",
          [](Forest& f, py::handle nodes) {
            auto n = to_ids(nodes, "nodes");
            locked(f, [&] { f.mark(n, rstar::TERMINAL); });
          },
          py::arg("nodes"))
      .def(
          "mark_invalid",
          [](Forest& f, py::handle nodes) {
            auto n = to_ids(nodes, "nodes");
            locked(f, [&] { f.mark(n, rstar::INVALID); });
          },
          py::arg("nodes"))
      .def(
          "add_rewards",
          [](Forest& f, py::handle nodes, py::handle rewards) {
            auto n = to_ids(nodes, "nodes");
            auto r = to_floats(rewards, "rewards");
            locked(f, [&] { f.add_rewards(n, r); });
          },
          py::arg("nodes"), py::arg("rewards"))
      .def("view", &view_of, py::arg("name"))
      .def(
          "children", [](Forest& f, int64_t node) { return to_numpy(locked(f, [&] { return f.children(node); })); },
          py::arg("node"))
      .def(
          "path", [](Forest& f, int64_t node) { return to_numpy(locked(f, [&] { return f.path(node); })); },
          py::arg("node"))
      .def(
          "root_of",
          [](Forest& f, py::handle nodes) -> py::object {
            const bool scalar = py::isinstance<py::int_>(nodes) && !py::isinstance<py::bool_>(nodes);
            auto n = to_ids(nodes, "nodes");
            auto out = locked(f, [&] { return f.root_of(n); });
            if (scalar) return py::int_(out[0]);
            return to_numpy(std::move(out));
          },
          py::arg("nodes"))
      .def(
          "q",
          [](Forest& f, py::handle nodes) -> py::object {
            const bool scalar = py::isinstance<py::int_>(nodes) && !py::isinstance<py::bool_>(nodes);
            auto n = to_ids(nodes, "nodes");
            auto out = locked(f, [&] { return f.q(n); });
            if (scalar) return py::float_(out[0]);
            return to_numpy(std::move(out));
          },
          py::arg("nodes"))
      .def(
          "slots_left",
          [](Forest& f, py::handle nodes) -> py::object {
            const bool scalar = py::isinstance<py::int_>(nodes) && !py::isinstance<py::bool_>(nodes);
            auto n = to_ids(nodes, "nodes");
            auto out = locked(f, [&] { return f.slots_left(n); });
            if (scalar) return py::int_(out[0]);
            return to_numpy(std::move(out));
          },
          py::arg("nodes"),
          "Unborn child slots each node has left for add_children (0 for a node without a child block).")
      .def(
          "best_child",
          [](Forest& f, int64_t node, const std::string& by) {
            if (by != "visits" && by != "q")
              throw py::value_error("best_child: by must be 'visits' or 'q', got '" + by + "'");
            return locked(f, [&] { return f.best_child(node, by == "q"); });
          },
          py::arg("node"), py::arg("by") = "visits")
      .def(
          "export_tree",
          [](Forest& f, int64_t root) {
            std::vector<int64_t> ids;
            std::vector<int32_t> parent, first_child, visits;
            std::vector<uint16_t> num_children, depth, reward_count;
            std::vector<uint8_t> flags;
            std::vector<double> value_sum;
            std::vector<float> prior, reward_min, reward_sum, q_backed;
            RuleParams rp;
            locked(f, [&] {
              ids = f.subtree(root);
              rp = f.get_rule(root);
              const size_t n = ids.size();
              std::unordered_map<int64_t, int32_t> local;
              local.reserve(n * 2);
              for (size_t i = 0; i < n; ++i) local[ids[i]] = static_cast<int32_t>(i);
              parent.resize(n), first_child.resize(n), visits.resize(n), num_children.resize(n), depth.resize(n);
              reward_count.resize(n), flags.resize(n), value_sum.resize(n), prior.resize(n);
              reward_min.resize(n), reward_sum.resize(n), q_backed.resize(n);
              for (size_t i = 0; i < n; ++i) {
                const int64_t g = ids[i];
                parent[i] = i == 0 ? rstar::NO_PARENT : local[f.parent[g]];
                first_child[i] = f.num_children[g] ? local[f.first_child[g]] : rstar::NO_PARENT;
                num_children[i] = f.num_children[g];
                depth[i] = f.depth[g];
                flags[i] = f.flags[g] & rstar::EXPORTED_FLAGS;
                visits[i] = f.visits[g];
                value_sum[i] = f.value_sum[g];
                prior[i] = f.prior[g];
                reward_min[i] = f.reward_min[g];
                reward_sum[i] = f.reward_sum[g];
                reward_count[i] = f.reward_count[g];
                q_backed[i] = f.q_backed[g];
              }
            });
            py::dict d;
            d["parent"] = to_numpy(std::move(parent));
            d["first_child"] = to_numpy(std::move(first_child));
            d["num_children"] = to_numpy(std::move(num_children));
            d["depth"] = to_numpy(std::move(depth));
            d["flags"] = to_numpy(std::move(flags));
            d["visits"] = to_numpy(std::move(visits));
            d["value_sum"] = to_numpy(std::move(value_sum));
            d["prior"] = to_numpy(std::move(prior));
            d["reward_min"] = to_numpy(std::move(reward_min));
            d["reward_sum"] = to_numpy(std::move(reward_sum));
            d["reward_count"] = to_numpy(std::move(reward_count));
            d["q_backed"] = to_numpy(std::move(q_backed));
            d["node_ids"] = to_numpy(std::move(ids));
            d["rule"] = numpy().attr("array")(rp.rule, py::dtype::of<int64_t>());
            d["c"] = numpy().attr("array")(rp.c, py::dtype::of<double>());
            d["first_play"] = numpy().attr("array")(rp.first_play, py::dtype::of<double>());
            d["eps"] = numpy().attr("array")(rp.eps, py::dtype::of<double>());
            d["max_children"] = numpy().attr("array")(rp.max_children, py::dtype::of<int64_t>());
            return d;
          },
          py::arg("root"))
      .def(
          "import_tree",
          [](Forest& f, py::object arrays_obj) {
            if (!py::isinstance<py::dict>(arrays_obj)) arrays_obj = py::dict(arrays_obj);  // e.g. an NpzFile
            py::dict arrays = arrays_obj;
            py::ssize_t n = 0;
            auto parent = import_column<int32_t>(arrays, "parent", 0, &n);
            auto first_child = import_column<int32_t>(arrays, "first_child", n, nullptr);
            auto num_children = import_column<uint16_t>(arrays, "num_children", n, nullptr);
            auto depth = import_column<uint16_t>(arrays, "depth", n, nullptr);
            auto flags = import_column<uint8_t>(arrays, "flags", n, nullptr);
            auto visits = import_column<int32_t>(arrays, "visits", n, nullptr);
            auto value_sum = import_column<double>(arrays, "value_sum", n, nullptr);
            auto prior = import_column<float>(arrays, "prior", n, nullptr);
            auto reward_min = import_column<float>(arrays, "reward_min", n, nullptr);
            auto reward_sum = import_column<float>(arrays, "reward_sum", n, nullptr);
            auto reward_count = import_column<uint16_t>(arrays, "reward_count", n, nullptr);
            auto q_backed = import_column<float>(arrays, "q_backed", n, nullptr);
            Forest::TreeArrays a;
            a.n = n;
            a.parent = parent.data(), a.first_child = first_child.data(), a.num_children = num_children.data();
            a.depth = depth.data(), a.flags = flags.data(), a.visits = visits.data(), a.value_sum = value_sum.data();
            a.prior = prior.data(), a.reward_min = reward_min.data(), a.reward_sum = reward_sum.data();
            a.reward_count = reward_count.data(), a.q_backed = q_backed.data();
            const double rule = import_scalar(arrays, "rule");
            if (rule != 0 && rule != 1 && rule != 2)
              throw py::value_error("import_tree: rule must be 0, 1 or 2");
            a.params.rule = static_cast<int32_t>(rule);
            a.params.c = import_scalar(arrays, "c");
            a.params.first_play = import_scalar(arrays, "first_play");
            a.params.eps = import_scalar(arrays, "eps");
            if (arrays.contains("max_children")) {  // absent in trees saved before it existed: 0
              const double k = import_scalar(arrays, "max_children");
              if (!(k >= 0 && k <= rstar::MAX_CHILDREN) || k != std::floor(k))
                throw py::value_error("import_tree: max_children must be an integer in [0, 65535]");
              a.params.max_children = static_cast<int32_t>(k);
            }
            return locked(f, [&] { return f.import_tree(a); });
          },
          py::arg("arrays"));
}
