#pragma once
// BatchNorm (NCHW, per-channel statistics) fused with the optional residual add and ReLU that
// follow it in a ResNet: y = relu(BN(x) [+ residual]). Plain C++ (float or double), no torch; the
// libtorch autograd function and module are in adapters/torch_fused.hpp.
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
// Determinism: every channel is reduced by one thread in a fixed order with double accumulators,
// so results do not depend on the thread count.
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

// Σ a[i] and Σ a[i]² of (x − k) over one channel, 8 double partial sums in a fixed order (vectorizes
// without -ffast-math). The shift k (the channel's first value) keeps the one-pass variance accurate
// when |mean| ≫ std.
template <class T>
void channel_moments(const BatchNormShape& s, const T* x, std::size_t c, T k, double& s1, double& s2) {
  double a1[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const double kd = static_cast<double>(k);
  for (std::size_t n = 0; n < s.batch; ++n) {
    const T* p = x + (n * s.channels + c) * s.plane;
    std::size_t i = 0;
    for (; i + 8 <= s.plane; i += 8)
      for (std::size_t l = 0; l < 8; ++l) {
        const double d = static_cast<double>(p[i + l]) - kd;
        a1[l] += d;
        a2[l] += d * d;
      }
    for (std::size_t l = 0; i < s.plane; ++i, ++l) {
      const double d = static_cast<double>(p[i]) - kd;
      a1[l] += d;
      a2[l] += d * d;
    }
  }
  s1 = ((a1[0] + a1[1]) + (a1[2] + a1[3])) + ((a1[4] + a1[5]) + (a1[6] + a1[7]));
  s2 = ((a2[0] + a2[1]) + (a2[2] + a2[3])) + ((a2[4] + a2[5]) + (a2[6] + a2[7]));
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
  detail::parallel_for(s.channels, 4.0 * static_cast<double>(s.size()), [&](std::size_t c) {
    double mean, var;
    if (o.training) {
      double s1, s2;
      const T k = x[c * s.plane];
      detail::channel_moments(s, x, c, k, s1, s2);
      const double d = s1 / static_cast<double>(m);
      mean = static_cast<double>(k) + d;
      var = std::max(0.0, s2 / static_cast<double>(m) - d * d);
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
    // y = (x − mean)·a + b: subtracting first keeps channels with |mean| ≫ std accurate.
    const T mu = static_cast<T>(mean);
    const T a = static_cast<T>((gamma ? static_cast<double>(gamma[c]) : 1.0) * invstd);
    const T b = beta ? beta[c] : T(0);
    for (std::size_t n = 0; n < s.batch; ++n) {
      const std::size_t off = (n * s.channels + c) * s.plane;
      const T* EAST_RESTRICT xp = x + off;
      T* EAST_RESTRICT yp = y + off;
      if (residual) {
        const T* EAST_RESTRICT rp = residual + off;
        if (o.relu)
          for (std::size_t i = 0; i < s.plane; ++i) {
            const T v = (xp[i] - mu) * a + b + rp[i];
            yp[i] = v > T(0) ? v : T(0);
          }
        else
          for (std::size_t i = 0; i < s.plane; ++i) yp[i] = (xp[i] - mu) * a + b + rp[i];
      } else if (o.relu) {
        for (std::size_t i = 0; i < s.plane; ++i) {
          const T v = (xp[i] - mu) * a + b;
          yp[i] = v > T(0) ? v : T(0);
        }
      } else {
        for (std::size_t i = 0; i < s.plane; ++i) yp[i] = (xp[i] - mu) * a + b;
      }
    }
  });
}

/// Backward of batchnorm_forward. @param dy gradient of y  @param x, y the forward input and output
/// (y gives the ReLU mask)  @param save_mean, save_invstd from the forward
/// @param dx gradient of x (may alias dy)  @param dresidual gradient of the residual, or nullptr
/// (may alias dy, not dx)  @param dgamma, dbeta C values, or nullptr. `o` must be the forward's.
template <class T>
void batchnorm_backward(const BatchNormShape& s, const T* dy, const T* x, const T* y, const T* gamma,
                        const T* save_mean, const T* save_invstd, const BatchNormOptions& o, T* dx,
                        T* dresidual, T* dgamma, T* dbeta) {
  constexpr const char* where = "east::sparse::batchnorm_backward()";
  detail::check_batchnorm(s, o, where);
  const std::size_t m = s.per_channel();
  const bool relu = o.relu;
  detail::parallel_for(s.channels, 6.0 * static_cast<double>(s.size()), [&](std::size_t c) {
    const T mu = save_mean[c];
    const double invstd = static_cast<double>(save_invstd[c]);
    // Pass 1: Σ g and Σ g·(x − mean), g = dy masked by the ReLU.
    double a1[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (std::size_t n = 0; n < s.batch; ++n) {
      const std::size_t off = (n * s.channels + c) * s.plane;
      const T *dp = dy + off, *xp = x + off, *yp = y + off;
      std::size_t i = 0;
      auto term = [&](std::size_t j, std::size_t l) {
        const T g = (!relu || yp[j] > T(0)) ? dp[j] : T(0);
        a1[l] += static_cast<double>(g);
        a2[l] += static_cast<double>(g) * static_cast<double>(xp[j] - mu);
      };
      for (; i + 8 <= s.plane; i += 8)
        for (std::size_t l = 0; l < 8; ++l) term(i + l, l);
      for (std::size_t l = 0; i < s.plane; ++i, ++l) term(i, l);
    }
    const double sg = ((a1[0] + a1[1]) + (a1[2] + a1[3])) + ((a1[4] + a1[5]) + (a1[6] + a1[7]));
    const double sgx = ((a2[0] + a2[1]) + (a2[2] + a2[3])) + ((a2[4] + a2[5]) + (a2[6] + a2[7]));
    if (dgamma) dgamma[c] = static_cast<T>(sgx * invstd);
    if (dbeta) dbeta[c] = static_cast<T>(sg);
    // Pass 2: dx = k·(g − Σg/M − (x − mean)·invstd²·Σg(x − mean)/M), k = gamma·invstd; in eval the
    // statistics are constants, so dx = k·g.
    const double k = (gamma ? static_cast<double>(gamma[c]) : 1.0) * invstd;
    const T kt = static_cast<T>(k);
    const T p = o.training ? static_cast<T>(-k * sg / static_cast<double>(m)) : T(0);
    const T q = o.training ? static_cast<T>(-k * invstd * invstd * sgx / static_cast<double>(m)) : T(0);
    for (std::size_t n = 0; n < s.batch; ++n) {
      const std::size_t off = (n * s.channels + c) * s.plane;
      const T *dp = dy + off, *xp = x + off, *yp = y + off;
      T* dxp = dx + off;
      T* drp = dresidual ? dresidual + off : nullptr;
      for (std::size_t i = 0; i < s.plane; ++i) {
        const T g = (!relu || yp[i] > T(0)) ? dp[i] : T(0);
        if (drp) drp[i] = g;
        dxp[i] = g * kt + ((xp[i] - mu) * q + p);
      }
    }
  });
}

}  // namespace east::sparse
