#pragma once
// DyReLU-B (Chen et al., "Dynamic ReLU", ECCV 2020) with EAST's phasing, forward and backward
// over plain NCHW buffers. Framework-free: the caller owns every tensor (parameters, gradients,
// activations) and passes views; the kernels own nothing but an optional scratch workspace.
//
// Per sample b and channel c, with K = 2 pieces:
//   theta = GAP_HW(x)                               (B x C)
//   u     = W1 theta + b1,  h = ReLU(u)             (B x hidden),  W1: hidden x C
//   z     = W2 h + b2,      d = 2 sigmoid(z) - 1    (B x 4C),      W2: 4C x hidden
//   [a1, a2, b1, b2] = init + beta * lambda * d[b, 4c .. 4c+3]
//        init = [1, 0, 0, 0], lambda = [1, 1, 0.5, 0.5]
//   y = max(a1 x + b1, a2 x + b2)
// The blend c <- beta c + (1 - beta) init equals init + beta lambda d, which is what is computed.
// Layout of the 4C hyper-network outputs: channel-major, [a1, a2, b1, b2] contiguous per channel
// (output row 4c + j of W2), exactly as `theta.view(B, C, 2K)` in the reference DyReLUB.
// See docs/activations.md.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/random.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace east {

/// Hidden width of DyReLU-B's hyper-network for C channels: max(1, floor(C / reduction)).
/// For C >= reduction this is PyTorch's `C // reduction`; below that the reference code would
/// build a zero-width layer, so east keeps one hidden unit instead.
inline int dyrelu_hidden_size(int channels, int reduction = 4) {
  detail::require(channels >= 1, "dyrelu_hidden_size", "channels ", channels, " must be >= 1");
  detail::require(reduction >= 1, "dyrelu_hidden_size", "reduction ", reduction, " must be >= 1");
  return std::max(1, channels / reduction);
}

/// Read-only views of one DyReLU-B layer's hyper-network parameters (row-major, nn.Linear layout).
/// @tparam T float or double.
template <class T>
struct DyReLUParams {
  const T* fc1_weight = nullptr;  ///< hidden x C
  const T* fc1_bias = nullptr;    ///< hidden
  const T* fc2_weight = nullptr;  ///< 4C x hidden; row 4c + j is coefficient j of channel c
  const T* fc2_bias = nullptr;    ///< 4C
  int hidden = 0;                 ///< hidden width; 0 means dyrelu_hidden_size(C)
};

/// Writable views of the gradients of the same tensors (same shapes). Kernels *add* into them,
/// as autograd does, so zero them before a step.
template <class T>
struct DyReLUGrads {
  T* fc1_weight = nullptr;
  T* fc1_bias = nullptr;
  T* fc2_weight = nullptr;
  T* fc2_bias = nullptr;
};

/// Element counts and offsets of the four tensors when stored back to back in one flat buffer
/// (fc1_weight, fc1_bias, fc2_weight, fc2_bias).
struct DyReLUSizes {
  int channels = 0;
  int hidden = 0;
  std::size_t fc1_weight = 0, fc1_bias = 0, fc2_weight = 0, fc2_bias = 0;
  std::size_t fc1_bias_offset = 0, fc2_weight_offset = 0, fc2_bias_offset = 0;
  std::size_t total = 0;  ///< number of learnable scalars of the layer
};

/// Sizes of a DyReLU-B layer with `channels` channels; hidden = 0 picks dyrelu_hidden_size.
inline DyReLUSizes dyrelu_sizes(int channels, int hidden = 0) {
  detail::require(channels >= 1, "dyrelu_sizes", "channels ", channels, " must be >= 1");
  detail::require(hidden >= 0, "dyrelu_sizes", "hidden ", hidden, " must be >= 0 (0 = max(1, C/4))");
  DyReLUSizes s;
  s.channels = channels;
  s.hidden = hidden == 0 ? dyrelu_hidden_size(channels) : hidden;
  const auto c = static_cast<std::size_t>(channels), h = static_cast<std::size_t>(s.hidden);
  s.fc1_weight = h * c;
  s.fc1_bias = h;
  s.fc2_weight = 4 * c * h;
  s.fc2_bias = 4 * c;
  s.fc1_bias_offset = s.fc1_weight;
  s.fc2_weight_offset = s.fc1_bias_offset + s.fc1_bias;
  s.fc2_bias_offset = s.fc2_weight_offset + s.fc2_weight;
  s.total = s.fc2_bias_offset + s.fc2_bias;
  return s;
}

