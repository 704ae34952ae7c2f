#pragma once
// Eigen adapter: register Eigen matrices (or Maps) as layers. Eigen's default storage is
// column-major; east only needs contiguous memory, and the shape says how the caller reads it.
#include <Eigen/Core>

#include "../core/parameter_set.hpp"

namespace east {

/// Registers a contiguous float matrix W (rows × cols) with an optional gradient of the same shape.
/// Shape is {rows, cols}: for a layer y = W x that is {n_out, n_in}, as distributions expect.
template <class Derived, class GradDerived>
LayerView& add_eigen(ParameterSet& params, std::string name, Eigen::PlainObjectBase<Derived>& weight,
                     Eigen::PlainObjectBase<GradDerived>* grad = nullptr) {
  static_assert(std::is_same_v<typename Derived::Scalar, float>, "east::add_eigen: weights must be float");
  if (grad)
    detail::require(grad->rows() == weight.rows() && grad->cols() == weight.cols(), "east::add_eigen()",
                    "gradient of '", name, "' is ", grad->rows(), "x", grad->cols(), ", weight is ",
                    weight.rows(), "x", weight.cols());
  return params.add(std::move(name), weight.data(), {weight.rows(), weight.cols()},
                    grad ? grad->data() : nullptr);
}

template <class Derived>
LayerView& add_eigen(ParameterSet& params, std::string name, Eigen::PlainObjectBase<Derived>& weight,
                     Eigen::PlainObjectBase<Derived>& grad) {
  return add_eigen(params, std::move(name), weight, &grad);
}

/// Registers an Eigen::Map over the user's own buffers.
template <class MapW, class MapG>
LayerView& add_eigen_map(ParameterSet& params, std::string name, MapW& weight, MapG& grad) {
  detail::require(grad.rows() == weight.rows() && grad.cols() == weight.cols(), "east::add_eigen_map()",
                  "gradient of '", name, "' is ", grad.rows(), "x", grad.cols(), ", weight is ",
                  weight.rows(), "x", weight.cols());
  return params.add(std::move(name), weight.data(), {weight.rows(), weight.cols()}, grad.data());
}

}  // namespace east
