#pragma once
// BatchNorm (NCHW, per-channel statistics) fused with the optional residual add and ReLU that
// follow it in a ResNet: y = relu(BN(x) [+ residual]). Plain C++ (float or double), no torch; the
// libtorch autograd function and module are in adapters/torch/batchnorm.hpp.
//
// Why: in a 99.9%-sparse network the convolutions are cheap and the step is bound by the dense
// passes over activations. libtorch runs BN, add and ReLU as separate ops (~6 passes forward and
// backward per activation); here each channel is handled by one thread in two back-to-back passes
// over its N·H·W values (statistics, then normalize), so the second pass can find them in cache
// (on 32×32 planes at batch 64 it partly does not: docs/sparse.md has the measured cost).
//
// Semantics follow torch.nn.BatchNorm2d in training mode: batch statistics (biased variance for
// normalising), running_mean/var updated with the unbiased variance and `momentum`, saved mean and
// 1/sqrt(var + eps) for the backward. The backward takes the ReLU's mask from the output (y > 0),
// or, without a residual, recomputes it from the input (then y is not read).
// Determinism: every channel is reduced by one thread in a fixed order (float over at most 8 terms
// per lane, then double accumulators), so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

// Per-channel sums run on 64-byte vectors (GNU vector extensions: 16 floats or 8 doubles; one
// zmm, two ymm or four xmm registers, whichever the calling body was compiled for) in segments of
// kChains vectors × kTerms steps: the kChains independent accumulators keep the adds from waiting
// on one another (one chain ran at a quarter of the load rate), and each lane sums at most kTerms
// values in T before it is added into the channel's double accumulators (one per lane). The
// order is fixed, so results do not depend on the thread count.
inline constexpr std::size_t kChains = 4, kTerms = 8, kVectorBytes = 64;

template <class T>
struct Simd {
  static constexpr std::size_t lanes = kVectorBytes / sizeof(T);
  typedef std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t> bits_type;  // a lane's mask
#if (defined(__GNUC__) || defined(__clang__)) && !defined(EAST_NO_VECTOR_EXTENSIONS)
  typedef T vec __attribute__((vector_size(kVectorBytes)));
  typedef bits_type bits __attribute__((vector_size(kVectorBytes)));
#else  // other compilers: the same operations element by element
  template <class E>
  struct array {
    E v[lanes];
    E& operator[](std::size_t i) { return v[i]; }
    template <class F>
    friend array map(const array& a, const array& b, F f) {
      array r;
      for (std::size_t i = 0; i < lanes; ++i) r.v[i] = f(a.v[i], b.v[i]);
      return r;
    }
    static array all(E e) {
      array r;
      for (E& x : r.v) x = e;
      return r;
    }
    friend array operator+(const array& a, const array& b) { return map(a, b, [](E x, E y) { return x + y; }); }
    friend array operator-(const array& a, const array& b) { return map(a, b, [](E x, E y) { return x - y; }); }
    friend array operator*(const array& a, const array& b) { return map(a, b, [](E x, E y) { return x * y; }); }
    friend array operator&(const array& a, const array& b) { return map(a, b, [](E x, E y) { return x & y; }); }
    friend array operator+(const array& a, E b) { return a + all(b); }
    friend array operator-(const array& a, E b) { return a - all(b); }
    friend array operator*(const array& a, E b) { return a * all(b); }
    array& operator+=(const array& b) { return *this = *this + b; }
    array& operator-=(E b) { return *this = *this - b; }
    array& operator&=(const array& b) { return *this = *this & b; }
    friend array<bits_type> operator>(const array& a, const array& b) {
      array<bits_type> r;
      for (std::size_t i = 0; i < lanes; ++i) r.v[i] = a.v[i] > b.v[i] ? -1 : 0;
      return r;
    }
  };
  typedef array<T> vec;
  typedef array<bits_type> bits;
#endif
  static EAST_ALWAYS_INLINE void load(vec& v, const T* p) { std::memcpy(&v, p, sizeof v); }
  static EAST_ALWAYS_INLINE void store(T* p, const vec& v) { std::memcpy(p, &v, sizeof v); }
  // v where keep's lanes are true (all bits set), else +0: a select that cannot pass NaN through.
  static EAST_ALWAYS_INLINE void keep(vec& v, const bits& k) {
    bits b;
    std::memcpy(&b, &v, sizeof b);
    b &= k;
    std::memcpy(&v, &b, sizeof v);
  }
};

