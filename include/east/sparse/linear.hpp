#pragma once
// Sparse linear layer y = x Wᵀ (+ b) with W compact (CsrWeight, rows = outputs). Activations come
// in one of two layouts (Layout):
//   batch_major    {batch, features} row-major: PyTorch's, and an Eigen column-major
//                  (features × batch) matrix
//   feature_major  {features, batch} row-major: each feature's batch is contiguous, so every
//                  stored weight does one contiguous multiply-add over the batch (the CSR × dense
//                  form PERF.md measured ~280× faster than the dense GEMM at 0.1%) with no
//                  conversion. Choose it when the activations are yours to lay out.
// Batch-major calls either transpose the activations into feature-major scratch (batch · (in +
// out) floats per call) or, when the layer holds very few nonzeros for its width (nnz < (in +
// out) / 16, detail::gather_directly), gather directly (nnz · batch scalar multiply-adds, no
// transposes). Both orders of summation are the same, so
// every layout and path gives bit-identical results.
//
// Threads: forward over outputs (or images), input gradient over inputs (or images), weight
// gradient over outputs; results are identical for any thread count.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/error.hpp"
#include "csr.hpp"
#include "detail/parallel.hpp"

namespace east::sparse {

/// Layout of a linear layer's activations (see the file comment).
enum class Layout {
  batch_major,    ///< {batch, features}, row-major (PyTorch)
  feature_major,  ///< {features, batch}, row-major (no transposes)
};

namespace detail {
inline void check_linear(const CsrWeight& wt, std::size_t batch, const char* where) {
  ::east::detail::require(batch >= 1, where, "batch ", batch, " (valid: >= 1)");
  ::east::detail::require(wt.rows() >= 1 && wt.cols() >= 1 && wt.group_size() == 1, where, "weight is ",
                          wt.rows(), " x ", wt.cols(), " in groups of ", wt.group_size(),
                          " (valid: a linear weight, groups of 1)");
}

/// Whether a batch-major call should gather directly instead of transposing: the transposes
/// move batch · (in + out) floats, the direct path pays a strided gather per stored weight and
/// image (about 4× a contiguous multiply-add) and loops over every input and output per image.
/// Measured (east_bench_sparse_linear, batch 128, docs/sparse.md): direct wins only below about
/// (in + out) / 16 nonzeros and is 1.7–3.8× slower at nnz = in + out, hence the 16.
inline bool gather_directly(const CsrWeight& wt) { return wt.nnz() * 16 < wt.rows() + wt.cols(); }

// Σ a[n] b[n] with 8 fixed partial sums (vectorizes without -ffast-math; fixed order). Strides
// in elements; lane n % 8 takes element n, so strided and contiguous calls sum identically.
EAST_ALWAYS_INLINE float dot8(const float* EAST_RESTRICT a, const float* EAST_RESTRICT b, std::size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (std::size_t l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  for (std::size_t l = 0; i < n; ++i, ++l) acc[l] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}
EAST_ALWAYS_INLINE float dot8_strided(const float* a, std::size_t sa, const float* b, std::size_t sb,
                                      std::size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (std::size_t i = 0; i < n; ++i) acc[i & 7] += a[i * sa] * b[i * sb];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Feature-major kernels: xt {in, batch}, yt {out, batch}.
inline void linear_forward_fm(const float* xt, std::size_t batch, const CsrWeight& wt, float* yt,
                              const float* bias) {
  const std::uint32_t* rp = wt.row_ptr();
  const std::uint32_t* col = wt.col();
  const float* val = wt.values();
  parallel_for(wt.rows(), static_cast<double>(wt.nnz()) * batch, [&](std::size_t o) {
    float* EAST_RESTRICT yr = yt + o * batch;
    std::fill(yr, yr + batch, bias ? bias[o] : 0.0f);
    for (std::uint32_t j = rp[o]; j < rp[o + 1]; ++j) {
      const float v = val[j];
      const float* EAST_RESTRICT xr = xt + static_cast<std::size_t>(col[j]) * batch;
      for (std::size_t n = 0; n < batch; ++n) yr[n] += v * xr[n];
    }
  });
}
inline void linear_grad_input_fm(const float* dyt, std::size_t batch, const CsrWeight& wt, float* dxt) {
  const std::uint32_t* gp = wt.group_ptr();
  const std::uint32_t* trow = wt.t_row();
  const std::uint32_t* tpos = wt.t_pos();
  const float* val = wt.values();
  parallel_for(wt.cols(), static_cast<double>(wt.nnz()) * batch, [&](std::size_t i) {
    float* EAST_RESTRICT xr = dxt + i * batch;
    std::fill(xr, xr + batch, 0.0f);
    for (std::uint32_t t = gp[i]; t < gp[i + 1]; ++t) {
      const float v = val[tpos[t]];
      const float* EAST_RESTRICT yr = dyt + static_cast<std::size_t>(trow[t]) * batch;
      for (std::size_t n = 0; n < batch; ++n) xr[n] += v * yr[n];
    }
  });
}
inline void linear_grad_weight_fm(const float* xt, const float* dyt, std::size_t batch, const CsrWeight& wt,
                                  float* gw) {
  const std::uint32_t* rp = wt.row_ptr();
  const std::uint32_t* col = wt.col();
  parallel_for(wt.rows(), static_cast<double>(wt.nnz()) * batch, [&](std::size_t o) {
    const float* yr = dyt + o * batch;
    for (std::uint32_t j = rp[o]; j < rp[o + 1]; ++j)
      gw[j] = dot8(yr, xt + static_cast<std::size_t>(col[j]) * batch, batch);
  });
}

// Direct batch-major kernels: the same sums in the same order, gathered per image.
inline void linear_forward_direct(const float* x, std::size_t batch, const CsrWeight& wt, float* y,
                                  const float* bias) {
  const std::size_t in = wt.cols(), out = wt.rows();
  const std::uint32_t* rp = wt.row_ptr();
  const std::uint32_t* col = wt.col();
  const float* val = wt.values();
  parallel_for(batch, static_cast<double>(wt.nnz() + out) * batch, [&](std::size_t n) {
    const float* xn = x + n * in;
    float* yn = y + n * out;
    for (std::size_t o = 0; o < out; ++o) {
      float acc = bias ? bias[o] : 0.0f;
      for (std::uint32_t j = rp[o]; j < rp[o + 1]; ++j) acc += val[j] * xn[col[j]];
      yn[o] = acc;
    }
  });
}
inline void linear_grad_input_direct(const float* dy, std::size_t batch, const CsrWeight& wt, float* dx) {
  const std::size_t in = wt.cols(), out = wt.rows();
  const std::uint32_t* gp = wt.group_ptr();
  const std::uint32_t* trow = wt.t_row();
  const std::uint32_t* tpos = wt.t_pos();
  const float* val = wt.values();
  parallel_for(batch, static_cast<double>(wt.nnz() + in) * batch, [&](std::size_t n) {
    const float* dyn = dy + n * out;
    float* dxn = dx + n * in;
    for (std::size_t i = 0; i < in; ++i) {
      float acc = 0.0f;
      for (std::uint32_t t = gp[i]; t < gp[i + 1]; ++t) acc += val[tpos[t]] * dyn[trow[t]];
      dxn[i] = acc;
    }
  });
}
inline void linear_grad_weight_direct(const float* x, const float* dy, std::size_t batch, const CsrWeight& wt,
                                      float* gw) {
  const std::size_t in = wt.cols(), out = wt.rows();
  const std::uint32_t* rp = wt.row_ptr();
  const std::uint32_t* col = wt.col();
  parallel_for(out, static_cast<double>(wt.nnz()) * batch, [&](std::size_t o) {
    for (std::uint32_t j = rp[o]; j < rp[o + 1]; ++j) gw[j] = dot8_strided(dy + o, out, x + col[j], in, batch);
  });
}
}  // namespace detail

/// Forward pass: y = x Wᵀ (+ bias). @param x {batch, in} (batch_major) or {in, batch}
/// (feature_major)  @param y {batch, out} or {out, batch}, overwritten  @param bias out floats or null.
inline void linear_forward(const float* x, std::size_t batch, const CsrWeight& wt, float* y,
                           const float* bias = nullptr, Layout layout = Layout::batch_major) {
  detail::check_linear(wt, batch, "east::sparse::linear_forward()");
  if (layout == Layout::feature_major) return detail::linear_forward_fm(x, batch, wt, y, bias);
  if (detail::gather_directly(wt)) return detail::linear_forward_direct(x, batch, wt, y, bias);
  const std::size_t in = wt.cols(), out = wt.rows();
  std::vector<float> xt(in * batch), yt(out * batch);
  detail::transpose(x, batch, in, xt.data());
  detail::linear_forward_fm(xt.data(), batch, wt, yt.data(), bias);
  detail::transpose(yt.data(), out, batch, y);
}

/// Gradient of the input: dx[n, i] = Σ_o dy[n, o] W[o, i]. @param dy {batch, out} (or {out,
/// batch})  @param dx {batch, in} (or {in, batch}), overwritten.
inline void linear_grad_input(const float* dy, std::size_t batch, const CsrWeight& wt, float* dx,
                              Layout layout = Layout::batch_major) {
  detail::check_linear(wt, batch, "east::sparse::linear_grad_input()");
  if (layout == Layout::feature_major) return detail::linear_grad_input_fm(dy, batch, wt, dx);
  if (detail::gather_directly(wt)) return detail::linear_grad_input_direct(dy, batch, wt, dx);
  const std::size_t in = wt.cols(), out = wt.rows();
  std::vector<float> dyt(out * batch), dxt(in * batch);
  detail::transpose(dy, batch, out, dyt.data());
  detail::linear_grad_input_fm(dyt.data(), batch, wt, dxt.data());
  detail::transpose(dxt.data(), in, batch, dx);
}

/// Gradient of the weights at stored positions only: gw[j] = Σ_n dy[n, o_j] x[n, i_j], nnz
/// floats, overwritten. Layouts as linear_forward.
inline void linear_grad_weight(const float* x, const float* dy, std::size_t batch, const CsrWeight& wt,
                               float* gw, Layout layout = Layout::batch_major) {
  detail::check_linear(wt, batch, "east::sparse::linear_grad_weight()");
  if (layout == Layout::feature_major) return detail::linear_grad_weight_fm(x, dy, batch, wt, gw);
  if (detail::gather_directly(wt)) return detail::linear_grad_weight_direct(x, dy, batch, wt, gw);
  const std::size_t in = wt.cols(), out = wt.rows();
  std::vector<float> xt(in * batch), dyt(out * batch);
  detail::transpose(x, batch, in, xt.data());
  detail::transpose(dy, batch, out, dyt.data());
  detail::linear_grad_weight_fm(xt.data(), dyt.data(), batch, wt, gw);
}

/// Dense weight gradient of outputs [row_begin, row_end) (row-major, in floats per row), for
/// scoring inactive positions at mask updates: batch multiply-adds per weight of those rows.
/// Element (r, i) is dot8 over the batch, the same sum linear_grad_weight forms at active positions.
inline void linear_grad_weight_rows(const float* x, const float* dy, std::size_t batch, std::size_t in,
                                    std::size_t out, std::size_t row_begin, std::size_t row_end, float* dst,
                                    Layout layout = Layout::batch_major) {
  constexpr const char* where = "east::sparse::linear_grad_weight_rows()";
  ::east::detail::require(batch >= 1 && in >= 1 && out >= 1, where, "batch ", batch, ", in ", in, ", out ",
                          out, " (valid: all >= 1)");
  ::east::detail::require(row_begin <= row_end && row_end <= out, where, "rows [", row_begin, ", ", row_end,
                          ") (valid: within [0, ", out, "])");
  std::vector<float> xt_buf, dyt_buf;
  const float* xt = x;
  const float* dyt = dy;
  if (layout == Layout::batch_major) {
    xt_buf.resize(in * batch);
    dyt_buf.resize(out * batch);
    detail::transpose(x, batch, in, xt_buf.data());
    detail::transpose(dy, batch, out, dyt_buf.data());
    xt = xt_buf.data();
    dyt = dyt_buf.data();
  }
  detail::parallel_for(row_end - row_begin, static_cast<double>(row_end - row_begin) * in * batch,
                       [&](std::size_t r) {
                         const float* yr = dyt + (row_begin + r) * batch;
                         for (std::size_t i = 0; i < in; ++i) dst[r * in + i] = detail::dot8(yr, xt + i * batch, batch);
                       });
}

}  // namespace east::sparse
