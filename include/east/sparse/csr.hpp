#pragma once
// CsrWeight: the compact form of one masked weight tensor, rebuilt only when its mask changes.
//
// Layout (see docs/sparse.md for why): rows are output channels (shape[0]); the column of an
// entry is its flattened index in the rest of the shape, (c_in, k_h, k_w) for a convolution, the
// input feature for a linear layer. So dense index = row * cols + col, and the entries appear in
// increasing dense index, which is the order BitMask::for_each_active visits.
//   row_ptr  rows + 1   uint32   entries of row r are [row_ptr[r], row_ptr[r+1])
//   col      nnz        uint32   flattened (c_in, k_h, k_w)
//   values   nnz        float    the weights, updated in place every step
// plus a transposed index for the gather form of the input gradient (each input channel's
// gradient is then written by one thread, in a fixed order):
//   group_ptr groups+1  uint32   groups are input channels: col / group_size
//   t_row, t_pos nnz    uint32   output channel and position in `values` of each entry,
//                                grouped by input channel, then by increasing dense index
// Memory: 16 B per nonzero + 4 B per output and input channel, against 4 B per weight dense.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/error.hpp"
#include "../core/parameter_set.hpp"
#include "../masks/bit_mask.hpp"

namespace east::sparse {

/// Compact (CSR by output channel) form of a masked weight tensor; see the file comment.
class CsrWeight {
 public:
  CsrWeight() = default;

  /// Builds the compact form of `dense` (rows × cols, row-major) under `mask` (active = kept).
  /// @param group_size columns per input channel (k_h·k_w for a convolution, 1 for linear);
  ///                   must divide cols.
  CsrWeight(const float* dense, const BitMask& mask, std::size_t rows, std::size_t cols,
            std::size_t group_size = 1) {
    build(mask, rows, cols, group_size);
    if (dense) gather(dense);
  }

  /// Builds from a weight shape in PyTorch order ({C_out, C_in, k_h, k_w} or {out, in}).
  static CsrWeight from_shape(const float* dense, const BitMask& mask, const Shape& shape) {
    constexpr const char* where = "east::sparse::CsrWeight::from_shape()";
    ::east::detail::require(shape.size() >= 2, where, "shape has ", shape.size(),
                            " dimensions (valid: 2 for linear, 4 for conv2d)");
    std::size_t cols = 1, group = 1;
    for (std::size_t d = 1; d < shape.size(); ++d) cols *= static_cast<std::size_t>(shape[d]);
    for (std::size_t d = 2; d < shape.size(); ++d) group *= static_cast<std::size_t>(shape[d]);
    return CsrWeight(dense, mask, static_cast<std::size_t>(shape[0]), cols, group);
  }

  /// Builds from an index: row r's entries are col[row_ptr[r] .. row_ptr[r + 1]), strictly
  /// increasing and < cols. Values are zero.
  static CsrWeight from_index(std::size_t rows, std::size_t cols, std::size_t group_size,
                              std::vector<std::uint32_t> row_ptr, std::vector<std::uint32_t> col) {
    constexpr const char* where = "east::sparse::CsrWeight::from_index()";
    ::east::detail::require(rows >= 1 && cols >= 1 && group_size >= 1 && cols % group_size == 0, where, "rows ",
                            rows, ", cols ", cols, ", group_size ", group_size,
                            " (valid: >= 1, group_size divides cols)");
    ::east::detail::require(row_ptr.size() == rows + 1 && row_ptr.front() == 0 && row_ptr.back() == col.size(),
                            where, "row_ptr has ", row_ptr.size(), " entries ending at ",
                            row_ptr.empty() ? 0 : row_ptr.back(), " (valid: rows + 1 = ", rows + 1,
                            ", from 0 to the ", col.size(), " entries)");
    for (std::size_t r = 0; r < rows; ++r) {
      ::east::detail::require(row_ptr[r] <= row_ptr[r + 1], where, "row_ptr decreases at row ", r);
      for (std::uint32_t j = row_ptr[r]; j < row_ptr[r + 1]; ++j)
        ::east::detail::require(col[j] < cols && (j == row_ptr[r] || col[j - 1] < col[j]), where, "row ", r,
                                " entry ", j, " has column ", col[j], " (valid: < ", cols,
                                ", increasing within the row)");
    }
    CsrWeight w;
    w.rows_ = rows;
    w.cols_ = cols;
    w.group_ = group_size;
    w.row_ptr_ = std::move(row_ptr);
    w.col_ = std::move(col);
    w.values_.assign(w.col_.size(), 0.0f);
    w.build_transposed();
    return w;
  }

  /// Rebuilds the index for a new mask; values are zeroed (use remap to carry them over).
  void build(const BitMask& mask, std::size_t rows, std::size_t cols, std::size_t group_size = 1) {
    constexpr const char* where = "east::sparse::CsrWeight::build()";
    ::east::detail::require(rows >= 1 && cols >= 1, where, "shape ", rows, " x ", cols,
                            " (valid: both >= 1)");
    ::east::detail::require(mask.size() == rows * cols, where, "mask has ", mask.size(),
                            " positions, weight ", rows * cols, " (valid: equal)");
    ::east::detail::require(group_size >= 1 && cols % group_size == 0, where, "group size ", group_size,
                            " does not divide ", cols, " columns (valid: k_h*k_w, or 1)");
    ::east::detail::require(cols < std::numeric_limits<std::uint32_t>::max() &&
                                mask.count() < std::numeric_limits<std::uint32_t>::max(),
                            where, "cols ", cols, " or nonzeros ", mask.count(), " (valid: < 2^32 - 1)");
    rows_ = rows;
    cols_ = cols;
    group_ = group_size;
    const std::size_t nnz = mask.count();
    row_ptr_.assign(rows + 1, 0);
    col_.resize(nnz);
    values_.assign(nnz, 0.0f);
    std::size_t j = 0;
    mask.for_each_active([&](std::size_t i) {
      const std::size_t r = i / cols;
      ++row_ptr_[r + 1];
      col_[j++] = static_cast<std::uint32_t>(i - r * cols);
    });
    for (std::size_t r = 0; r < rows; ++r) row_ptr_[r + 1] += row_ptr_[r];
    build_transposed();
  }