template <class T>
EAST_ALWAYS_INLINE double sum_lanes(const double* a) {
  double s[Simd<T>::lanes];
  for (std::size_t l = 0; l < Simd<T>::lanes; ++l) s[l] = a[l];
  for (std::size_t w = Simd<T>::lanes / 2; w >= 1; w /= 2)
    for (std::size_t l = 0; l < w; ++l) s[l] += s[l + w];
  return s[0];
}

// a1 += Σ u, a2 += Σ v over one plane of n values, (u, v) = f(offset, u, v) for a whole vector;
// a1 and a2 hold Simd<T>::lanes doubles each. The partial vector at the end is f applied to
// copies padded with zeros, masked to its lanes.
template <class T, class F>
EAST_ALWAYS_INLINE void plane_sums(std::size_t n, F&& f, double* EAST_RESTRICT a1, double* EAST_RESTRICT a2) {
  using S = Simd<T>;
  using V = typename S::vec;
  constexpr std::size_t W = S::lanes, segment = W * kChains * kTerms;
  std::size_t i = 0;
  while (i < n) {
    V s1[kChains] = {}, s2[kChains] = {};
    const std::size_t e = n - i > segment ? i + segment : n;
    bool whole_groups = false;
    for (; i + kChains * W <= e; i += kChains * W, whole_groups = true)
      for (std::size_t c = 0; c < kChains; ++c) {
        V u, v;
        f(i + c * W, u, v);
        s1[c] += u;
        s2[c] += v;
      }
    std::size_t c = 0;
    for (; i + W <= e; i += W, ++c) {  // fewer than kChains whole vectors left: one more term each
      V u, v;
      f(i, u, v);
      s1[c] += u;
      s2[c] += v;
    }
    if (i < e) {  // the partial vector
      V u, v;
      f.tail(i, e - i, u, v);
      typename S::bits k;
      for (std::size_t l = 0; l < W; ++l) k[l] = l < e - i ? -1 : 0;
      S::keep(u, k);
      S::keep(v, k);
      s1[c] += u;
      s2[c] += v;
      ++c;
      i = e;
    }
    for (std::size_t ch = 0, used = whole_groups ? kChains : c; ch < used; ++ch) {
      alignas(kVectorBytes) T t1[W], t2[W];
      S::store(t1, s1[ch]);
      S::store(t2, s2[ch]);
      for (std::size_t l = 0; l < W; ++l) {
        a1[l] += static_cast<double>(t1[l]);
        a2[l] += static_cast<double>(t2[l]);
      }
    }
  }
}
// (x − k, (x − k)²): the channel's moments about k (its first value, which keeps the one-pass
// variance accurate when |mean| ≫ std).
template <class T>
struct Moments {
  using S = Simd<T>;
  const T* x;
  T k;
  EAST_ALWAYS_INLINE void operator()(std::size_t i, typename S::vec& u, typename S::vec& v) const {
    S::load(u, x + i);
    u -= k;
    v = u * u;
  }
  EAST_ALWAYS_INLINE void tail(std::size_t i, std::size_t n, typename S::vec& u, typename S::vec& v) const {
    alignas(kVectorBytes) T t[S::lanes] = {};
    for (std::size_t l = 0; l < n; ++l) t[l] = x[i + l];
    Moments{t, k}(0, u, v);
  }
};

// How the backward finds the ReLU's mask: none (no ReLU), from the output (y > 0), or, when the
// forward added no residual, from the input ((x − mean)·a + b > 0, the forward's own arithmetic:
// affine() below), which spares reading y.
enum class Mask { none, from_output, from_input };

// The forward's pre-activation (x − mu)·a + b, one expression for the forward and the backward
// so that both round it alike.
template <class V, class T>
EAST_ALWAYS_INLINE V affine(V x, T mu, T a, T b) {
  return (x - mu) * a + b;
}

// g = dy where the ReLU passed (every lane for Mask::none), for one vector at offset i.
template <Mask M, class T>
EAST_ALWAYS_INLINE void masked_grad(typename Simd<T>::vec& g, const T* dy, const T* y, typename Simd<T>::vec xv,
                                    std::size_t i, T mu, T a, T b) {
  using S = Simd<T>;
  typename S::vec zero = {};
  S::load(g, dy + i);
  if constexpr (M == Mask::from_output) {
    typename S::vec yv;
    S::load(yv, y + i);
    S::keep(g, yv > zero);
  } else if constexpr (M == Mask::from_input) {
    S::keep(g, affine(xv, mu, a, b) > zero);
  }
}