/// Parameter views into a flat buffer of dyrelu_sizes(channels, hidden).total elements.
template <class T>
DyReLUParams<T> dyrelu_params_from_flat(const T* flat, int channels, int hidden = 0) {
  detail::require(flat != nullptr, "dyrelu_params_from_flat", "flat is null");
  const DyReLUSizes s = dyrelu_sizes(channels, hidden);
  return {flat, flat + s.fc1_bias_offset, flat + s.fc2_weight_offset, flat + s.fc2_bias_offset, s.hidden};
}

/// Gradient views into a flat buffer laid out like dyrelu_params_from_flat.
template <class T>
DyReLUGrads<T> dyrelu_grads_from_flat(T* flat, int channels, int hidden = 0) {
  detail::require(flat != nullptr, "dyrelu_grads_from_flat", "flat is null");
  const DyReLUSizes s = dyrelu_sizes(channels, hidden);
  return {flat, flat + s.fc1_bias_offset, flat + s.fc2_weight_offset, flat + s.fc2_bias_offset};
}

/// Initialises a flat parameter buffer like PyTorch's nn.Linear default: every weight and bias
/// of a layer with fan-in n drawn from U(-1/sqrt(n), 1/sqrt(n)). Deterministic in `stream`.
template <class T>
void dyrelu_init_flat(T* flat, int channels, int hidden, RandomStream stream) {
  detail::require(flat != nullptr, "dyrelu_init_flat", "flat is null");
  const DyReLUSizes s = dyrelu_sizes(channels, hidden);
  const double r1 = 1.0 / std::sqrt(static_cast<double>(channels));
  const double r2 = 1.0 / std::sqrt(static_cast<double>(s.hidden));
  for (std::size_t i = 0; i < s.total; ++i) {
    const double r = i < s.fc2_weight_offset ? r1 : r2;
    flat[i] = static_cast<T>((2.0 * stream.uniform(i) - 1.0) * r);
  }
}

/// Intermediates of one forward call, needed by the matching backward call, plus backward's
/// scratch. Reuse one per layer across steps: buffers only grow. Not thread-safe per object.
template <class T>
struct DyReLUWorkspace {
  std::vector<T> theta;   ///< B x C pooled means
  std::vector<T> u;       ///< B x hidden pre-ReLU hidden activations
  std::vector<T> d;       ///< B x 4C, 2 sigmoid(z) - 1
  std::vector<T> coef;    ///< B x 4C blended [a1, a2, b1, b2] per channel
  std::vector<T> dcoef;   ///< backward scratch, B x 4C
  std::vector<T> du;      ///< backward scratch, B x hidden
  std::vector<T> dtheta;  ///< backward scratch, B x C
  // Shape and beta of the forward call that filled the buffers; checked by backward.
  int batch = 0, channels = 0, height = 0, width = 0, hidden = 0;
  double beta = 0.0;
  bool ready = false;

  /// The coefficients [a1, a2, b1, b2] the last forward used for sample b, channel c
  /// (not meaningful after a beta = 0 forward, which computes none).
  const T* coefficients(int b, int c) const {
    return coef.data() + (static_cast<std::size_t>(b) * channels + c) * 4;
  }
};

