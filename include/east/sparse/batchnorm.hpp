#pragma once
// BatchNorm (NCHW, per-channel statistics) fused with the optional residual add and ReLU that
// follow it in a ResNet: y = relu(BN(x) [+ residual]). Plain C++ (float or double), no torch; the
// libtorch autograd function and module are in adapters/torch/batchnorm.hpp.
//
// Why: in a 99.9%-sparse network the convolutions are cheap and the step is bound by the dense
// passes over activations. libtorch runs BN, add and ReLU as separate ops (~6 passes forward and
// backward per activation); here each channel is handled by one thread in two back-to-back passes
// over its N·H·W values (statistics, then normalize), so the second pass hits L2 and DRAM sees
// about one read and one write per activation each way.
//
// Semantics follow torch.nn.BatchNorm2d in training mode: batch statistics (biased variance for
// normalising), running_mean/var updated with the unbiased variance and `momentum`, saved mean and
// 1/sqrt(var + eps) for the backward. The backward recomputes the ReLU mask from the output (y > 0).
// Determinism: every channel is reduced by one thread in a fixed order (float over 8 terms per lane,
// then double accumulators), so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstddef>

#include "../config.hpp"
#include "../core/error.hpp"
#include "detail/parallel.hpp"

namespace east::sparse {

/// NCHW activation shape for BatchNorm: `plane` = H·W values per (image, channel).
struct BatchNormShape {
  std::size_t batch = 1, channels = 1, plane = 1;
  std::size_t size() const { return batch * channels * plane; }
  std::size_t per_channel() const { return batch * plane; }
};

struct BatchNormOptions {
  double momentum = 0.1;  ///< running = (1 − momentum)·running + momentum·batch statistic
  double eps = 1e-5;
  bool training = true;  ///< false: normalise with the running statistics, update nothing
  bool relu = true;      ///< apply ReLU after the (optional) residual add
};

namespace detail {

inline void check_batchnorm(const BatchNormShape& s, const BatchNormOptions& o, const char* where) {
  ::east::detail::require(s.batch >= 1 && s.channels >= 1 && s.plane >= 1, where, "shape ", s.batch, " x ",
                          s.channels, " x ", s.plane, " (valid: every size >= 1)");
  ::east::detail::require(!o.training || s.per_channel() > 1, where,
                          "expected more than 1 value per channel when training, got batch ", s.batch,
                          " x plane ", s.plane);
  ::east::detail::require(o.eps >= 0.0 && std::isfinite(o.eps), where, "eps ", o.eps,
                          " (valid: finite, >= 0)");
  ::east::detail::require(o.momentum >= 0.0 && o.momentum <= 1.0, where, "momentum ", o.momentum,
                          " (valid: [0, 1])");
}

inline double sum8(const double* a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Per-channel sums are taken in float over blocks of 64 values (8 lanes × 8, so the loop vectorizes
// without -ffast-math) and each block's lanes are added into double accumulators: float rounding
// spans at most 8 terms, and the order is fixed, so results do not depend on threads.
inline constexpr std::size_t kLanes = 8, kBlock = 64;

template <class T>
EAST_ALWAYS_INLINE void flush_lanes(const T* b1, const T* b2, double* EAST_RESTRICT a1,
                                    double* EAST_RESTRICT a2) {
  for (std::size_t l = 0; l < kLanes; ++l) {
    a1[l] += static_cast<double>(b1[l]);
    a2[l] += static_cast<double>(b2[l]);
  }
}

// a1 += Σ (x − k), a2 += Σ (x − k)² over one plane. The shift k (the channel's first value) keeps
// the one-pass variance accurate when |mean| ≫ std.
template <class T>
EAST_ALWAYS_INLINE void moments_plane(const T* EAST_RESTRICT p, std::size_t n, T k, double* EAST_RESTRICT a1,
                                      double* EAST_RESTRICT a2) {
  std::size_t i = 0;
  while (i < n) {
    T b1[kLanes] = {}, b2[kLanes] = {};
    const std::size_t e = n - i >= kBlock ? i + kBlock : n;
    for (; i + kLanes <= e; i += kLanes)
      for (std::size_t l = 0; l < kLanes; ++l) {
        const T d = p[i + l] - k;
        b1[l] += d;
        b2[l] += d * d;
      }
    for (std::size_t l = 0; i < e; ++i, ++l) {
      const T d = p[i] - k;
      b1[l] += d;
      b2[l] += d * d;
    }
    flush_lanes(b1, b2, a1, a2);
  }
}

// a1 += Σ g, a2 += Σ g·(x − mu) with g = dy masked by the ReLU (y > 0) when Relu. Every operand is
// loaded unconditionally so the select vectorizes.
template <bool Relu, class T>
EAST_ALWAYS_INLINE void grad_sums_plane(const T* EAST_RESTRICT dy, const T* EAST_RESTRICT x,
                                        const T* EAST_RESTRICT y, std::size_t n, T mu,
                                        double* EAST_RESTRICT a1, double* EAST_RESTRICT a2) {
  std::size_t i = 0;
  while (i < n) {
    T b1[kLanes] = {}, b2[kLanes] = {};
    const std::size_t e = n - i >= kBlock ? i + kBlock : n;
    for (; i + kLanes <= e; i += kLanes)
      for (std::size_t l = 0; l < kLanes; ++l) {
        const T d = dy[i + l], yv = y[i + l];
        const T g = (!Relu || yv > T(0)) ? d : T(0);
        b1[l] += g;
        b2[l] += g * (x[i + l] - mu);
      }
    for (std::size_t l = 0; i < e; ++i, ++l) {
      const T d = dy[i], yv = y[i];
      const T g = (!Relu || yv > T(0)) ? d : T(0);
      b1[l] += g;
      b2[l] += g * (x[i] - mu);
    }
    flush_lanes(b1, b2, a1, a2);
  }
}

// dx = g·k + ((x − mu)·q + p) (and dres = g) over one plane.
template <bool Relu, class T>
EAST_ALWAYS_INLINE void grad_input_plane(const T* EAST_RESTRICT dy, const T* EAST_RESTRICT x,
                                         const T* EAST_RESTRICT y, std::size_t n, T mu, T k, T p, T q,
                                         T* EAST_RESTRICT dx, T* EAST_RESTRICT dres) {
  if (dres) {
    for (std::size_t i = 0; i < n; ++i) {
      const T d = dy[i], yv = y[i];
      const T g = (!Relu || yv > T(0)) ? d : T(0);
      dres[i] = g;
      dx[i] = g * k + ((x[i] - mu) * q + p);
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      const T d = dy[i], yv = y[i];
      const T g = (!Relu || yv > T(0)) ? d : T(0);
      dx[i] = g * k + ((x[i] - mu) * q + p);
    }
  }
}

template <bool Relu, class T>
EAST_ALWAYS_INLINE void normalize_plane(const T* EAST_RESTRICT x, const T* EAST_RESTRICT res, std::size_t n,
                                        T mu, T a, T b, T* EAST_RESTRICT y) {
  // y = (x − mean)·a + b: subtracting first keeps channels with |mean| ≫ std accurate.
  if (res) {
    for (std::size_t i = 0; i < n; ++i) {
      const T v = (x[i] - mu) * a + b + res[i];
      y[i] = (!Relu || v > T(0)) ? v : T(0);
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      const T v = (x[i] - mu) * a + b;
      y[i] = (!Relu || v > T(0)) ? v : T(0);
    }
  }
}

/// Channels per work item: each (image, channel) plane is H·W floats, only 64 B on a 4×4 plane, so
/// walking one channel over the batch would touch one cache line per 32 KiB stride (latency-bound).
/// A block of channels makes each image's part one contiguous run, and is sized (~64 KiB per
/// array) so that the second pass over the block still finds it in L2.
inline constexpr std::size_t kMaxChannelBlock = 64;
inline std::size_t channel_block(const BatchNormShape& s) {
  const std::size_t per_channel_bytes = s.per_channel() * sizeof(float);
  const std::size_t b = (std::size_t{64} << 10) / per_channel_bytes;
  return std::max<std::size_t>(1, std::min({b, s.channels, kMaxChannelBlock}));
}

}  // namespace detail

/// Forward. @param x {N, C, H·W}  @param residual added before the ReLU, or nullptr
/// @param gamma, beta C values, or nullptr (1 and 0: no affine)
/// @param running_mean, running_var C values, or nullptr (no running statistics: training uses
/// batch statistics, and eval then needs them) — updated in training mode
/// @param y output, may not alias x  @param save_mean, save_invstd C values written for the
/// backward (the batch statistics in training, the running ones in eval).
template <class T>
void batchnorm_forward(const BatchNormShape& s, const T* x, const T* residual, const T* gamma, const T* beta,
                       T* running_mean, T* running_var, const BatchNormOptions& o, T* y, T* save_mean,
                       T* save_invstd) {
  constexpr const char* where = "east::sparse::batchnorm_forward()";
  detail::check_batchnorm(s, o, where);
  ::east::detail::require(o.training || (running_mean && running_var), where,
                          "eval mode needs running_mean and running_var");
  const std::size_t m = s.per_channel();
  const std::size_t cb = detail::channel_block(s), items = (s.channels + cb - 1) / cb;
  detail::parallel_for(items, 4.0 * static_cast<double>(s.size()), [&](std::size_t item) {
    const std::size_t c0 = item * cb, c1 = std::min(s.channels, c0 + cb);
    double a1[detail::kMaxChannelBlock][8] = {}, a2[detail::kMaxChannelBlock][8] = {};
    T mu[detail::kMaxChannelBlock], sa[detail::kMaxChannelBlock], sb[detail::kMaxChannelBlock];
    if (o.training)
      for (std::size_t n = 0; n < s.batch; ++n)
        for (std::size_t c = c0; c < c1; ++c)
          detail::moments_plane(x + (n * s.channels + c) * s.plane, s.plane, x[c * s.plane], a1[c - c0],
                                a2[c - c0]);
    for (std::size_t c = c0; c < c1; ++c) {
      double mean, var;
      if (o.training) {
        const double k = static_cast<double>(x[c * s.plane]);
        const double d = detail::sum8(a1[c - c0]) / static_cast<double>(m);
        mean = k + d;
        var = std::max(0.0, detail::sum8(a2[c - c0]) / static_cast<double>(m) - d * d);
        if (running_mean) {
          const double mo = o.momentum, unbiased = var * static_cast<double>(m) / static_cast<double>(m - 1);
          running_mean[c] = static_cast<T>((1.0 - mo) * static_cast<double>(running_mean[c]) + mo * mean);
          running_var[c] = static_cast<T>((1.0 - mo) * static_cast<double>(running_var[c]) + mo * unbiased);
        }
      } else {
        mean = static_cast<double>(running_mean[c]);
        var = static_cast<double>(running_var[c]);
      }
      const double invstd = 1.0 / std::sqrt(var + o.eps);
      save_mean[c] = static_cast<T>(mean);
      save_invstd[c] = static_cast<T>(invstd);
      mu[c - c0] = static_cast<T>(mean);
      sa[c - c0] = static_cast<T>((gamma ? static_cast<double>(gamma[c]) : 1.0) * invstd);
      sb[c - c0] = beta ? beta[c] : T(0);
    }
    for (std::size_t n = 0; n < s.batch; ++n)
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t off = (n * s.channels + c) * s.plane, i = c - c0;
        const T* rp = residual ? residual + off : nullptr;
        if (o.relu)
          detail::normalize_plane<true>(x + off, rp, s.plane, mu[i], sa[i], sb[i], y + off);
        else
          detail::normalize_plane<false>(x + off, rp, s.plane, mu[i], sa[i], sb[i], y + off);
      }
  });
}

/// Backward of batchnorm_forward. @param dy gradient of y  @param x, y the forward input and output
/// (y gives the ReLU mask)  @param save_mean, save_invstd from the forward
/// @param dx gradient of x  @param dresidual gradient of the residual, or nullptr (no aliasing)
/// @param dgamma, dbeta C values, or nullptr. `o` must be the forward's.
template <class T>
void batchnorm_backward(const BatchNormShape& s, const T* dy, const T* x, const T* y, const T* gamma,
                        const T* save_mean, const T* save_invstd, const BatchNormOptions& o, T* dx,
                        T* dresidual, T* dgamma, T* dbeta) {
  constexpr const char* where = "east::sparse::batchnorm_backward()";
  detail::check_batchnorm(s, o, where);
  const std::size_t m = s.per_channel();
  const bool relu = o.relu;
  const std::size_t cb = detail::channel_block(s), items = (s.channels + cb - 1) / cb;
  detail::parallel_for(items, 6.0 * static_cast<double>(s.size()), [&](std::size_t item) {
    const std::size_t c0 = item * cb, c1 = std::min(s.channels, c0 + cb);
    // Pass 1: Σ g and Σ g·(x − mean) per channel, g = dy masked by the ReLU.
    double a1[detail::kMaxChannelBlock][8] = {}, a2[detail::kMaxChannelBlock][8] = {};
    for (std::size_t n = 0; n < s.batch; ++n)
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t off = (n * s.channels + c) * s.plane;
        if (relu)
          detail::grad_sums_plane<true>(dy + off, x + off, y + off, s.plane, save_mean[c], a1[c - c0],
                                        a2[c - c0]);
        else
          detail::grad_sums_plane<false>(dy + off, x + off, y + off, s.plane, save_mean[c], a1[c - c0],
                                         a2[c - c0]);
      }
    // Pass 2: dx = k·(g − Σg/M − (x − mean)·invstd²·Σg(x − mean)/M), k = gamma·invstd; in eval the
    // statistics are constants, so dx = k·g.
    T kt[detail::kMaxChannelBlock], pt[detail::kMaxChannelBlock], qt[detail::kMaxChannelBlock];
    for (std::size_t c = c0; c < c1; ++c) {
      const double invstd = static_cast<double>(save_invstd[c]);
      const double sg = detail::sum8(a1[c - c0]), sgx = detail::sum8(a2[c - c0]);
      if (dgamma) dgamma[c] = static_cast<T>(sgx * invstd);
      if (dbeta) dbeta[c] = static_cast<T>(sg);
      const double k = (gamma ? static_cast<double>(gamma[c]) : 1.0) * invstd;
      kt[c - c0] = static_cast<T>(k);
      pt[c - c0] = o.training ? static_cast<T>(-k * sg / static_cast<double>(m)) : T(0);
      qt[c - c0] = o.training ? static_cast<T>(-k * invstd * invstd * sgx / static_cast<double>(m)) : T(0);
    }
    for (std::size_t n = 0; n < s.batch; ++n)
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t off = (n * s.channels + c) * s.plane, i = c - c0;
        T* dr = dresidual ? dresidual + off : nullptr;
        if (relu)
          detail::grad_input_plane<true>(dy + off, x + off, y + off, s.plane, save_mean[c], kt[i], pt[i],
                                         qt[i], dx + off, dr);
        else
          detail::grad_input_plane<false>(dy + off, x + off, y + off, s.plane, save_mean[c], kt[i], pt[i],
                                          qt[i], dx + off, dr);
      }
  });
}

}  // namespace east::sparse