// (g, g·(x − mu)) with g = dy masked by the ReLU.
template <Mask M, class T>
struct GradSums {
  using S = Simd<T>;
  const T *dy, *x, *y;
  T mu, a, b;
  EAST_ALWAYS_INLINE void operator()(std::size_t i, typename S::vec& u, typename S::vec& v) const {
    typename S::vec xv;
    S::load(xv, x + i);
    masked_grad<M, T>(u, dy, y, xv, i, mu, a, b);
    v = u * (xv - mu);
  }
  EAST_ALWAYS_INLINE void tail(std::size_t i, std::size_t n, typename S::vec& u, typename S::vec& v) const {
    alignas(kVectorBytes) T da[S::lanes] = {}, xa[S::lanes] = {}, ya[S::lanes] = {};
    for (std::size_t l = 0; l < n; ++l) {
      da[l] = dy[i + l];
      xa[l] = x[i + l];
      if (M == Mask::from_output) ya[l] = y[i + l];
    }
    GradSums{da, xa, ya, mu, a, b}(0, u, v);
  }
};

// y = relu((x − mean)·a + b [+ res]) over one plane (subtracting first keeps channels with
// |mean| ≫ std accurate). The ReLU is a select: NaN becomes 0.
template <bool Relu, class T>
EAST_ALWAYS_INLINE void normalize_plane(const T* EAST_RESTRICT x, const T* EAST_RESTRICT res, std::size_t n,
                                        T mu, T a, T b, T* EAST_RESTRICT y) {
  using S = Simd<T>;
  typename S::vec xv, r, zero = {};
  std::size_t i = 0;
  for (; i + S::lanes <= n; i += S::lanes) {
    S::load(xv, x + i);
    xv = affine(xv, mu, a, b);
    if (res) {
      S::load(r, res + i);
      xv += r;
    }
    if (Relu) S::keep(xv, xv > zero);
    S::store(y + i, xv);
  }
  for (; i < n; ++i) {
    T v = affine(x[i], mu, a, b);
    if (res) v += res[i];
    y[i] = (!Relu || v > T(0)) ? v : T(0);
  }
}

// dx = g·a + ((x − mu)·q + p) (and dres = g) over one plane; (a, b) the forward's scale and shift.
// dx may be dy (each element is read before it is written).
template <Mask M, class T>
EAST_ALWAYS_INLINE void grad_input_plane(const T* dy, const T* EAST_RESTRICT x, const T* EAST_RESTRICT y,
                                         std::size_t n, T mu, T a, T b, T p, T q, T* dx,
                                         T* EAST_RESTRICT dres) {
  using S = Simd<T>;
  typename S::vec g, xv;
  std::size_t i = 0;
  for (; i + S::lanes <= n; i += S::lanes) {
    S::load(xv, x + i);
    masked_grad<M, T>(g, dy, y, xv, i, mu, a, b);
    if (dres) S::store(dres + i, g);
    S::store(dx + i, g * a + ((xv - mu) * q + p));
  }
  for (; i < n; ++i) {
    const bool pass = M == Mask::none || (M == Mask::from_output ? y[i] > T(0) : affine(x[i], mu, a, b) > T(0));
    const T g1 = pass ? dy[i] : T(0);
    if (dres) dres[i] = g1;
    dx[i] = g1 * a + ((x[i] - mu) * q + p);
  }
}

/// Channels per work item: each (image, channel) plane is H·W floats, only 64 B on a 4×4 plane, so
/// walking one channel over the batch would touch one cache line per 32 KiB stride (latency-bound).
/// A block of channels makes each image's part one contiguous run, and is sized (~64 KiB per
/// array) so that the second pass over the block may still find it in cache.
inline constexpr std::size_t kMaxChannelBlock = 64;
inline std::size_t channel_block(const BatchNormShape& s) {
  const std::size_t per_channel_bytes = s.per_channel() * sizeof(float);
  const std::size_t b = (std::size_t{64} << 10) / per_channel_bytes;
  return std::max<std::size_t>(1, std::min({b, s.channels, kMaxChannelBlock}));
}

// The forward's per-channel scale gamma·invstd in T.
template <class T>
EAST_ALWAYS_INLINE T scale(const T* gamma, const T* save_invstd, std::size_t c) {
  return static_cast<T>((gamma ? static_cast<double>(gamma[c]) : 1.0) * static_cast<double>(save_invstd[c]));
}