namespace detail {

inline std::int64_t dyrelu_plane_count(int B, int C) {
  return static_cast<std::int64_t>(B) * static_cast<std::int64_t>(C);
}

// Sum of n values in double with 8 independent lanes (so the compiler can vectorise) combined
// in a fixed order: the result does not depend on threads.
template <class T>
double plane_sum(const T* EAST_RESTRICT x, std::int64_t n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t p = 0;
  for (; p + 8 <= n; p += 8)
    for (int l = 0; l < 8; ++l) lane[l] += static_cast<double>(x[p + l]);
  for (int l = 0; p < n; ++p, ++l) lane[l] += static_cast<double>(x[p]);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// Work below this many elements runs on one thread: threading tiny layers costs more than it saves.
constexpr std::int64_t kDyReLUParallelMin = 1 << 15;

inline void dyrelu_check_shape(const char* where, int B, int C, int H, int W) {
  require(B >= 1, where, "B ", B, " must be >= 1");
  require(C >= 1, where, "C ", C, " must be >= 1");
  require(H >= 1, where, "H ", H, " must be >= 1");
  require(W >= 1, where, "W ", W, " must be >= 1");
}

template <class T>
int dyrelu_check_params(const char* where, const DyReLUParams<T>& p, int C) {
  require(p.hidden >= 0, where, "params.hidden ", p.hidden, " must be >= 0 (0 = max(1, C/4))");
  require(p.fc1_weight != nullptr, where, "params.fc1_weight is null");
  require(p.fc1_bias != nullptr, where, "params.fc1_bias is null");
  require(p.fc2_weight != nullptr, where, "params.fc2_weight is null");
  require(p.fc2_bias != nullptr, where, "params.fc2_bias is null");
  return p.hidden == 0 ? dyrelu_hidden_size(C) : p.hidden;
}

template <class T>
void resize_at_least(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

inline int dyrelu_max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Runs per-plane `first`, per-sample `middle`, per-plane `last` for B samples of C planes,
/// deterministically. With enough samples it goes sample by sample (its planes are still in
/// cache for `last`); with fewer samples than threads it splits planes, phase by phase.
template <class First, class Middle, class Last>
void dyrelu_three_phases(std::int64_t B, std::int64_t C, std::int64_t total, const First& first,
                         const Middle& middle, const Last& last) {
  const std::int64_t planes = B * C;
  const bool parallel = total >= kDyReLUParallelMin;
  if (!parallel || B >= dyrelu_max_threads()) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t pl = b * C; pl < (b + 1) * C; ++pl) first(pl);
      middle(b);
      for (std::int64_t pl = b * C; pl < (b + 1) * C; ++pl) last(pl);
    }
  } else {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (std::int64_t pl = 0; pl < planes; ++pl) first(pl);
    for (std::int64_t b = 0; b < B; ++b) middle(b);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (std::int64_t pl = 0; pl < planes; ++pl) last(pl);
  }
}

// The per-plane and per-sample steps below are shared by the two loop orders (fused per sample,
// or phase by phase over all planes), so both give the same bits.

// Hyper-network of one sample: theta (C) -> u (hidden) -> d, coef (4C).
template <class T>
void dyrelu_hyper_forward(const DyReLUParams<T>& p, int C, int hidden, T beta, const T* theta, T* u, T* d,
                          T* coef) {
  for (int i = 0; i < hidden; ++i) {
    const T* w = p.fc1_weight + static_cast<std::int64_t>(i) * C;
    T acc = p.fc1_bias[i];
    for (int c = 0; c < C; ++c) acc += w[c] * theta[c];
    u[i] = acc;
  }
  for (int o = 0; o < 4 * C; ++o) {
    const T* w = p.fc2_weight + static_cast<std::int64_t>(o) * hidden;
    T acc = p.fc2_bias[o];
    for (int i = 0; i < hidden; ++i) acc += w[i] * (u[i] > T(0) ? u[i] : T(0));
    // 2 sigmoid(z) - 1 == tanh(z / 2), which stays accurate for large |z|.
    const T dv = std::tanh(acc / T(2));
    d[o] = dv;
    const int j = o & 3;
    const T lambda = j < 2 ? T(1) : T(0.5);
    coef[o] = (j == 0 ? T(1) : T(0)) + beta * lambda * dv;
  }
}

// y = max(a1 x + b1, a2 x + b2) over one plane; y may alias x.
template <class T>
void dyrelu_plane_apply(const T* coef, const T* x, T* y, std::int64_t hw) {
  const T a1 = coef[0], a2 = coef[1], b1 = coef[2], b2 = coef[3];
  for (std::int64_t p = 0; p < hw; ++p) {
    const T xv = x[p];
    const T y1 = a1 * xv + b1, y2 = a2 * xv + b2;
    y[p] = y1 >= y2 ? y1 : y2;
  }
}

