#pragma once
// xtensor adapter: register row-major float xtensor/xarray containers as layers.
#include <xtensor/xlayout.hpp>

#include "../core/parameter_set.hpp"

namespace east {

/// Registers a contiguous row-major float container; the shape is taken from it.
template <class W, class G>
LayerView& add_xtensor(ParameterSet& params, std::string name, W& weight, G& grad) {
  static_assert(std::is_same_v<typename W::value_type, float>, "east::add_xtensor: weights must be float");
  detail::require(weight.layout() == xt::layout_type::row_major, "east::add_xtensor()", "layer '", name,
                  "' is not row-major");
  Shape shape(weight.shape().begin(), weight.shape().end());
  Shape gshape(grad.shape().begin(), grad.shape().end());
  detail::require(shape == gshape, "east::add_xtensor()", "gradient of '", name,
                  "' has another shape than its weight");
  return params.add(std::move(name), weight.data(), std::move(shape), grad.data());
}

}  // namespace east