// One work item (a block of channels) of the forward and of the backward. Their bodies are
// compiled once per instruction set (run_item below) from this one source.
template <class T>
struct ForwardItems {
  const BatchNormShape& s;
  const T *x, *residual, *gamma, *beta;
  T *running_mean, *running_var;
  const BatchNormOptions& o;
  T *y, *save_mean, *save_invstd;

  EAST_ALWAYS_INLINE void operator()(std::size_t item) const {
    constexpr std::size_t L = Simd<T>::lanes;
    const std::size_t m = s.per_channel(), cb = channel_block(s), c0 = item * cb, c1 = std::min(s.channels, c0 + cb);
    alignas(64) double a1[kMaxChannelBlock][L] = {}, a2[kMaxChannelBlock][L] = {};
    T mu[kMaxChannelBlock], sa[kMaxChannelBlock], sb[kMaxChannelBlock];
    if (o.training)
      for (std::size_t n = 0; n < s.batch; ++n)
        for (std::size_t c = c0; c < c1; ++c)
          plane_sums<T>(s.plane, Moments<T>{x + (n * s.channels + c) * s.plane, x[c * s.plane]}, a1[c - c0],
                        a2[c - c0]);
    for (std::size_t c = c0; c < c1; ++c) {
      double mean, var;
      if (o.training) {
        const double k = static_cast<double>(x[c * s.plane]);
        const double d = sum_lanes<T>(a1[c - c0]) / static_cast<double>(m);
        mean = k + d;
        var = std::max(0.0, sum_lanes<T>(a2[c - c0]) / static_cast<double>(m) - d * d);
        if (running_mean) {
          const double mo = o.momentum, unbiased = var * static_cast<double>(m) / static_cast<double>(m - 1);
          running_mean[c] = static_cast<T>((1.0 - mo) * static_cast<double>(running_mean[c]) + mo * mean);
          running_var[c] = static_cast<T>((1.0 - mo) * static_cast<double>(running_var[c]) + mo * unbiased);
        }
      } else {
        mean = static_cast<double>(running_mean[c]);
        var = static_cast<double>(running_var[c]);
      }
      // The scale from the saved (rounded) invstd: the backward recomputes it bit for bit.
      save_mean[c] = static_cast<T>(mean);
      save_invstd[c] = static_cast<T>(1.0 / std::sqrt(var + o.eps));
      mu[c - c0] = save_mean[c];
      sa[c - c0] = scale<T>(gamma, save_invstd, c);
      sb[c - c0] = beta ? beta[c] : T(0);
    }
    for (std::size_t n = 0; n < s.batch; ++n)
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t off = (n * s.channels + c) * s.plane, i = c - c0;
        const T* rp = residual ? residual + off : nullptr;
        if (o.relu)
          normalize_plane<true>(x + off, rp, s.plane, mu[i], sa[i], sb[i], y + off);
        else
          normalize_plane<false>(x + off, rp, s.plane, mu[i], sa[i], sb[i], y + off);
      }
  }
};

template <class T>
struct BackwardItems {
  const BatchNormShape& s;
  const T *dy, *x, *y, *gamma, *beta, *save_mean, *save_invstd;
  const BatchNormOptions& o;
  T *dx, *dresidual, *dgamma, *dbeta;

  EAST_ALWAYS_INLINE void operator()(std::size_t item) const {
    if (!o.relu)
      run<Mask::none>(item);
    else if (y)
      run<Mask::from_output>(item);
    else
      run<Mask::from_input>(item);
  }