// dL/d[a1, a2, b1, b2] of one plane: sum dy x and sum dy over the pixels each piece wins.
// Pixels are summed in kLanes T lanes (vectorisable) over chunks of kChunk pixels, each chunk's
// lanes then added to double totals in a fixed order: accurate on long planes, thread-free.
template <class T>
void dyrelu_plane_coef_grad(const T* coef, const T* EAST_RESTRICT x, const T* EAST_RESTRICT dy,
                            std::int64_t hw, T* dcoef) {
  constexpr int kLanes = 16;
  constexpr std::int64_t kChunk = 1024;
  const T a1 = coef[0], a2 = coef[1], b1 = coef[2], b2 = coef[3];
  // Sums over all pixels and over piece-2 pixels; piece 1 gets their difference.
  double gx_all = 0.0, g_all = 0.0, gx2 = 0.0, g2 = 0.0;
  for (std::int64_t lo = 0; lo < hw; lo += kChunk) {
    const std::int64_t hi = std::min(hw, lo + kChunk);
    T lgx[kLanes] = {}, lg[kLanes] = {}, lgx2[kLanes] = {}, lg2[kLanes] = {};
    auto add = [&](std::int64_t q, int l) {
      const T xv = x[q], g = dy[q];
      const T second = a2 * xv + b2 > a1 * xv + b1 ? T(1) : T(0);
      lgx[l] += g * xv;
      lg[l] += g;
      lgx2[l] += second * (g * xv);
      lg2[l] += second * g;
    };
    std::int64_t p = lo;
    for (; p + kLanes <= hi; p += kLanes)
      for (int l = 0; l < kLanes; ++l) add(p + l, l);
    for (int l = 0; p < hi; ++p, ++l) add(p, l);
    for (int l = 0; l < kLanes; ++l) {
      gx_all += static_cast<double>(lgx[l]);
      g_all += static_cast<double>(lg[l]);
      gx2 += static_cast<double>(lgx2[l]);
      g2 += static_cast<double>(lg2[l]);
    }
  }
  dcoef[0] = static_cast<T>(gx_all - gx2);
  dcoef[1] = static_cast<T>(gx2);
  dcoef[2] = static_cast<T>(g_all - g2);
  dcoef[3] = static_cast<T>(g2);
}

// Hyper-network backward of one sample: dcoef (4C, overwritten with dL/dz) -> du (hidden)
// -> dtheta (C).
template <class T>
void dyrelu_hyper_backward(const DyReLUParams<T>& p, int C, int hidden, T beta, const T* u, const T* d, T* dz,
                           T* du, T* dtheta) {
  for (int o = 0; o < 4 * C; ++o) {
    const T lambda = (o & 3) < 2 ? T(1) : T(0.5);
    // d(2 sigmoid(z) - 1)/dz = (1 - d^2) / 2.
    dz[o] = dz[o] * beta * lambda * (T(1) - d[o] * d[o]) / T(2);
  }
  for (int i = 0; i < hidden; ++i) du[i] = T(0);
  for (int o = 0; o < 4 * C; ++o) {  // dh = W2^T dz, row by row for contiguous W2 reads
    const T* w = p.fc2_weight + static_cast<std::int64_t>(o) * hidden;
    const T g = dz[o];
    for (int i = 0; i < hidden; ++i) du[i] += w[i] * g;
  }
  for (int i = 0; i < hidden; ++i) du[i] = u[i] > T(0) ? du[i] : T(0);
  for (int c = 0; c < C; ++c) dtheta[c] = T(0);
  for (int i = 0; i < hidden; ++i) {  // dtheta = W1^T du
    const T* w = p.fc1_weight + static_cast<std::int64_t>(i) * C;
    const T g = du[i];
    for (int c = 0; c < C; ++c) dtheta[c] += w[c] * g;
  }
}

// dx = dy * slope of the winning piece + dtheta / HW (the pool spreads its gradient evenly)
// over one plane; dx may alias dy.
template <class T>
void dyrelu_plane_dx(const T* coef, T pool, const T* EAST_RESTRICT x, const T* dy, T* dx, std::int64_t hw) {
  const T a1 = coef[0], a2 = coef[1], b1 = coef[2], b2 = coef[3];
  for (std::int64_t p = 0; p < hw; ++p) {
    const T xv = x[p];
    const T slope = a2 * xv + b2 > a1 * xv + b1 ? a2 : a1;
    dx[p] = dy[p] * slope + pool;
  }
}

}  // namespace detail