  /// New compact form for `new_mask`, carrying the values (and each array in `carry`, e.g.
  /// momentum, nnz() floats each, replaced in place) of positions active in both masks; newly
  /// active positions start at 0. Cost: one merge of the two sorted index lists.
  CsrWeight remap(const BitMask& new_mask, std::vector<std::vector<float>*> carry = {}) const {
    CsrWeight out;
    out.build(new_mask, rows_, cols_, group_);
    for (auto* c : carry)
      ::east::detail::require(c && c->size() == nnz(), "east::sparse::CsrWeight::remap()",
                              "a carried array has ", c ? c->size() : 0, " values (valid: nnz() = ", nnz(),
                              ")");
    std::vector<std::vector<float>> carried(carry.size(), std::vector<float>(out.nnz(), 0.0f));
    for (std::size_t r = 0; r < rows_; ++r) {
      std::size_t a = row_ptr_[r], b = out.row_ptr_[r];
      const std::size_t ae = row_ptr_[r + 1], be = out.row_ptr_[r + 1];
      while (a < ae && b < be) {
        if (col_[a] < out.col_[b]) {
          ++a;
        } else if (col_[a] > out.col_[b]) {
          ++b;
        } else {
          out.values_[b] = values_[a];
          for (std::size_t c = 0; c < carry.size(); ++c) carried[c][b] = (*carry[c])[a];
          ++a;
          ++b;
        }
      }
    }
    for (std::size_t c = 0; c < carry.size(); ++c) *carry[c] = std::move(carried[c]);
    return out;
  }

  /// values[j] = dense[position of j]: reads the kept weights out of a dense tensor.
  void gather(const float* dense) { gather_array(dense, values_.data()); }
  /// out[j] = dense[position of j] for any companion array (gradients, momentum).
  void gather_array(const float* dense, float* out) const {
    for (std::size_t r = 0; r < rows_; ++r) {
      const float* d = dense + r * cols_;
      for (std::uint32_t j = row_ptr_[r]; j < row_ptr_[r + 1]; ++j) out[j] = d[col_[j]];
    }
  }
  /// dense[position of j] = values[j]; with zero_rest, every other position is set to 0.
  void scatter(float* dense, bool zero_rest = true) const { scatter_array(values_.data(), dense, zero_rest); }
  /// dense[position of j] = compact[j] for any companion array.
  void scatter_array(const float* compact, float* dense, bool zero_rest = true) const {
    if (zero_rest) std::fill(dense, dense + rows_ * cols_, 0.0f);
    for (std::size_t r = 0; r < rows_; ++r) {
      float* d = dense + r * cols_;
      for (std::uint32_t j = row_ptr_[r]; j < row_ptr_[r + 1]; ++j) d[col_[j]] = compact[j];
    }
  }
  /// Dense index of entry j (row * cols + col).
  std::size_t position(std::size_t j) const {
    const auto r =
        static_cast<std::size_t>(std::upper_bound(row_ptr_.begin(), row_ptr_.end(), j) - row_ptr_.begin()) -
        1;
    return r * cols_ + col_[j];
  }

  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  std::size_t group_size() const { return group_; }
  std::size_t groups() const { return group_ ? cols_ / group_ : 0; }
  std::size_t nnz() const { return values_.size(); }
  double density() const { return rows_ ? static_cast<double>(nnz()) / (rows_ * cols_) : 0.0; }
  /// Bytes held by the compact form (values + all indices).
  std::size_t bytes() const {
    return 4 * (row_ptr_.size() + col_.size() + values_.size() + group_ptr_.size() + t_row_.size() +
                t_pos_.size());
  }

  const std::uint32_t* row_ptr() const { return row_ptr_.data(); }
  const std::uint32_t* col() const { return col_.data(); }
  float* values() { return values_.data(); }
  const float* values() const { return values_.data(); }
  std::vector<float>& value_vector() { return values_; }
  const std::uint32_t* group_ptr() const { return group_ptr_.data(); }
  const std::uint32_t* t_row() const { return t_row_.data(); }
  const std::uint32_t* t_pos() const { return t_pos_.data(); }

 private:
  // Counting sort of the entries by input channel; within a channel the row-major order stays.
  void build_transposed() {
    const std::size_t g = groups();
    group_ptr_.assign(g + 1, 0);
    for (auto c : col_) ++group_ptr_[c / group_ + 1];
    for (std::size_t i = 0; i < g; ++i) group_ptr_[i + 1] += group_ptr_[i];
    std::vector<std::uint32_t> next(group_ptr_.begin(), group_ptr_.end() - 1);
    t_row_.resize(nnz());
    t_pos_.resize(nnz());
    for (std::size_t r = 0; r < rows_; ++r)
      for (std::uint32_t j = row_ptr_[r]; j < row_ptr_[r + 1]; ++j) {
        const std::uint32_t at = next[col_[j] / group_]++;
        t_row_[at] = static_cast<std::uint32_t>(r);
        t_pos_[at] = j;
      }
  }

  std::size_t rows_ = 0, cols_ = 0, group_ = 1;
  std::vector<std::uint32_t> row_ptr_, col_;
  std::vector<float> values_;
  std::vector<std::uint32_t> group_ptr_, t_row_, t_pos_;
};

}  // namespace east::sparse
