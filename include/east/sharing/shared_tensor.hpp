#pragma once
// Residual weight sharing (EAST trick 2): one stored, masked tensor W used by several blocks,
// use i with its own learnable scale s_i. East stores one mask per stored tensor, so all uses
// share it by construction (pruning W prunes every use), and the budget counts every use.
#include <cstddef>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/parameter_set.hpp"
#include "shared_weight.hpp"

namespace east {

/// Views of one shared tensor and its uses: the caller owns every buffer.
struct SharedTensor {
  std::string name;
  float* weight = nullptr;  ///< W (masked by east)
  float* grad = nullptr;    ///< dW, filled by accumulate_gradients()
  std::size_t size = 0;
  std::vector<float*> scales;           ///< s_i, one per use
  std::vector<float*> scale_grads;      ///< ds_i
  std::vector<float*> use_weights;      ///< s_i·W, what use i computes with
  std::vector<const float*> use_grads;  ///< dL/d(s_i·W) from use i's backward

  std::size_t uses() const { return scales.size(); }

  /// use_weights[i] = s_i · W (call after every optimizer step, before the forward).
  void effective_weights() const {
    check("east::SharedTensor::effective_weights()");
    for (std::size_t i = 0; i < uses(); ++i) {
      detail::require(use_weights[i] != nullptr, "east::SharedTensor::effective_weights()", "use ", i,
                      " of '", name, "' has no weight buffer");
      shared_effective_weight(weight, *scales[i], use_weights[i], size);
    }
  }
  /// dW = Σ_i s_i·dW_i and ds_i = ⟨W, dW_i⟩ (both overwritten), deterministic order.
  void accumulate_gradients() const {
    check("east::SharedTensor::accumulate_gradients()");
    detail::require(grad != nullptr && scale_grads.size() == uses(),
                    "east::SharedTensor::accumulate_gradients()", "'", name,
                    "' needs a gradient buffer and one scale gradient per use");
    std::vector<float> ds(uses(), 0.0f), s(uses());
    for (std::size_t i = 0; i < uses(); ++i) {
      detail::require(use_grads[i] != nullptr, "east::SharedTensor::accumulate_gradients()", "use ", i,
                      " of '", name, "' has no gradient");
      s[i] = *scales[i];
    }
    std::fill(grad, grad + size, 0.0f);
    shared_weight_backward(weight, use_grads.data(), s.data(), uses(), grad, ds.data(), size);
    for (std::size_t i = 0; i < uses(); ++i) *scale_grads[i] = ds[i];
  }

 private:
  void check(const char* where) const {
    detail::require(weight != nullptr && size > 0, where, "'", name, "' has no weight");
    detail::require(uses() >= 1 && use_weights.size() == uses() && use_grads.size() == uses(), where, "'",
                    name, "' has ", uses(), " scales, ", use_weights.size(), " use weights and ",
                    use_grads.size(), " use gradients (valid: the same number, >= 1)");
  }
};

/// Registers the stored tensor once, with every use counted in the budget (EAST-SPEC §3: the
/// stored layers get density d·N_total/N_stored, so the nonzero count equals the unshared net's).
inline LayerView& add_shared(ParameterSet& params, const SharedTensor& t, Shape shape) {
  detail::require(shape_size(shape) == t.size, "east::add_shared()", "shape of '", t.name, "' has ",
                  shape_size(shape), " elements, the tensor ", t.size);
  auto& layer = params.add(t.name, t.weight, std::move(shape), t.grad);
  params.set_uses(t.name, std::max<std::size_t>(1, t.uses()));
  return layer;
}

}  // namespace east
