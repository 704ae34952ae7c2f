#pragma once
// Kernels of EAST's residual weight sharing (EAST-SPEC section 3): one stored tensor W (and its
// mask) serves several uses i, each through its own learnable scalar s_i, so use i sees the
// effective weight s_i W. Backward adds every use's gradient back onto the one stored tensor:
//     dW  += sum_i s_i dW_i          ds_i += <W, dW_i>
// where dW_i is the gradient w.r.t. use i's effective weight. Pure functions over caller
// buffers; which tensors are shared and the sparse budget are the parameter set's business.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/error.hpp"

namespace east {

namespace detail {

// Dot products are summed in double over fixed-size chunks combined in chunk order, so the
// result is the same for any thread count.
constexpr std::size_t kSharedDotChunk = 1 << 14;

template <class T>
double chunk_dot(const T* EAST_RESTRICT a, const T* EAST_RESTRICT b, std::size_t n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t p = 0;
  for (; p + 8 <= n; p += 8)
    for (int l = 0; l < 8; ++l) lane[l] += static_cast<double>(a[p + l]) * static_cast<double>(b[p + l]);
  for (int l = 0; p < n; ++p, ++l) lane[l] += static_cast<double>(a[p]) * static_cast<double>(b[p]);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

}  // namespace detail

/// <a, b> accumulated in double in a fixed order (independent of threads).
/// @tparam T float or double.
template <class T>
double shared_dot(const T* a, const T* b, std::size_t n) {
  detail::require(n == 0 || (a != nullptr && b != nullptr), "shared_dot", "a or b is null with n ", n);
  const std::size_t chunks = (n + detail::kSharedDotChunk - 1) / detail::kSharedDotChunk;
  if (chunks <= 1) return detail::chunk_dot(a, b, n);
  std::vector<double> partial(chunks);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (std::int64_t c = 0; c < static_cast<std::int64_t>(chunks); ++c) {
    const std::size_t lo = static_cast<std::size_t>(c) * detail::kSharedDotChunk;
    const std::size_t len = std::min(detail::kSharedDotChunk, n - lo);
    partial[static_cast<std::size_t>(c)] = detail::chunk_dot(a + lo, b + lo, len);
  }
  double sum = 0.0;
  for (double v : partial) sum += v;
  return sum;
}

/// Effective weight of one use: out = scale * w (n elements). `out` may alias `w`.
template <class T>
void shared_effective_weight(const T* w, T scale, T* out, std::size_t n) {
  detail::require(n == 0 || (w != nullptr && out != nullptr), "shared_effective_weight",
                  "w or out is null with n ", n);
  for (std::size_t j = 0; j < n; ++j) out[j] = scale * w[j];
}

/// Backward of one use: dw += scale * dw_use and *dscale += <w, dw_use> (double accumulation).
/// Calling it for uses 0, 1, ... in order gives the same bits as shared_weight_backward.
/// @param w the stored tensor.  @param dw_use gradient w.r.t. this use's effective weight.
/// @param scale this use's scalar s_i.  @param dw gradient of the stored tensor (added to).
/// @param dscale gradient of s_i (added to); may be nullptr when s_i is not learned.
template <class T>
void shared_use_backward(const T* w, const T* dw_use, T scale, T* dw, T* dscale, std::size_t n) {
  constexpr const char* where = "shared_use_backward";
  detail::require(n == 0 || (w != nullptr && dw_use != nullptr && dw != nullptr), where,
                  "w, dw_use or dw is null with n ", n);
  if (dscale != nullptr) *dscale += static_cast<T>(shared_dot(w, dw_use, n));
  for (std::size_t j = 0; j < n; ++j) dw[j] += scale * dw_use[j];
}

/// Backward of all uses of one stored tensor at once:
/// dw[j] += sum_i scales[i] * dw_uses[i][j] (added in use order) and
/// dscales[i] += <w, dw_uses[i]>.
/// @param w the stored tensor, n elements.
/// @param dw_uses `uses` pointers, gradient w.r.t. each use's effective weight.
/// @param scales `uses` scalars s_i.
/// @param dw gradient of the stored tensor (added to).
/// @param dscales `uses` gradients of the scalars (added to); nullptr skips them.
template <class T>
void shared_weight_backward(const T* w, const T* const* dw_uses, const T* scales, std::size_t uses, T* dw,
                            T* dscales, std::size_t n) {
  constexpr const char* where = "shared_weight_backward";
  detail::require(uses == 0 || (dw_uses != nullptr && scales != nullptr), where,
                  "dw_uses or scales is null with uses ", uses);
  detail::require(n == 0 || (w != nullptr && dw != nullptr), where, "w or dw is null with n ", n);
  for (std::size_t i = 0; i < uses; ++i)
    detail::require(n == 0 || dw_uses[i] != nullptr, where, "dw_uses[", i, "] is null");
  if (dscales != nullptr)
    for (std::size_t i = 0; i < uses; ++i) dscales[i] += static_cast<T>(shared_dot(w, dw_uses[i], n));
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n * (uses + 1) >= (1u << 16))
#endif
  for (std::int64_t j = 0; j < static_cast<std::int64_t>(n); ++j) {
    T acc = dw[j];
    for (std::size_t i = 0; i < uses; ++i) acc += scales[i] * dw_uses[i][j];
    dw[j] = acc;
  }
}

}  // namespace east