  template <Mask M>
  EAST_ALWAYS_INLINE void run(std::size_t item) const {
    constexpr std::size_t L = Simd<T>::lanes;
    const std::size_t m = s.per_channel(), cb = channel_block(s), c0 = item * cb, c1 = std::min(s.channels, c0 + cb);
    T at[kMaxChannelBlock], bt[kMaxChannelBlock];
    for (std::size_t c = c0; c < c1; ++c) {
      at[c - c0] = scale<T>(gamma, save_invstd, c);
      bt[c - c0] = beta ? beta[c] : T(0);
    }
    // Pass 1: Σ g and Σ g·(x − mean) per channel, g = dy masked by the ReLU.
    alignas(64) double a1[kMaxChannelBlock][L] = {}, a2[kMaxChannelBlock][L] = {};
    for (std::size_t n = 0; n < s.batch; ++n)
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t off = (n * s.channels + c) * s.plane, i = c - c0;
        plane_sums<T>(s.plane, GradSums<M, T>{dy + off, x + off, y ? y + off : nullptr, save_mean[c], at[i], bt[i]},
                      a1[i], a2[i]);
      }
    // Pass 2: dx = k·(g − Σg/M − (x − mean)·invstd²·Σg(x − mean)/M), k = gamma·invstd; in eval the
    // statistics are constants, so dx = k·g. k in T is the forward's scale `at`.
    T pt[kMaxChannelBlock], qt[kMaxChannelBlock];
    for (std::size_t c = c0; c < c1; ++c) {
      const double invstd = static_cast<double>(save_invstd[c]);
      const double sg = sum_lanes<T>(a1[c - c0]), sgx = sum_lanes<T>(a2[c - c0]);
      if (dgamma) dgamma[c] = static_cast<T>(sgx * invstd);
      if (dbeta) dbeta[c] = static_cast<T>(sg);
      const double k = (gamma ? static_cast<double>(gamma[c]) : 1.0) * invstd;
      pt[c - c0] = o.training ? static_cast<T>(-k * sg / static_cast<double>(m)) : T(0);
      qt[c - c0] = o.training ? static_cast<T>(-k * invstd * invstd * sgx / static_cast<double>(m)) : T(0);
    }
    for (std::size_t n = 0; n < s.batch; ++n)
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t off = (n * s.channels + c) * s.plane, i = c - c0;
        grad_input_plane<M>(dy + off, x + off, y ? y + off : nullptr, s.plane, save_mean[c], at[i], bt[i], pt[i],
                            qt[i], dx + off, dresidual ? dresidual + off : nullptr);
      }
  }
};

// The items' bodies compiled for AVX-512 / AVX2 where the CPU has them (kernels::active_isa();
// kernels::set_isa(Isa::scalar) picks the baseline build): the vectors above then fill one zmm or
// two ymm registers instead of four xmm ones. Results may differ between instruction sets in the
// last bits (fused multiply-adds), never between thread counts.
template <class Items>
void run_item_baseline(const Items& items, std::size_t i) { items(i); }
#if defined(EAST_KERNELS_X86)
template <class Items>
EAST_TARGET_AVX2 void run_item_avx2(const Items& items, std::size_t i) { items(i); }
template <class Items>
EAST_TARGET_AVX512 void run_item_avx512(const Items& items, std::size_t i) { items(i); }
#endif

template <class Items>
void run_items(std::size_t count, double work, const Items& items) {
  void (*run)(const Items&, std::size_t) = &run_item_baseline<Items>;
#if defined(EAST_KERNELS_X86)
  const ::east::kernels::Isa isa = ::east::kernels::active_isa();
  if (isa == ::east::kernels::Isa::avx512) run = &run_item_avx512<Items>;
  else if (isa == ::east::kernels::Isa::avx2) run = &run_item_avx2<Items>;
#endif
  parallel_for(count, work, [&](std::size_t i) { run(items, i); });
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
  const std::size_t cb = detail::channel_block(s), items = (s.channels + cb - 1) / cb;
  detail::run_items(items, 4.0 * static_cast<double>(s.size()),
                    detail::ForwardItems<T>{s, x, residual, gamma, beta, running_mean, running_var, o, y,
                                            save_mean, save_invstd});
}

/// Backward of batchnorm_forward. @param dy gradient of y  @param x the forward input
/// @param y the forward output, for the ReLU's mask (y > 0); nullptr when the forward added no
/// residual: the mask is then recomputed from x, gamma and beta as the forward computed it, which
/// spares a read of y  @param gamma, beta the forward's (nullptr: 1 and 0)
/// @param save_mean, save_invstd from the forward  @param dx gradient of x; may be dy (in place)
/// @param dresidual gradient of the residual, or nullptr (no aliasing)
/// @param dgamma, dbeta C values, or nullptr. `o` must be the forward's.
template <class T>
void batchnorm_backward(const BatchNormShape& s, const T* dy, const T* x, const T* y, const T* gamma,
                        const T* beta, const T* save_mean, const T* save_invstd, const BatchNormOptions& o, T* dx,
                        T* dresidual, T* dgamma, T* dbeta) {
  constexpr const char* where = "east::sparse::batchnorm_backward()";
  detail::check_batchnorm(s, o, where);
  const std::size_t cb = detail::channel_block(s), items = (s.channels + cb - 1) / cb;
  detail::run_items(items, 6.0 * static_cast<double>(s.size()),
                    detail::BackwardItems<T>{s, dy, x, y, gamma, beta, save_mean, save_invstd, o, dx, dresidual,
                                             dgamma, dbeta});
}

}  // namespace east::sparse
