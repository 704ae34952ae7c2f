#pragma once
// Eigen adapter: register Eigen matrices (or Maps) as layers. The shape is {rows, cols}; for a
// layer y = W x that is {n_out, n_in}, as distributions and fan-in scaling expect. Eigen's default
// storage is column-major: such a layer is marked LayerView::column_major, which masks ignore,
// fan-in scaling follows (a unit's weights are then strided) and compact layers reject with a
// clear error — declare weights Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic,
// Eigen::RowMajor> to train them on compact layers (docs/compact-layers.md).
#include <Eigen/Core>

#include "../core/parameter_set.hpp"

namespace east {

namespace detail {
/// Registers an Eigen dense object (matrix or Map): contiguous memory required; storage order
/// recorded. A vector (one row or one column) is the same memory in either order.
template <class W, class G>
LayerView& add_eigen_dense(ParameterSet& params, std::string name, W& weight, G* grad, const char* where) {
  static_assert(std::is_same_v<typename W::Scalar, float>, "east::add_eigen: weights must be float");
  const auto rows = weight.rows(), cols = weight.cols();
  const bool row_major = static_cast<bool>(W::IsRowMajor);
  require(weight.innerStride() == 1 && weight.outerStride() == (row_major ? cols : rows), where, "'", name,
          "' is not contiguous (inner stride ", weight.innerStride(), ", outer stride ", weight.outerStride(),
          "; valid: 1 and ", row_major ? cols : rows, ")");
  if (grad) {
    require(grad->rows() == rows && grad->cols() == cols, where, "gradient of '", name, "' is ", grad->rows(),
            "x", grad->cols(), ", weight is ", rows, "x", cols);
    require(static_cast<bool>(G::IsRowMajor) == row_major || rows == 1 || cols == 1, where, "gradient of '",
            name, "' is stored ", G::IsRowMajor ? "row" : "column", "-major, its weight ",
            row_major ? "row" : "column", "-major (valid: the same storage order)");
  }
  LayerView& v = params.add(std::move(name), weight.data(), {rows, cols}, grad ? grad->data() : nullptr);
  v.column_major = !row_major && rows > 1 && cols > 1;
  return v;
}
}  // namespace detail

/// Registers a contiguous float matrix W (rows × cols) with an optional gradient of the same shape
/// and storage order. Column-major matrices (Eigen's default) are marked LayerView::column_major.
template <class Derived, class GradDerived = Derived>
LayerView& add_eigen(ParameterSet& params, std::string name, Eigen::PlainObjectBase<Derived>& weight,
                     Eigen::PlainObjectBase<GradDerived>* grad = nullptr) {
  return detail::add_eigen_dense(params, std::move(name), weight, grad, "east::add_eigen()");
}

template <class Derived, class GradDerived>
LayerView& add_eigen(ParameterSet& params, std::string name, Eigen::PlainObjectBase<Derived>& weight,
                     Eigen::PlainObjectBase<GradDerived>& grad) {
  return add_eigen(params, std::move(name), weight, &grad);
}

/// Registers an Eigen::Map over the user's own buffers (contiguous; storage order as add_eigen).
template <class MapW, class MapG>
LayerView& add_eigen_map(ParameterSet& params, std::string name, MapW& weight, MapG& grad) {
  return detail::add_eigen_dense(params, std::move(name), weight, &grad, "east::add_eigen_map()");
}

}  // namespace east