/// DyReLU-B forward with phasing.
///
/// beta = 1 is full DyReLU-B, beta = 0 is exactly ReLU (fast path: the hyper-network is not
/// evaluated and `params` may be all null), in between the coefficients are blended toward
/// ReLU's [1, 0, 0, 0]. `y` may alias `x` when no backward pass follows (backward needs x).
/// Threads (OpenMP, when enabled) split samples, or planes when there are fewer samples than
/// threads; every plane and sample is computed the same way, so results do not depend on threads.
/// @tparam T float or double.
/// @param params hyper-network parameters (ignored when beta = 0).
/// @param x input, B x C x H x W contiguous.  @param y output, same shape.
/// @param beta phase blend in [0, 1].
/// @param ws workspace that records what backward needs; pass the same one to dyrelu_backward.
template <class T>
void dyrelu_forward(const DyReLUParams<T>& params, const T* x, T* y, int B, int C, int H, int W, double beta,
                    DyReLUWorkspace<T>& ws) {
  constexpr const char* where = "dyrelu_forward";
  detail::dyrelu_check_shape(where, B, C, H, W);
  detail::require(x != nullptr, where, "x is null");
  detail::require(y != nullptr, where, "y is null");
  detail::require(beta >= 0.0 && beta <= 1.0, where, "beta ", beta, " is outside [0, 1]");
  const std::int64_t planes = detail::dyrelu_plane_count(B, C);
  const std::int64_t hw = static_cast<std::int64_t>(H) * W;
  const std::int64_t total = planes * hw;
  ws.ready = false;
  ws.batch = B, ws.channels = C, ws.height = H, ws.width = W, ws.beta = beta;

  if (beta == 0.0) {
    // Exactly ReLU: the blend leaves [1, 0, 0, 0], so max(x, 0) with no hyper-network work.
    ws.hidden = 0;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (total >= detail::kDyReLUParallelMin)
#endif
    for (std::int64_t i = 0; i < total; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
    ws.ready = true;
    return;
  }

  const int hidden = detail::dyrelu_check_params(where, params, C);
  ws.hidden = hidden;
  detail::resize_at_least(ws.theta, static_cast<std::size_t>(planes));
  detail::resize_at_least(ws.u, static_cast<std::size_t>(B) * hidden);
  detail::resize_at_least(ws.d, static_cast<std::size_t>(planes) * 4);
  detail::resize_at_least(ws.coef, static_cast<std::size_t>(planes) * 4);
  T* const theta = ws.theta.data();
  T* const u = ws.u.data();
  T* const d = ws.d.data();
  T* const coef = ws.coef.data();
  const double inv_hw = 1.0 / static_cast<double>(hw);
  const T tb = static_cast<T>(beta);
  auto pool = [&](std::int64_t pl) {
    theta[pl] = static_cast<T>(detail::plane_sum(x + pl * hw, hw) * inv_hw);
  };
  auto hyper = [&](std::int64_t b) {
    detail::dyrelu_hyper_forward(params, C, hidden, tb, theta + b * C, u + b * hidden, d + b * 4 * C,
                                 coef + b * 4 * C);
  };
  auto apply = [&](std::int64_t pl) {
    detail::dyrelu_plane_apply(coef + pl * 4, x + pl * hw, y + pl * hw, hw);
  };
  detail::dyrelu_three_phases(B, C, total, pool, hyper, apply);
  ws.ready = true;
}

/// DyReLU-B backward for the forward call that filled `ws` (same x, shape and beta).
///
/// Writes dx (including the path through the global average pool into the hyper-network) and
/// *adds* the hyper-network parameter gradients into `*grads`. Pass grads = nullptr to freeze
/// the hyper-network: no parameter gradients, dx is still exact. After a beta = 0 forward this
/// is ReLU's backward and leaves `*grads` untouched (the gradients are zero). `dx` may alias
/// `dy`. At a tie a1 x + b1 == a2 x + b2 the gradient goes to piece 1; at u == 0 ReLU's
/// derivative is taken as 0 (PyTorch's conventions).
/// @param params the parameters used by the forward call (ignored when its beta was 0).
/// @param x the forward input.  @param dy gradient of the loss w.r.t. y.  @param dx output.
/// @param ws the workspace of the matching forward call; its scratch buffers are reused.
/// @param grads where to add parameter gradients, or nullptr (frozen hyper-network).
template <class T>
void dyrelu_backward(const DyReLUParams<T>& params, const T* x, const T* dy, T* dx, int B, int C, int H,
                     int W, DyReLUWorkspace<T>& ws, const DyReLUGrads<T>* grads = nullptr) {
  constexpr const char* where = "dyrelu_backward";
  detail::dyrelu_check_shape(where, B, C, H, W);
  detail::require(x != nullptr, where, "x is null");
  detail::require(dy != nullptr, where, "dy is null");
  detail::require(dx != nullptr, where, "dx is null");
  detail::require(ws.ready, where, "workspace holds no forward pass; call dyrelu_forward first");
  detail::require(ws.batch == B && ws.channels == C && ws.height == H && ws.width == W, where, "shape B=", B,
                  " C=", C, " H=", H, " W=", W, " differs from the forward pass's B=", ws.batch,
                  " C=", ws.channels, " H=", ws.height, " W=", ws.width);
  const std::int64_t planes = detail::dyrelu_plane_count(B, C);
  const std::int64_t hw = static_cast<std::int64_t>(H) * W;
  const std::int64_t total = planes * hw;

  if (ws.beta == 0.0) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (total >= detail::kDyReLUParallelMin)
#endif
    for (std::int64_t i = 0; i < total; ++i) dx[i] = x[i] > T(0) ? dy[i] : T(0);
    return;
  }

  const int hidden = detail::dyrelu_check_params(where, params, C);
  detail::require(hidden == ws.hidden, where, "params hidden ", hidden, " differs from the forward pass's ",
                  ws.hidden);
  if (grads != nullptr) {
    detail::require(grads->fc1_weight != nullptr, where, "grads->fc1_weight is null");
    detail::require(grads->fc1_bias != nullptr, where, "grads->fc1_bias is null");
    detail::require(grads->fc2_weight != nullptr, where, "grads->fc2_weight is null");
    detail::require(grads->fc2_bias != nullptr, where, "grads->fc2_bias is null");
  }
  detail::resize_at_least(ws.dcoef, static_cast<std::size_t>(planes) * 4);
  detail::resize_at_least(ws.du, static_cast<std::size_t>(B) * hidden);
  detail::resize_at_least(ws.dtheta, static_cast<std::size_t>(planes));
  const T* const theta = ws.theta.data();
  const T* const u = ws.u.data();
  const T* const d = ws.d.data();
  const T* const coef = ws.coef.data();
  T* const dz = ws.dcoef.data();  // holds dL/dcoef, then in place dL/dz
  T* const du = ws.du.data();
  T* const dtheta = ws.dtheta.data();

  const T tb = static_cast<T>(ws.beta);
  const T inv_hw = static_cast<T>(1.0 / static_cast<double>(hw));
  auto coef_grad = [&](std::int64_t pl) {
    detail::dyrelu_plane_coef_grad(coef + pl * 4, x + pl * hw, dy + pl * hw, hw, dz + pl * 4);
  };
  auto hyper = [&](std::int64_t b) {
    detail::dyrelu_hyper_backward(params, C, hidden, tb, u + b * hidden, d + b * 4 * C, dz + b * 4 * C,
                                  du + b * hidden, dtheta + b * C);
  };
  auto input_grad = [&](std::int64_t pl) {
    detail::dyrelu_plane_dx(coef + pl * 4, dtheta[pl] * inv_hw, x + pl * hw, dy + pl * hw, dx + pl * hw, hw);
  };
  // 1-2. Coefficient gradients per plane, then the hyper-network backward per sample, then dx;
  // the same loop-order choice as the forward pass.
  detail::dyrelu_three_phases(B, C, total, coef_grad, hyper, input_grad);

  // 3. Parameter gradients, summed over the batch in sample order (deterministic).
  [[maybe_unused]] const std::int64_t hyper_work = static_cast<std::int64_t>(B) * C * hidden * 5;
  if (grads != nullptr) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (hyper_work >= detail::kDyReLUParallelMin)
#endif
    for (int o = 0; o < 4 * C; ++o) {
      T* gw = grads->fc2_weight + static_cast<std::int64_t>(o) * hidden;
      T gb = T(0);
      for (int b = 0; b < B; ++b) {
        const T g = dz[static_cast<std::int64_t>(b) * 4 * C + o];
        const T* ub = u + static_cast<std::int64_t>(b) * hidden;
        gb += g;
        for (int i = 0; i < hidden; ++i) gw[i] += g * (ub[i] > T(0) ? ub[i] : T(0));
      }
      grads->fc2_bias[o] += gb;
    }
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (hyper_work >= detail::kDyReLUParallelMin)
#endif
    for (int i = 0; i < hidden; ++i) {
      T* gw = grads->fc1_weight + static_cast<std::int64_t>(i) * C;
      T gb = T(0);
      for (int b = 0; b < B; ++b) {
        const T g = du[static_cast<std::int64_t>(b) * hidden + i];
        const T* th = theta + static_cast<std::int64_t>(b) * C;
        gb += g;
        for (int c = 0; c < C; ++c) gw[c] += g * th[c];
      }
      grads->fc1_bias[i] += gb;
    }
  }
}

}  // namespace east
