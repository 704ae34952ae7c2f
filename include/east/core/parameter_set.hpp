#pragma once
// ParameterSet: non-owning views of the user's tensors. east never allocates or copies model
// weights; adapters (Eigen, xtensor, libtorch) only build these views.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "error.hpp"
#include "layer_storage.hpp"

namespace east {

/// Shape of a tensor, outermost dimension first (PyTorch order: conv weights are
/// {C_out, C_in, k_h, k_w}, linear weights {n_out, n_in}).
using Shape = std::vector<std::int64_t>;

namespace detail {
inline std::string shape_string(const Shape& s) {
  std::string out = "{";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "}";
}
}  // namespace detail

/// Number of elements; throws InvalidArgument for a negative dimension or a product that
/// overflows 64 bits (it would wrap to a small, wrong size).
inline std::size_t shape_size(const Shape& s) {
  std::size_t n = 1;
  for (auto d : s) {
    if (d < 0)
      detail::require(false, "east::shape_size()", "shape ", detail::shape_string(s), " has dimension ", d,
                      " (valid: >= 0)");
    if (__builtin_mul_overflow(n, static_cast<std::size_t>(d), &n))
      detail::require(false, "east::shape_size()", "the product of shape ", detail::shape_string(s),
                      " overflows 64 bits");
  }
  return n;
}

/// Most weights one layer may have: what a contiguous float buffer can hold.
inline constexpr std::size_t max_layer_size =
    static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / sizeof(float);

/// How a registered layer takes part in sparse training.
enum class LayerRole {
  sparse,    ///< masked; its nonzero count comes from the distribution
  dense,     ///< masked with all ones; its weights count toward the budget
  excluded,  ///< registered but ignored by distributions, budgets and updates
};

/// One prunable weight tensor, as views of the user's memory.
struct LayerView {
  std::string name;
  Shape shape;
  float* weight = nullptr;    ///< contiguous, shape_size(shape) floats
  float* grad = nullptr;      ///< same size; may be null until regrowth needs it
  std::vector<float*> state;  ///< optimizer buffers (momentum…) masked like the weight
  std::size_t uses = 1;       ///< how many places of the network use this tensor (sharing)
  LayerRole role = LayerRole::sparse;
  /// 2-D only: the memory holds the matrix column by column (Eigen's default), so one output
  /// unit (a row of the {out, in} shape) is strided. Masks do not care; fan-in scaling reads
  /// it; compact layers reject it.
  bool column_major = false;
  /// Where the weights live between mask updates when not in `weight` (compact layers); null:
  /// the dense views are always current. Not owned.
  LayerStorage* storage = nullptr;

  std::size_t size() const { return shape_size(shape); }
};

/// The set of tensors east manages. Cheap to copy (views only).
class ParameterSet {
 public:
  /// Registers a weight tensor. @param name unique name  @param weight the user's weights
  /// @param shape outermost first  @param grad the user's gradient buffer (may be null if the
  /// chosen regrow criterion does not read gradients)
  LayerView& add(std::string name, float* weight, Shape shape, float* grad = nullptr) {
    constexpr const char* where = "east::ParameterSet::add()";
    detail::require(!name.empty(), where, "layer name is empty (valid: a unique non-empty name)");
    detail::require(find(name) == npos, where, "layer name '", name, "' is already registered");
    detail::require(weight != nullptr, where, "weight pointer of layer '", name, "' is null");
    detail::require(!shape.empty(), where, "shape of layer '", name,
                    "' is empty (valid: at least one dimension)");
    for (auto d : shape)
      detail::require(d > 0, where, "layer '", name, "' has dimension ", d, " (valid: >= 1)");
    // A product that wraps would register a small, wrong size; one no buffer can hold, a bad_alloc later.
    std::size_t n = 1;
    for (auto d : shape)
      if (__builtin_mul_overflow(n, static_cast<std::size_t>(d), &n))
        detail::require(false, where, "layer '", name, "' has shape ", detail::shape_string(shape),
                        ", whose product overflows 64 bits");
    if (n > max_layer_size)
      detail::require(false, where, "layer '", name, "' has shape ", detail::shape_string(shape), ", ", n,
                      " weights (valid: at most ", max_layer_size, ", what a float buffer can hold)");
    LayerView v;
    v.name = std::move(name);
    v.shape = std::move(shape);
    v.weight = weight;
    v.grad = grad;
    layers_.push_back(std::move(v));
    return layers_.back();
  }

  /// Registers an optimizer buffer (e.g. SGD momentum) that must be masked with `name`'s weight.
  void add_state(const std::string& name, float* buffer) {
    detail::require(buffer != nullptr, "east::ParameterSet::add_state()", "buffer of layer '", name,
                    "' is null");
    at(name).state.push_back(buffer);
  }
  /// Points a layer's gradient view at a (new) buffer, e.g. an accumulated or all-reduced one.
  void set_grad(const std::string& name, float* grad) { at(name).grad = grad; }
  /// Declares that `name` is used `uses` times in the network (residual weight sharing):
  /// budgets count every use, the single stored tensor and its mask serve them all.
  void set_uses(const std::string& name, std::size_t uses) {
    detail::require(uses >= 1, "east::ParameterSet::set_uses()", "uses ", uses, " of layer '", name,
                    "' (valid: >= 1)");
    at(name).uses = uses;
  }
  void set_role(const std::string& name, LayerRole role) { at(name).role = role; }
  /// Hands `name`'s weights to `storage` (e.g. an east::sparse::CompactLayer) between mask
  /// updates; the controller then drives it (core/layer_storage.hpp). Null: dense views only.
  void set_storage(const std::string& name, LayerStorage* storage) { at(name).storage = storage; }

  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  std::size_t find(const std::string& name) const {
    for (std::size_t i = 0; i < layers_.size(); ++i)
      if (layers_[i].name == name) return i;
    return npos;
  }
  LayerView& at(const std::string& name) {
    const auto i = find(name);
    detail::require(i != npos, "east::ParameterSet", "unknown layer name '", name, "'");
    return layers_[i];
  }
  const LayerView& at(const std::string& name) const { return const_cast<ParameterSet*>(this)->at(name); }
  LayerView& operator[](std::size_t i) { return layers_[i]; }
  const LayerView& operator[](std::size_t i) const { return layers_[i]; }
  std::size_t size() const { return layers_.size(); }
  bool empty() const { return layers_.empty(); }
  auto begin() { return layers_.begin(); }
  auto end() { return layers_.end(); }
  auto begin() const { return layers_.begin(); }
  auto end() const { return layers_.end(); }

  /// Stored weights of non-excluded layers.
  std::size_t stored_size() const {
    std::size_t n = 0;
    for (const auto& l : layers_)
      if (l.role != LayerRole::excluded) n += l.size();
    return n;
  }
  /// Weights counting every use of shared tensors: the size the sparsity is defined against.
  std::size_t logical_size() const {
    std::size_t n = 0;
    for (const auto& l : layers_)
      if (l.role != LayerRole::excluded) n += l.size() * l.uses;
    return n;
  }

 private:
  std::deque<LayerView> layers_;  // a deque keeps returned LayerView& valid across add()
};

}  // namespace east
