#pragma once
// Sparse 2-D convolution (NCHW activations, CsrWeight weights, dilation 1, no groups) whose cost
// is proportional to the nonzeros: every kernel visits only the stored entries, and for each one
// does a shifted multiply-add over an output plane ("direct sparse convolution"). Activations
// stay dense in PyTorch's layout, so no conversion is needed at the layer boundary.
//
// Work per call: nnz · N · H_out · W_out multiply-adds (the dense layer does C_out·C_in·k_h·k_w
// times that divided by nnz), plus one pass over the output (forward), the input gradient, or
// nothing (weight gradient). Threads: forward over (image, output channel), input gradient over
// (image, input channel), weight gradient over output channels; results are identical for any
// thread count.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/error.hpp"
#include "csr.hpp"
#include "detail/conv_simd.hpp"
#include "detail/parallel.hpp"

namespace east::sparse {

/// Shapes of one convolution: input {batch, c_in, h, w}, weight {c_out, c_in, kh, kw}.
struct Conv2dGeometry {
  std::size_t batch = 1, c_in = 1, h = 1, w = 1;
  std::size_t c_out = 1, kh = 1, kw = 1;
  std::size_t stride_h = 1, stride_w = 1;
  std::size_t pad_h = 0, pad_w = 0;

  /// Square kernel, stride and padding, as ResNets use.
  static Conv2dGeometry square(std::size_t batch, std::size_t c_in, std::size_t hw, std::size_t c_out,
                               std::size_t k, std::size_t stride, std::size_t pad) {
    return {batch, c_in, hw, hw, c_out, k, k, stride, stride, pad, pad};
  }
  std::size_t out_h() const { return (h + 2 * pad_h - kh) / stride_h + 1; }
  std::size_t out_w() const { return (w + 2 * pad_w - kw) / stride_w + 1; }
  std::size_t input_size() const { return batch * c_in * h * w; }
  std::size_t output_size() const { return batch * c_out * out_h() * out_w(); }
  std::size_t weight_size() const { return c_out * c_in * kh * kw; }

  /// Throws InvalidArgument naming `where` unless the geometry is usable.
  void check(const char* where) const {
    ::east::detail::require(batch >= 1 && c_in >= 1 && h >= 1 && w >= 1 && c_out >= 1 && kh >= 1 && kw >= 1,
                            where, "every size must be >= 1 (got batch ", batch, ", c_in ", c_in, ", h ", h,
                            ", w ", w, ", c_out ", c_out, ", kernel ", kh, "x", kw, ")");
    ::east::detail::require(stride_h >= 1 && stride_w >= 1, where, "stride ", stride_h, "x", stride_w,
                            " (valid: >= 1)");
    ::east::detail::require(h + 2 * pad_h >= kh && w + 2 * pad_w >= kw, where, "kernel ", kh, "x", kw,
                            " is larger than the padded input ", h + 2 * pad_h, "x", w + 2 * pad_w);
  }
  /// Throws unless `wt` is this layer's weight (C_out rows, C_in·kh·kw columns, groups of kh·kw).
  void check_weight(const CsrWeight& wt, const char* where) const {
    check(where);
    ::east::detail::require(wt.rows() == c_out && wt.cols() == c_in * kh * kw && wt.group_size() == kh * kw,
                            where, "weight is ", wt.rows(), " x ", wt.cols(), " in groups of ",
                            wt.group_size(), " (valid: ", c_out, " x ", c_in * kh * kw, " in groups of ",
                            kh * kw, ")");
  }
};

namespace detail {

/// Channels per work item of the forward and input-gradient passes.
inline constexpr std::size_t kChannelBlock = 16;
/// Images per work item of the small-plane (≤ 64 outputs) forward and input-gradient passes: one
/// register group (16 / windows per plane). Items walk the channel blocks of one group before
/// the next group, so the group's inputs (C_in planes per image) stay in L2 across blocks.
inline std::size_t small_images(int nw) { return nw == 1 ? 16 : (nw == 2 ? 8 : 4); }

/// Output positions o in [lo, hi) whose input position o·stride − pad + k lies in [0, in).
struct Span {
  std::size_t lo, hi;
};
inline Span valid_span(std::size_t in, std::size_t out, std::size_t k, std::size_t stride, std::size_t pad) {
  const auto p = static_cast<std::ptrdiff_t>(pad), kk = static_cast<std::ptrdiff_t>(k);
  const auto s = static_cast<std::ptrdiff_t>(stride);
  const std::ptrdiff_t first = p - kk > 0 ? (p - kk + s - 1) / s : 0;           // o·s ≥ pad − k
  const std::ptrdiff_t last_in = static_cast<std::ptrdiff_t>(in) - 1 + p - kk;  // o·s ≤ in − 1 + pad − k
  if (last_in < 0) return {0, 0};
  const std::ptrdiff_t hi = std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(out), last_in / s + 1);
  if (hi <= first) return {0, 0};
  return {static_cast<std::size_t>(first), static_cast<std::size_t>(hi)};
}

/// Per-layer tables of the valid output spans of every kernel row r and column s.
struct ConvSpans {
  std::vector<Span> rows, cols;
  explicit ConvSpans(const Conv2dGeometry& g) {
    for (std::size_t r = 0; r < g.kh; ++r) rows.push_back(valid_span(g.h, g.out_h(), r, g.stride_h, g.pad_h));
    for (std::size_t s = 0; s < g.kw; ++s) cols.push_back(valid_span(g.w, g.out_w(), s, g.stride_w, g.pad_w));
  }
};

/// Offset in the input plane of output (oh, ow) for kernel tap (r, s); valid inside the spans.
EAST_ALWAYS_INLINE std::size_t in_offset(const Conv2dGeometry& g, std::size_t oh, std::size_t ow,
                                         std::size_t r, std::size_t s) {
  return (oh * g.stride_h + r - g.pad_h) * g.w + (ow * g.stride_w + s - g.pad_w);
}

// y[i] += v · x[i·stride] for i < n: the inner loop of the forward pass.
EAST_ALWAYS_INLINE void axpy_strided(float v, const float* EAST_RESTRICT x, std::size_t stride,
                                     float* EAST_RESTRICT y, std::size_t n) {
  if (stride == 1) {
    for (std::size_t i = 0; i < n; ++i) y[i] += v * x[i];
  } else {
    for (std::size_t i = 0; i < n; ++i) y[i] += v * x[i * stride];
  }
}
// x[i·stride] += v · y[i]: the inner loop of the input gradient.
EAST_ALWAYS_INLINE void axpy_scatter(float v, const float* EAST_RESTRICT y, std::size_t stride,
                                     float* EAST_RESTRICT x, std::size_t n) {
  if (stride == 1) {
    for (std::size_t i = 0; i < n; ++i) x[i] += v * y[i];
  } else {
    for (std::size_t i = 0; i < n; ++i) x[i * stride] += v * y[i];
  }
}
// Σ y[i] · x[i·stride]: the inner loop of the weight gradient (8 partial sums so it vectorizes
// without -ffast-math; the order is fixed, so results do not depend on threads).
EAST_ALWAYS_INLINE float dot_strided(const float* EAST_RESTRICT y, const float* EAST_RESTRICT x,
                                     std::size_t stride, std::size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  if (stride == 1) {
    for (; i + 8 <= n; i += 8)
      for (std::size_t l = 0; l < 8; ++l) acc[l] += y[i + l] * x[i + l];
  } else {
    for (; i + 8 <= n; i += 8)
      for (std::size_t l = 0; l < 8; ++l) acc[l] += y[i + l] * x[(i + l) * stride];
  }
  for (std::size_t l = 0; i < n; ++i, ++l) acc[l] += y[i] * x[i * stride];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/// Σ over the valid outputs of tap (r, s) of dy(oh, ow) · x(in_offset): one weight's gradient
/// contribution from one image plane.
inline float tap_dot(const Conv2dGeometry& g, const ConvSpans& sp, const float* dy, const float* x,
                     std::size_t r, std::size_t s) {
  const Span sh = sp.rows[r], sw = sp.cols[s];
  const std::size_t wo = g.out_w();
  float acc = 0.0f;
  if (sw.hi <= sw.lo) return acc;
  for (std::size_t oh = sh.lo; oh < sh.hi; ++oh)
    acc += dot_strided(dy + oh * wo + sw.lo, x + in_offset(g, oh, sw.lo, r, s), g.stride_w, sw.hi - sw.lo);
  return acc;
}

/// "Same" stride-1 convolutions (3×3 pad 1, 1×1 pad 0): input and output rows have the same
/// length, so the rows of one tap's valid block are one contiguous run in both planes (offset by a
/// constant). One multiply-add over that run replaces a call per row — the per-row overhead dominates
/// on 8×8 and 4×4 planes. The run's elements in columns the tap must not touch (the wrapped left
/// or right edge) are masked out by a select, not a multiply, so non-finite inputs there cannot leak.
struct FlatRuns {
  bool ok = false;
  // kw masks of out_h·out_w: 1 where the column is valid for tap column s. Kept per thread and
  // reused across calls (a fresh allocation per call cost as much as a small layer's work).
  std::vector<float>& masks;
  /// The layers it serves: stride 1, rows as long as the input's.
  static bool applies(const Conv2dGeometry& g) { return g.stride_h == 1 && g.stride_w == 1 && g.out_w() == g.w; }
  explicit FlatRuns(const Conv2dGeometry& g, const ConvSpans& sp) : masks(buffer()) {
    ok = applies(g);
    if (!ok) return;
    const std::size_t wo = g.out_w(), hwo = g.out_h() * wo;
    masks.assign(g.kw * hwo, 0.0f);
    for (std::size_t s = 0; s < g.kw; ++s)
      for (std::size_t o = 0; o < hwo; ++o) {
        const std::size_t ow = o % wo;
        masks[s * hwo + o] = (ow >= sp.cols[s].lo && ow < sp.cols[s].hi) ? 1.0f : 0.0f;
      }
  }
  /// Output positions [o0, o1) of tap (r, s) as one run (valid when the spans are non-empty), its
  /// input offset in0 (input index = in0 + (o − o0)), and whether the run needs the column mask.
  struct Run {
    std::size_t o0, n, in0;
    const float* mask;  // nullptr: every column valid
  };
  static std::vector<float>& buffer() {
    thread_local std::vector<float> m;
    return m;
  }
  Run run(const Conv2dGeometry& g, const ConvSpans& sp, std::size_t r, std::size_t s) const {
    const Span sh = sp.rows[r], sw = sp.cols[s];
    const std::size_t wo = g.out_w(), o0 = sh.lo * wo + sw.lo, o1 = (sh.hi - 1) * wo + sw.hi;
    const bool full = sw.lo == 0 && sw.hi == wo;
    return {o0, o1 - o0, in_offset(g, sh.lo, sw.lo, r, s),
            full ? nullptr : masks.data() + s * g.out_h() * wo + o0};
  }
};

/// Every stored weight's run, decoded once per call: the kernels then do no index arithmetic
/// (two integer divisions per weight and image before) in their inner loops.
struct FlatTap {
  std::size_t x_off;  // ci·H·W + input offset of the run, from an image's first input plane
  std::size_t o0, n;  // first output position of the run and its length (0: the tap is never valid)
  const float* mask;  // column mask or nullptr
};
inline const std::vector<FlatTap>& flat_taps(const Conv2dGeometry& g, const ConvSpans& sp, const FlatRuns& fr,
                                             const CsrWeight& wt) {
  thread_local std::vector<FlatTap> taps;  // reused across calls, like FlatRuns::masks
  taps.clear();
  if (!fr.ok) return taps;
  taps.resize(wt.nnz());
  const std::size_t khw = g.kh * g.kw, hw = g.h * g.w;
  const std::uint32_t* col = wt.col();
  for (std::size_t j = 0; j < taps.size(); ++j) {
    const std::size_t c = col[j], ci = c / khw, rs = c - ci * khw, r = rs / g.kw, s = rs - r * g.kw;
    if (sp.rows[r].hi <= sp.rows[r].lo || sp.cols[s].hi <= sp.cols[s].lo) {
      taps[j] = {0, 0, 0, nullptr};
      continue;
    }
    const auto run = fr.run(g, sp, r, s);
    taps[j] = {ci * hw + run.in0, run.o0, run.n, run.mask};
  }
  return taps;
}

/// Flat layers whose output plane has at most 64 positions (8×8, 4×4, 7×7): per kernel tap (r, s)
/// the 64-bit set of output positions it reaches (mo) and of the input positions it reads (mi),
/// its constant input shift, and per stored weight the shift including its input channel. The
/// AVX-512 kernels then keep a whole plane in registers (detail/conv_simd.hpp).
struct FlatSmall {
  bool ok = false;
  int nw = 0;  // 16-float windows per plane
  std::vector<std::uint64_t>& mo;
  std::vector<std::uint64_t>& mi;
  std::vector<std::ptrdiff_t>& d;      // per (r, s)
  std::vector<std::ptrdiff_t>& shift;  // per stored weight: ci·H·W + d
  std::vector<std::uint16_t>& rs;      // per stored weight
  FlatSmall(const Conv2dGeometry& g, const ConvSpans& sp, const FlatRuns& fr, const CsrWeight& wt, bool simd)
      : mo(buf<std::uint64_t, 0>()),
        mi(buf<std::uint64_t, 1>()),
        d(buf<std::ptrdiff_t, 2>()),
        shift(buf<std::ptrdiff_t, 3>()),
        rs(buf<std::uint16_t, 4>()) {
    const std::size_t wo = g.out_w(), hwo = g.out_h() * wo, khw = g.kh * g.kw, hw = g.h * g.w;
    ok = simd && fr.ok && hwo <= 64 && khw <= 65535;
    if (!ok) return;
    nw = static_cast<int>((hwo + 15) / 16);
    mo.assign(khw, 0);
    mi.assign(khw, 0);
    d.assign(khw, 0);
    for (std::size_t r = 0; r < g.kh; ++r)
      for (std::size_t s = 0; s < g.kw; ++s) {
        const std::size_t t = r * g.kw + s;
        d[t] = (static_cast<std::ptrdiff_t>(r) - static_cast<std::ptrdiff_t>(g.pad_h)) *
                   static_cast<std::ptrdiff_t>(g.w) +
               (static_cast<std::ptrdiff_t>(s) - static_cast<std::ptrdiff_t>(g.pad_w));
        for (std::size_t p = 0; p < hwo; ++p) {
          const std::size_t oh = p / wo, ow = p - oh * wo;
          if (oh < sp.rows[r].lo || oh >= sp.rows[r].hi || ow < sp.cols[s].lo || ow >= sp.cols[s].hi)
            continue;
          mo[t] |= std::uint64_t{1} << p;
          mi[t] |= std::uint64_t{1} << static_cast<std::size_t>(static_cast<std::ptrdiff_t>(p) + d[t]);
        }
      }
    const std::size_t nnz = wt.nnz();
    shift.resize(nnz);
    rs.resize(nnz);
    const std::uint32_t* col = wt.col();
    for (std::size_t j = 0; j < nnz; ++j) {
      const std::size_t c = col[j], ci = c / khw, t = c - ci * khw;
      rs[j] = static_cast<std::uint16_t>(t);
      shift[j] = static_cast<std::ptrdiff_t>(ci * hw) + d[t];
    }
  }
  template <class T, int Id>
  static std::vector<T>& buf() {
    thread_local std::vector<T> v;  // reused across calls
    return v;
  }
};

/// Whether the flat kernels take their AVX-512 bodies (detail/conv_simd.hpp).
inline bool flat_avx512() {
#if defined(EAST_KERNELS_X86)
  return ::east::kernels::active_isa() == ::east::kernels::Isa::avx512;
#else
  return false;
#endif
}
/// Whether a layer with stride 2 along rows takes the AVX-512 row bodies (avx512::*_even_rows).
inline bool stride2_avx512(const Conv2dGeometry& g) { return g.stride_w == 2 && flat_avx512(); }

/// A strided convolution run as a stride-1 one over its input's phases ("polyphase"). Along one
/// dimension with stride S and padding P, tap r reads input row oh·S + r − P = S·(oh + dr) + a
/// with a = (r − P) mod S: row oh + dr of phase plane a (the rows S·i + a). So each stored weight
/// becomes one weight of a stride-1 layer whose input channels are (channel, phase) pairs, and the
/// stride-1 kernels (contiguous runs, planes in registers) apply. Only the phases some tap reads
/// are built: one for a 1×1 stride-2 layer, four for a 3×3 one. Cost: the input copied into phase
/// planes (forward, weight gradient) or the input gradient copied out of them, one pass each.
struct PhaseDim {
  bool ok = false;
  std::vector<std::size_t> phases;        // offsets a in use, increasing
  std::vector<std::size_t> phase_of, r1;  // per tap r: index into phases, tap in the stride-1 layer
  std::size_t n1 = 0, k1 = 0, p1 = 0;     // phase plane length, stride-1 kernel size and padding
};
inline PhaseDim phase_dim(std::size_t in, std::size_t out, std::size_t k, std::size_t stride, std::size_t pad) {
  PhaseDim d;
  const auto S = static_cast<std::ptrdiff_t>(stride);
  std::vector<std::ptrdiff_t> a(k), dr(k);
  for (std::size_t r = 0; r < k; ++r) {
    const std::ptrdiff_t t = static_cast<std::ptrdiff_t>(r) - static_cast<std::ptrdiff_t>(pad);
    a[r] = ((t % S) + S) % S;
    dr[r] = (t - a[r]) / S;
    d.phases.push_back(static_cast<std::size_t>(a[r]));
  }
  std::sort(d.phases.begin(), d.phases.end());
  d.phases.erase(std::unique(d.phases.begin(), d.phases.end()), d.phases.end());
  const std::ptrdiff_t lo = *std::min_element(dr.begin(), dr.end()), hi = *std::max_element(dr.begin(), dr.end());
  d.p1 = static_cast<std::size_t>(std::max<std::ptrdiff_t>(0, -lo));
  d.n1 = (in - d.phases.front() + stride - 1) / stride;  // the first phase is the longest
  if (d.n1 == 0) return d;                                // every phase read lies in the padding
  // The kernel size that gives the same output length (taps beyond the used ones stay empty).
  const auto k1 = static_cast<std::ptrdiff_t>(d.n1 + 2 * d.p1 + 1) - static_cast<std::ptrdiff_t>(out);
  if (k1 < static_cast<std::ptrdiff_t>(d.p1) + hi + 1) return d;
  d.k1 = static_cast<std::size_t>(k1);
  for (std::size_t r = 0; r < k; ++r) {
    d.phase_of.push_back(static_cast<std::size_t>(
        std::lower_bound(d.phases.begin(), d.phases.end(), static_cast<std::size_t>(a[r])) - d.phases.begin()));
    d.r1.push_back(static_cast<std::size_t>(dr[r] + static_cast<std::ptrdiff_t>(d.p1)));
  }
  d.ok = true;
  return d;
}

/// Which strided layers run as stride-1 over phase planes: 0 none; 1 (default) those reading one
/// phase (1×1 stride 2: the split is a subsample) or with output rows shorter than 16 (the
/// stride-2 row bodies would run partial vectors); 2 all. ResNet-34 at batch 64, in the training
/// step: the 16×16 and 8×8 inputs gain 1.3–2.5× per pass with the split, the 32×32 one (16-wide
/// output rows) loses ~1.4× in forward and input gradient to the copy (docs/sparse.md). Tests
/// switch it to cover both paths.
inline std::atomic<int>& phase_split_policy() noexcept {
  static std::atomic<int> v{1};
  return v;
}

struct StrideSplit {
  bool ok = false;
  Conv2dGeometry g1;  // the stride-1 layer over phase planes: input channel ci·P + phase
  PhaseDim rows, cols;
  CsrWeight w1;                     // its weight (values copied in by load_values)
  std::vector<std::uint32_t> from;  // w1 entry j is wt entry from[j]

  /// Strided layers whose stride-1 form runs on the contiguous-run kernels (same-size output).
  StrideSplit(const Conv2dGeometry& g, const CsrWeight& wt) {
    if (g.stride_h == 1 && g.stride_w == 1) return;
    rows = phase_dim(g.h, g.out_h(), g.kh, g.stride_h, g.pad_h);
    cols = phase_dim(g.w, g.out_w(), g.kw, g.stride_w, g.pad_w);
    if (!rows.ok || !cols.ok) return;
    const std::size_t phases = rows.phases.size() * cols.phases.size();
    const int policy = phase_split_policy().load(std::memory_order_relaxed);
    if (policy == 0 || (policy == 1 && phases > 1 && g.out_w() >= 16)) return;
    g1 = {g.batch, g.c_in * phases, rows.n1, cols.n1, g.c_out, rows.k1, cols.k1, 1, 1, rows.p1, cols.p1};
    if (g1.out_h() != g.out_h() || g1.out_w() != g.out_w() || g1.out_w() != g1.w) return;
    const std::size_t khw = g.kh * g.kw, khw1 = g1.kh * g1.kw;
    const std::uint32_t* rp = wt.row_ptr();
    const std::uint32_t* col = wt.col();
    std::vector<std::uint32_t> col1(wt.nnz());
    std::vector<std::pair<std::uint32_t, std::uint32_t>> row;  // (new column, old entry)
    from.resize(wt.nnz());
    for (std::size_t co = 0; co < g.c_out; ++co) {
      row.clear();
      for (std::uint32_t j = rp[co]; j < rp[co + 1]; ++j) {
        const std::size_t ci = col[j] / khw, rs = col[j] % khw, r = rs / g.kw, s = rs % g.kw;
        const std::size_t c1 = (ci * rows.phases.size() + rows.phase_of[r]) * cols.phases.size() + cols.phase_of[s];
        row.emplace_back(static_cast<std::uint32_t>(c1 * khw1 + rows.r1[r] * g1.kw + cols.r1[s]), j);
      }
      std::sort(row.begin(), row.end());
      for (std::size_t i = 0; i < row.size(); ++i) {
        col1[rp[co] + i] = row[i].first;
        from[rp[co] + i] = row[i].second;
      }
    }
    w1 = CsrWeight::from_index(g.c_out, g1.c_in * khw1, khw1, std::vector<std::uint32_t>(rp, rp + g.c_out + 1),
                               std::move(col1));
    ok = true;
  }
  void load_values(const CsrWeight& wt) {
    const float* v = wt.values();
    float* v1 = w1.values();
    for (std::size_t j = 0; j < from.size(); ++j) v1[j] = v[from[j]];
  }
  /// xp {N, C·phases, n1_h, n1_w} = the phase planes of x (zero past the input's end). One pass
  /// over the input rows; each row's columns are dealt to its column phases.
  void split(const Conv2dGeometry& g, const float* x, float* xp) const {
    const std::size_t hw = g.h * g.w, hw1 = g1.h * g1.w, pr = rows.phases.size(), pc = cols.phases.size();
    parallel_for(g.batch * g.c_in, static_cast<double>(g.input_size()), [&](std::size_t plane) {
      const float* src = x + plane * hw;
      float* dst = xp + plane * pr * pc * hw1;
      for (std::size_t ia = 0; ia < pr; ++ia)
        for (std::size_t i = 0; i < g1.h; ++i) {
          const std::size_t ih = i * g.stride_h + rows.phases[ia];
          float* d = dst + ia * pc * hw1 + i * g1.w;
          if (ih >= g.h) {
            for (std::size_t ib = 0; ib < pc; ++ib) std::fill(d + ib * hw1, d + ib * hw1 + g1.w, 0.0f);
            continue;
          }
          deal(src + ih * g.w, g.w, g.stride_w, d, hw1);
        }
    });
  }
  /// The adjoint of split: dx = the phase planes' gradients put back in place, 0 where no phase
  /// reads (odd rows and columns of a 1×1 stride-2 layer); with `add`, dx += them.
  void merge(const Conv2dGeometry& g, const float* dxp, float* dx, bool add) const {
    const std::size_t hw = g.h * g.w, hw1 = g1.h * g1.w, pr = rows.phases.size(), pc = cols.phases.size();
    const bool covers = pr == g.stride_h && pc == g.stride_w;
    parallel_for(g.batch * g.c_in, static_cast<double>(g.input_size()), [&](std::size_t plane) {
      float* dst = dx + plane * hw;
      const float* src = dxp + plane * pr * pc * hw1;
      if (!covers && !add) std::fill(dst, dst + hw, 0.0f);
      for (std::size_t ia = 0; ia < pr; ++ia)
        for (std::size_t i = 0; i < g1.h; ++i) {
          const std::size_t ih = i * g.stride_h + rows.phases[ia];
          if (ih >= g.h) break;
          if (add)
            gather<true>(src + ia * pc * hw1 + i * g1.w, hw1, g.stride_w, dst + ih * g.w, g.w);
          else
            gather<false>(src + ia * pc * hw1 + i * g1.w, hw1, g.stride_w, dst + ih * g.w, g.w);
        }
    });
  }
  // One input row of length w → its column phases (row j of phase ib at d + ib·step), zero-padded
  // to n1. Stride 2 with both phases (3×3 layers) or the even one (1×1) has its own loops, which
  // the compiler vectorizes.
  void deal(const float* s, std::size_t w, std::size_t stride, float* d, std::size_t step) const {
    const std::size_t pc = cols.phases.size(), n1 = cols.n1;
    if (stride == 2 && pc == 2 && cols.phases[0] == 0 && w == 2 * n1) {
      float* d0 = d;
      float* d1 = d + step;
      for (std::size_t j = 0; j < n1; ++j) {
        d0[j] = s[2 * j];
        d1[j] = s[2 * j + 1];
      }
      return;
    }
    if (stride == 2 && pc == 1 && cols.phases[0] == 0 && w == 2 * n1) {
      for (std::size_t j = 0; j < n1; ++j) d[j] = s[2 * j];
      return;
    }
    for (std::size_t ib = 0; ib < pc; ++ib) {
      const std::size_t b = cols.phases[ib], n = (w - b + stride - 1) / stride;
      float* di = d + ib * step;
      for (std::size_t j = 0; j < n; ++j) di[j] = s[j * stride + b];
      std::fill(di + n, di + n1, 0.0f);
    }
  }
  // The adjoint of deal for one row: row j of phase ib (at s + ib·step) → columns j·stride + b
  // (added to them when Add).
  template <bool Add>
  void gather(const float* s, std::size_t step, std::size_t stride, float* d, std::size_t w) const {
    const std::size_t pc = cols.phases.size(), n1 = cols.n1;
    if (stride == 2 && pc == 2 && cols.phases[0] == 0 && w == 2 * n1) {
      const float* s0 = s;
      const float* s1 = s + step;
      for (std::size_t j = 0; j < n1; ++j) {
        d[2 * j] = Add ? d[2 * j] + s0[j] : s0[j];
        d[2 * j + 1] = Add ? d[2 * j + 1] + s1[j] : s1[j];
      }
      return;
    }
    for (std::size_t ib = 0; ib < pc; ++ib) {
      const std::size_t b = cols.phases[ib], n = (w - b + stride - 1) / stride;
      const float* si = s + ib * step;
      for (std::size_t j = 0; j < n; ++j) d[j * stride + b] = Add ? d[j * stride + b] + si[j] : si[j];
    }
  }
  /// Scratch for phase planes, kept per thread across calls (a fresh allocation per call costs
  /// page faults on every step).
  static float* scratch(std::size_t n) {
    thread_local std::vector<float> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
  }
};

#if defined(EAST_KERNELS_X86)
// The small-plane kernels over images [n0, n1) of one channel: groups of small_group<NW>()
// images, then single images; groups touching image 0 or batch − 1 load only needed lanes.
template <int NW>
void small_forward_images(std::size_t n0, std::size_t n1, std::size_t batch, const float* x, std::size_t xs,
                          const float* val, const std::ptrdiff_t* shift, const std::uint16_t* rs,
                          const std::uint64_t* mo, std::uint32_t jb, std::uint32_t je, float b, float* y,
                          std::size_t ys, std::size_t hwo) {
  constexpr int G = avx512::small_group<NW>();
  std::size_t n = n0;
  for (; n + G <= n1; n += G) {
    const bool edge = n == 0 || n + G == batch;
    if (edge)
      avx512::small_forward<NW, G, true>(x + n * xs, xs, val, shift, rs, mo, jb, je, b, y + n * ys, ys, hwo);
    else
      avx512::small_forward<NW, G, false>(x + n * xs, xs, val, shift, rs, mo, jb, je, b, y + n * ys, ys, hwo);
  }
  for (; n < n1; ++n)
    avx512::small_forward<NW, 1, true>(x + n * xs, xs, val, shift, rs, mo, jb, je, b, y + n * ys, ys, hwo);
}
template <int NW>
void small_grad_input_images(std::size_t n0, std::size_t n1, std::size_t batch, const float* dy,
                             std::size_t dys, std::size_t hwo, const std::uint32_t* tpos,
                             const std::uint32_t* trow, const float* val, const std::uint16_t* rs,
                             const std::ptrdiff_t* d, const std::uint64_t* mi, std::uint32_t tb,
                             std::uint32_t te, float* dx, std::size_t dxs, std::size_t hw, bool add) {
  constexpr int G = avx512::small_group<NW>();
  std::size_t n = n0;
  for (; n + G <= n1; n += G) {
    const bool edge = n == 0 || n + G == batch;
    if (edge)
      avx512::small_grad_input<NW, G, true>(dy + n * dys, dys, hwo, tpos, trow, val, rs, d, mi, tb, te,
                                            dx + n * dxs, dxs, hw, add);
    else
      avx512::small_grad_input<NW, G, false>(dy + n * dys, dys, hwo, tpos, trow, val, rs, d, mi, tb, te,
                                             dx + n * dxs, dxs, hw, add);
  }
  for (; n < n1; ++n)
    avx512::small_grad_input<NW, 1, true>(dy + n * dys, dys, hwo, tpos, trow, val, rs, d, mi, tb, te,
                                          dx + n * dxs, dxs, hw, add);
}
#define EAST_SMALL_NW(nw, CALL) \
  switch (nw) {                 \
    case 1:                     \
      CALL(1);                  \
      break;                    \
    case 2:                     \
      CALL(2);                  \
      break;                    \
    case 3:                     \
      CALL(3);                  \
      break;                    \
    default:                    \
      CALL(4);                  \
      break;                    \
  }
inline float small_dot_runs_any(int nw, const float* d, std::size_t d_stride, const float* x,
                                std::size_t x_stride, std::size_t batch, std::uint64_t mo) {
  switch (nw) {
    case 1:
      return avx512::small_dot_runs<1>(d, d_stride, x, x_stride, batch, mo);
    case 2:
      return avx512::small_dot_runs<2>(d, d_stride, x, x_stride, batch, mo);
    case 3:
      return avx512::small_dot_runs<3>(d, d_stride, x, x_stride, batch, mo);
    default:
      return avx512::small_dot_runs<4>(d, d_stride, x, x_stride, batch, mo);
  }
}
#endif

// dst[i] += v · src[i] where mask[i] is set (every i when mask is null).
EAST_ALWAYS_INLINE void axpy_run(float v, const float* EAST_RESTRICT src, const float* EAST_RESTRICT mask,
                                 float* EAST_RESTRICT dst, std::size_t n) {
  if (!mask) {
    for (std::size_t i = 0; i < n; ++i) dst[i] += v * src[i];
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      const float t = v * src[i], m = mask[i];
      dst[i] += m != 0.0f ? t : 0.0f;
    }
  }
}

// Σ a[i] · b[i] where mask[i] is set, 8 partial sums in a fixed order.
EAST_ALWAYS_INLINE float dot_run(const float* EAST_RESTRICT a, const float* EAST_RESTRICT b,
                                 const float* EAST_RESTRICT mask, std::size_t n) {
  if (!mask) return dot_strided(a, b, 1, n);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (std::size_t l = 0; l < 8; ++l) {
      const float t = a[i + l] * b[i + l], m = mask[i + l];
      acc[l] += m != 0.0f ? t : 0.0f;
    }
  for (std::size_t l = 0; i < n; ++i, ++l) {
    const float t = a[i] * b[i], m = mask[i];
    acc[l] += m != 0.0f ? t : 0.0f;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}


// One input channel's gradient on the contiguous-run kernels: dxn (an image's c_in planes) +=
// each tap of channel ci applied to dyn (the image's c_out output-gradient planes).
inline void flat_grad_input_channel(const FlatTap* taps, const CsrWeight& wt, std::size_t ci, std::size_t hwo,
                                    const float* dyn, float* dxn, bool simd) {
  const std::uint32_t* gp = wt.group_ptr();
  const std::uint32_t* trow = wt.t_row();
  const std::uint32_t* tpos = wt.t_pos();
  const float* val = wt.values();
  for (std::uint32_t t = gp[ci]; t < gp[ci + 1]; ++t) {
    const std::uint32_t j = tpos[t];
    const FlatTap& tp = taps[j];
    if (!tp.n) continue;
#if defined(EAST_KERNELS_X86)
    if (simd) {
      avx512::axpy_run(val[j], dyn + trow[t] * hwo + tp.o0, tp.mask, dxn + tp.x_off, tp.n);
      continue;
    }
#else
    (void)simd;
#endif
    axpy_run(val[j], dyn + trow[t] * hwo + tp.o0, tp.mask, dxn + tp.x_off, tp.n);
  }
}
}  // namespace detail

/// Forward pass: y = conv2d(x, W) with W compact. @param x input {batch, c_in, h, w}
/// @param y output {batch, c_out, out_h, out_w}, overwritten (bias, if any, is added after
/// by the caller or given here: c_out floats).
inline void conv2d_forward(const Conv2dGeometry& g, const float* x, const CsrWeight& wt, float* y,
                           const float* bias = nullptr) {
  g.check_weight(wt, "east::sparse::conv2d_forward()");
  if (detail::StrideSplit ss(g, wt); ss.ok) {
    ss.load_values(wt);
    float* xp = detail::StrideSplit::scratch(ss.g1.input_size());
    ss.split(g, x, xp);
    conv2d_forward(ss.g1, xp, ss.w1, y, bias);
    return;
  }
  const detail::ConvSpans sp(g);
  const detail::FlatRuns fr(g, sp);
  const std::vector<detail::FlatTap>& taps = detail::flat_taps(g, sp, fr, wt);
  const bool simd = fr.ok && detail::flat_avx512();
  const bool even = detail::stride2_avx512(g);
  const detail::FlatSmall small(g, sp, fr, wt, simd);
  const std::size_t khw = g.kh * g.kw, hw = g.h * g.w, ho = g.out_h(), wo = g.out_w(), hwo = ho * wo;
  const std::uint32_t* rp = wt.row_ptr();
  const std::uint32_t* col = wt.col();
  const float* val = wt.values();
  const double work = static_cast<double>(wt.nnz()) * g.batch * hwo + static_cast<double>(g.output_size());
  // One item = one image × a block of output channels: enough items for threads at batch 1,
  // and per-item overhead (index arithmetic, scheduling) paid once per block, not per plane.
  const std::size_t blocks = (g.c_out + detail::kChannelBlock - 1) / detail::kChannelBlock;
#if defined(EAST_KERNELS_X86)
  if (small.ok) {  // planes in registers; an item is one group of images (one decode per tap)
    const std::size_t nb = detail::small_images(small.nw), chunks = (g.batch + nb - 1) / nb;
    detail::parallel_for(chunks * blocks, work, [&](std::size_t item) {
      const std::size_t n0 = (item / blocks) * nb, c0 = (item % blocks) * detail::kChannelBlock;
      const std::size_t n1 = std::min(g.batch, n0 + nb), c1 = std::min(g.c_out, c0 + detail::kChannelBlock);
      for (std::size_t co = c0; co < c1; ++co) {
#define EAST_CALL(NW)                                                                        \
  detail::small_forward_images<NW>(n0, n1, g.batch, x, g.c_in * hw, val, small.shift.data(), \
                                   small.rs.data(), small.mo.data(), rp[co], rp[co + 1],     \
                                   bias ? bias[co] : 0.0f, y + co * hwo, g.c_out * hwo, hwo)
        EAST_SMALL_NW(small.nw, EAST_CALL)
#undef EAST_CALL
      }
    });
    return;
  }
#endif
  detail::parallel_for(g.batch * blocks, work, [&](std::size_t item) {
    const std::size_t n = item / blocks, c0 = (item % blocks) * detail::kChannelBlock;
    const std::size_t c1 = std::min(g.c_out, c0 + detail::kChannelBlock);
    const float* xn = x + n * g.c_in * hw;
    for (std::size_t co = c0; co < c1; ++co) {
      float* yp = y + (n * g.c_out + co) * hwo;
      const float b0 = bias ? bias[co] : 0.0f;
      for (std::size_t i = 0; i < hwo; ++i) yp[i] = b0;
      if (fr.ok) {
        for (std::uint32_t j = rp[co]; j < rp[co + 1]; ++j) {
          const detail::FlatTap& t = taps[j];
          if (!t.n) continue;
#if defined(EAST_KERNELS_X86)
          if (simd) {
            detail::avx512::axpy_run(val[j], xn + t.x_off, t.mask, yp + t.o0, t.n);
            continue;
          }
#endif
          detail::axpy_run(val[j], xn + t.x_off, t.mask, yp + t.o0, t.n);
        }
        continue;
      }
      for (std::uint32_t j = rp[co]; j < rp[co + 1]; ++j) {
        const std::size_t c = col[j], ci = c / khw, rs = c - ci * khw, r = rs / g.kw, s = rs - r * g.kw;
        const detail::Span sh = sp.rows[r], sw = sp.cols[s];
        if (sw.hi <= sw.lo || sh.hi <= sh.lo) continue;
        const float v = val[j];
        const float* xp = xn + ci * hw;
#if defined(EAST_KERNELS_X86)
        if (even) {
          detail::avx512::axpy_even_rows(v, xp + detail::in_offset(g, sh.lo, sw.lo, r, s), g.stride_h * g.w,
                                         yp + sh.lo * wo + sw.lo, wo, sh.hi - sh.lo, sw.hi - sw.lo);
          continue;
        }
#endif
        for (std::size_t oh = sh.lo; oh < sh.hi; ++oh)
          detail::axpy_strided(v, xp + detail::in_offset(g, oh, sw.lo, r, s), g.stride_w,
                               yp + oh * wo + sw.lo, sw.hi - sw.lo);
      }
    }
  });
}

/// Gradient of the input: dx = conv2d_transpose(dy, W). @param dy {batch, c_out, out_h, out_w}
/// @param dx {batch, c_in, h, w}, overwritten, or with `add` added to (dx += conv2d_transpose(dy,
/// W): another gradient of the same input joined in this pass instead of a separate sum).
inline void conv2d_grad_input(const Conv2dGeometry& g, const float* dy, const CsrWeight& wt, float* dx,
                              bool add = false) {
  g.check_weight(wt, "east::sparse::conv2d_grad_input()");
  if (detail::StrideSplit ss(g, wt); ss.ok) {
    ss.load_values(wt);
    float* dxp = detail::StrideSplit::scratch(ss.g1.input_size());
    conv2d_grad_input(ss.g1, dy, ss.w1, dxp);
    ss.merge(g, dxp, dx, add);
    return;
  }
  const detail::ConvSpans sp(g);
  const detail::FlatRuns fr(g, sp);
  const std::vector<detail::FlatTap>& taps = detail::flat_taps(g, sp, fr, wt);
  const bool simd = fr.ok && detail::flat_avx512();
  const bool even = detail::stride2_avx512(g);
  const detail::FlatSmall small(g, sp, fr, wt, simd);
  const std::size_t khw = g.kh * g.kw, hw = g.h * g.w, wo = g.out_w(), hwo = g.out_h() * wo;
  const std::uint32_t* gp = wt.group_ptr();
  const std::uint32_t* trow = wt.t_row();
  const std::uint32_t* tpos = wt.t_pos();
  const std::uint32_t* col = wt.col();
  const float* val = wt.values();
  const double work = static_cast<double>(wt.nnz()) * g.batch * hwo + static_cast<double>(g.input_size());
  const std::size_t blocks = (g.c_in + detail::kChannelBlock - 1) / detail::kChannelBlock;
#if defined(EAST_KERNELS_X86)
  if (small.ok) {  // as the forward: planes in registers, an item is one group of images
    const std::size_t nb = detail::small_images(small.nw), chunks = (g.batch + nb - 1) / nb;
    detail::parallel_for(chunks * blocks, work, [&](std::size_t item) {
      const std::size_t n0 = (item / blocks) * nb, c0 = (item % blocks) * detail::kChannelBlock;
      const std::size_t n1 = std::min(g.batch, n0 + nb), c1 = std::min(g.c_in, c0 + detail::kChannelBlock);
      for (std::size_t ci = c0; ci < c1; ++ci) {
#define EAST_CALL(NW)                                                                                       \
  detail::small_grad_input_images<NW>(n0, n1, g.batch, dy, g.c_out * hwo, hwo, tpos, trow, val,             \
                                      small.rs.data(), small.d.data(), small.mi.data(), gp[ci], gp[ci + 1], \
                                      dx + ci * hw, g.c_in * hw, hw, add)
        EAST_SMALL_NW(small.nw, EAST_CALL)
#undef EAST_CALL
      }
    });
    return;
  }
#endif
  detail::parallel_for(g.batch * blocks, work, [&](std::size_t item) {
    const std::size_t n = item / blocks, c0 = (item % blocks) * detail::kChannelBlock;
    const std::size_t c1 = std::min(g.c_in, c0 + detail::kChannelBlock);
    const float* dyn = dy + n * g.c_out * hwo;
    for (std::size_t ci = c0; ci < c1; ++ci) {
      float* xp = dx + (n * g.c_in + ci) * hw;
      if (!add) std::fill(xp, xp + hw, 0.0f);
      if (fr.ok) {
        detail::flat_grad_input_channel(taps.data(), wt, ci, hwo, dyn, dx + n * g.c_in * hw, simd);
        continue;
      }
      for (std::uint32_t t = gp[ci]; t < gp[ci + 1]; ++t) {
        const std::uint32_t j = tpos[t];
        const std::size_t rs = col[j] - ci * khw, r = rs / g.kw, s = rs - r * g.kw;
        const detail::Span sh = sp.rows[r], sw = sp.cols[s];
        if (sw.hi <= sw.lo || sh.hi <= sh.lo) continue;
        const float v = val[j];
        const float* yp = dyn + trow[t] * hwo;
#if defined(EAST_KERNELS_X86)
        if (even) {
          detail::avx512::axpy_to_even_rows(v, yp + sh.lo * wo + sw.lo, wo, xp + detail::in_offset(g, sh.lo, sw.lo, r, s),
                                            g.stride_h * g.w, sh.hi - sh.lo, sw.hi - sw.lo);
          continue;
        }
#endif
        for (std::size_t oh = sh.lo; oh < sh.hi; ++oh)
          detail::axpy_scatter(v, yp + oh * wo + sw.lo, g.stride_w,
                               xp + detail::in_offset(g, oh, sw.lo, r, s), sw.hi - sw.lo);
      }
    }
  });
}

namespace detail {
// The geometry conv2d_backward() runs fused (the AVX-512 contiguous-run kernels: stride-1 "same"
// layers with planes larger than 8×8), and whether it may also run in place.
struct FusedBackward {
  bool ok = false, in_place = false;
  explicit FusedBackward(const Conv2dGeometry& g) {
    ok = FlatRuns::applies(g) && flat_avx512() && g.out_h() * g.out_w() > 64;  // (> 64: not FlatSmall)
    in_place = ok && g.c_in == g.c_out && g.out_h() == g.h;
  }
};
// Images per chunk of the weight gradient's large-plane path (~512 KiB of input and output
// gradient per chunk): shared by conv2d_grad_weight and conv2d_backward, whose sums must agree.
inline std::size_t weight_chunk_images(const Conv2dGeometry& g) {
  const std::size_t image_bytes = (g.c_in * g.h * g.w + g.c_out * g.out_h() * g.out_w()) * sizeof(float);
  return std::clamp<std::size_t>((std::size_t{512} << 10) / image_bytes, 1, g.batch);
}
#if defined(EAST_KERNELS_X86)
// One chunk's partial weight-gradient sums of output channels [c0, c1): out[j] over the chunk's k
// images xc / dc (its first input and output-gradient images).
inline void chunk_weight_sums(const Conv2dGeometry& g, const FlatTap* taps, const std::uint32_t* rp,
                              const float* xc, const float* dc, std::size_t k, std::size_t c0, std::size_t c1,
                              float* out) {
  const std::size_t hw = g.h * g.w, hwo = g.out_h() * g.out_w();
  for (std::size_t co = c0; co < c1; ++co)
    for (std::uint32_t j = rp[co]; j < rp[co + 1]; ++j) {
      const FlatTap& t = taps[j];
      out[j] = t.n ? avx512::dot_runs(dc + co * hwo + t.o0, g.c_out * hwo, xc + t.x_off, g.c_in * hw, k, t.mask, t.n)
                   : 0.0f;
    }
}
#endif
// gw = the chunks' partial sums added in chunk order (so the thread count cannot change them).
inline void add_chunk_sums(const float* partial, std::size_t chunks, std::size_t nnz, float* gw) {
  std::copy_n(partial, nnz, gw);
  for (std::size_t chunk = 1; chunk < chunks; ++chunk) {
    const float* p = partial + chunk * nnz;
    for (std::size_t j = 0; j < nnz; ++j) gw[j] += p[j];
  }
}
}  // namespace detail

/// Gradient of the weights at the stored (active) positions only: gw[j] = ∂L/∂values[j],
/// nnz floats, overwritten. @param x the forward input  @param dy the output gradient.
inline void conv2d_grad_weight(const Conv2dGeometry& g, const float* x, const float* dy, const CsrWeight& wt,
                               float* gw) {
  g.check_weight(wt, "east::sparse::conv2d_grad_weight()");
  if (detail::StrideSplit ss(g, wt); ss.ok) {
    float* xp = detail::StrideSplit::scratch(ss.g1.input_size());
    ss.split(g, x, xp);
    thread_local std::vector<float> gw1;
    gw1.resize(wt.nnz());
    conv2d_grad_weight(ss.g1, xp, dy, ss.w1, gw1.data());
    for (std::size_t j = 0; j < gw1.size(); ++j) gw[ss.from[j]] = gw1[j];
    return;
  }
  const detail::ConvSpans sp(g);
  const detail::FlatRuns fr(g, sp);
  const std::vector<detail::FlatTap>& taps = detail::flat_taps(g, sp, fr, wt);
  const bool simd = fr.ok && detail::flat_avx512();
  const bool even = detail::stride2_avx512(g);
  const detail::FlatSmall small(g, sp, fr, wt, simd);
  const std::size_t khw = g.kh * g.kw, hw = g.h * g.w, wo = g.out_w(), hwo = g.out_h() * wo;
  const std::uint32_t* rp = wt.row_ptr();
  const std::uint32_t* col = wt.col();
  const double work = static_cast<double>(wt.nnz()) * g.batch * hwo;
#if defined(EAST_KERNELS_X86)
  if (simd && !small.ok) {
    // Planes larger than 8×8: image chunks outermost. A chunk's input and output-gradient images
    // (K of them, ~512 KiB) stay in L2 while every stored weight takes its partial sum over them,
    // so each activation comes from memory once; with images innermost every weight read one
    // plane per image, C·H·W floats apart, through L3 (at 32×32, 0.1%: 11.6 → 6.9 ms per step for
    // the six 64-channel layers, docs/sparse.md). K depends on the geometry only and the partials
    // are added in chunk order, so results do not depend on the thread count; items split a
    // chunk's output channels when there are fewer chunks than threads.
    const std::size_t nnz = wt.nnz(), k_img = detail::weight_chunk_images(g);
    const std::size_t chunks = (g.batch + k_img - 1) / k_img;
    const std::size_t threads = static_cast<std::size_t>(std::max(1, ::east::kernels::threads()));
    const std::size_t splits = std::min<std::size_t>(g.c_out, (4 * threads + chunks - 1) / chunks);
    thread_local std::vector<float> partial_buffer;  // (a name in the body would be each worker's own)
    partial_buffer.resize(chunks * nnz);
    float* const partial = partial_buffer.data();
    detail::parallel_for(chunks * splits, work, [&](std::size_t item) {
      const std::size_t chunk = item / splits, part = item % splits;
      const std::size_t n0 = chunk * k_img, k = std::min(g.batch, n0 + k_img) - n0;
      const std::size_t c0 = g.c_out * part / splits, c1 = g.c_out * (part + 1) / splits;
      detail::chunk_weight_sums(g, taps.data(), rp, x + n0 * g.c_in * hw, dy + n0 * g.c_out * hwo, k, c0, c1,
                                partial + chunk * nnz);
    });
    detail::add_chunk_sums(partial, chunks, nnz, gw);
    return;
  }
#endif
  detail::parallel_for(g.c_out, work, [&](std::size_t co) {
    const std::uint32_t b = rp[co], e = rp[co + 1];
#if defined(EAST_KERNELS_X86)
    if (small.ok || even) {
      // Planes in registers (at most 64 floats) or stride 2: images innermost, one sum per stored
      // weight over the whole batch (chunks lost here: a chunk's sum per weight is one plane of
      // 1–4 vectors per image, and its reduction cost as much). A row with several weights first
      // copies its output-gradient planes together: read in place they lie C_out·H·W floats
      // apart, a power of two that maps them all to a few cache sets.
      if (b == e) return;
      const float* d = dy + co * hwo;
      std::size_t d_stride = g.c_out * hwo;
      if (e - b >= 2 && g.batch > 1) {
        thread_local std::vector<float> local;
        local.resize(g.batch * hwo + 16);  // + 16: windows past the last plane's end are read
        for (std::size_t n = 0; n < g.batch; ++n)
          std::copy_n(dy + (n * g.c_out + co) * hwo, hwo, local.data() + n * hwo);
        d = local.data();
        d_stride = hwo;
      }
      if (even) {
        for (std::uint32_t j = b; j < e; ++j) {
          const std::size_t c = col[j], ci = c / khw, rs = c - ci * khw, r = rs / g.kw, s = rs - r * g.kw;
          const detail::Span sh = sp.rows[r], sw = sp.cols[s];
          gw[j] = sw.hi <= sw.lo || sh.hi <= sh.lo
                      ? 0.0f
                      : detail::avx512::dot_even_rows(d + sh.lo * wo + sw.lo, d_stride, wo,
                                                      x + ci * hw + detail::in_offset(g, sh.lo, sw.lo, r, s),
                                                      g.c_in * hw, g.stride_h * g.w, g.batch, sh.hi - sh.lo,
                                                      sw.hi - sw.lo);
        }
        return;
      }
      for (std::uint32_t j = b; j < e; ++j)
        gw[j] = detail::small_dot_runs_any(small.nw, d, d_stride, x + small.shift[j], g.c_in * hw, g.batch,
                                           small.mo[small.rs[j]]);
      return;
    }
#endif
    std::fill(gw + b, gw + e, 0.0f);
    for (std::size_t n = 0; n < g.batch; ++n) {
      const float* dyp = dy + (n * g.c_out + co) * hwo;
      const float* xn = x + n * g.c_in * hw;
      if (fr.ok) {
        for (std::uint32_t j = b; j < e; ++j) {
          const detail::FlatTap& t = taps[j];
          if (t.n) gw[j] += detail::dot_run(dyp + t.o0, xn + t.x_off, t.mask, t.n);
        }
        continue;
      }
      for (std::uint32_t j = b; j < e; ++j) {
        const std::size_t c = col[j], ci = c / khw, rs = c - ci * khw, r = rs / g.kw, s = rs - r * g.kw;
        gw[j] += detail::tap_dot(g, sp, dyp, xn + ci * hw, r, s);
      }
    }
  });
}

/// Whether conv2d_backward() may write the input gradient over the output gradient (dx == dy):
/// stride-1 "same" layers with as many input as output channels, on the AVX-512 kernels.
inline bool conv2d_backward_in_place_ok(const Conv2dGeometry& g) { return detail::FusedBackward(g).in_place; }

/// Both gradients of a layer: dx as conv2d_grad_input (with `add`) and gw as conv2d_grad_weight
/// (nnz floats; nullptr: not wanted), bit for bit. Where the AVX-512 contiguous-run kernels apply,
/// one pass over chunks of images computes both, so each output-gradient image comes from memory
/// once instead of twice; with dx == dy (conv2d_backward_in_place_ok(g), not `add`) each chunk's
/// input gradient is then written over its output gradient, whose cache lines are at hand.
inline void conv2d_backward(const Conv2dGeometry& g, const float* x, const float* dy, const CsrWeight& wt,
                            float* dx, float* gw, bool add = false) {
  constexpr const char* where = "east::sparse::conv2d_backward()";
  g.check_weight(wt, where);
  const detail::FusedBackward fused(g);
  const bool in_place = dx == dy;
  ::east::detail::require(!in_place || (fused.in_place && !add), where,
                          "dx == dy needs a stride-1 same-size layer with c_in == c_out on the AVX-512 kernels "
                          "(conv2d_backward_in_place_ok()) and add = false");
#if defined(EAST_KERNELS_X86)
  if (fused.ok && dx) {
    const detail::ConvSpans sp(g);
    const detail::FlatRuns fr(g, sp);
    const std::vector<detail::FlatTap>& taps = detail::flat_taps(g, sp, fr, wt);
    const std::size_t hw = g.h * g.w, hwo = g.out_h() * g.out_w(), nnz = wt.nnz();
    const std::uint32_t* rp = wt.row_ptr();
    const std::size_t k_img = detail::weight_chunk_images(g), chunks = (g.batch + k_img - 1) / k_img;
    thread_local std::vector<float> partial_buffer;  // (a name in the body would be each worker's own)
    partial_buffer.resize(gw ? chunks * nnz : 0);
    float* const partial = partial_buffer.data();
    const double work = 2.0 * static_cast<double>(nnz) * g.batch * hwo + static_cast<double>(g.input_size());
    detail::parallel_for(chunks, work, [&](std::size_t chunk) {
      const std::size_t n0 = chunk * k_img, n1 = std::min(g.batch, n0 + k_img), k = n1 - n0;
      const float* xc = x + n0 * g.c_in * hw;
      const float* dc = dy + n0 * g.c_out * hwo;
      if (gw)  // the chunk's partial sums, as conv2d_grad_weight takes them
        detail::chunk_weight_sums(g, taps.data(), rp, xc, dc, k, 0, g.c_out, partial + chunk * nnz);
      thread_local std::vector<float> image;  // this worker's input gradient of one image (in place)
      if (in_place) image.resize(g.c_in * hw);
      for (std::size_t n = n0; n < n1; ++n) {
        const float* dyn = dy + n * g.c_out * hwo;
        float* dxn = in_place ? image.data() : dx + n * g.c_in * hw;
        for (std::size_t ci = 0; ci < g.c_in; ++ci) {  // as conv2d_grad_input's contiguous-run path
          if (!add) std::fill(dxn + ci * hw, dxn + (ci + 1) * hw, 0.0f);
          detail::flat_grad_input_channel(taps.data(), wt, ci, hwo, dyn, dxn, /*simd=*/true);
        }
        if (in_place) std::copy_n(image.data(), g.c_in * hw, dx + n * g.c_in * hw);
      }
    });
    if (gw) detail::add_chunk_sums(partial, chunks, nnz, gw);
    return;
  }
#endif
  if (dx) conv2d_grad_input(g, dy, wt, dx, add);
  if (gw) conv2d_grad_weight(g, x, dy, wt, gw);
}

/// Dense weight gradient of output channels [row_begin, row_end): out holds
/// (row_end − row_begin) · c_in·kh·kw floats, row-major like the weight. Used at mask updates
/// to score inactive positions one block at a time; costs the dense weight-gradient FLOPs of
/// those rows (N · H_out · W_out multiply-adds per weight).
inline void conv2d_grad_weight_rows(const Conv2dGeometry& g, const float* x, const float* dy,
                                    std::size_t row_begin, std::size_t row_end, float* out) {
  g.check("east::sparse::conv2d_grad_weight_rows()");
  ::east::detail::require(row_begin <= row_end && row_end <= g.c_out,
                          "east::sparse::conv2d_grad_weight_rows()", "rows [", row_begin, ", ", row_end,
                          ") (valid: within [0, ", g.c_out, "])");
  // A GEMM out[rows × cols] = dyᵀ[rows × P] · im2col[P × cols] over P = N·H_out·W_out positions,
  // done as dot products: dy rows are copied contiguous once, and for each chunk of positions each
  // im2col column is built once (zero where the tap falls in the padding) and dotted with every
  // row of the block. Threads own column blocks, so sums have a fixed order.
  const std::size_t khw = g.kh * g.kw, cols = g.c_in * khw, hw = g.h * g.w, wo = g.out_w();
  const std::size_t hwo = g.out_h() * wo, P = g.batch * hwo, nb = row_end - row_begin;
  std::vector<float> dyt(nb * P);
  for (std::size_t i = 0; i < nb; ++i)
    for (std::size_t n = 0; n < g.batch; ++n)
      std::copy(dy + (n * g.c_out + row_begin + i) * hwo, dy + (n * g.c_out + row_begin + i + 1) * hwo,
                dyt.data() + i * P + n * hwo);
  std::fill(out, out + nb * cols, 0.0f);
  // Chunks small enough that the kCols columns (16 KiB) and one dy row chunk stay in L1.
  constexpr std::size_t kChunk = 512, kCols = 8;
  const double work = static_cast<double>(nb) * cols * P;
  detail::parallel_for((cols + kCols - 1) / kCols, work, [&](std::size_t item) {
    std::vector<float> v(kCols * kChunk);
    const std::size_t c0 = item * kCols, c1 = std::min(cols, c0 + kCols);
    for (std::size_t p0 = 0; p0 < P; p0 += kChunk) {
      const std::size_t len = std::min(kChunk, P - p0);
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t ci = c / khw, rs = c - ci * khw, r = rs / g.kw, s = rs - r * g.kw;
        float* vc = v.data() + (c - c0) * kChunk;
        // im2col column c for positions [p0, p0 + len), walking (n, oh, ow) incrementally.
        std::size_t n = p0 / hwo, rem = p0 - n * hwo, oh = rem / wo, ow = rem - oh * wo;
        for (std::size_t q = 0; q < len; ++q) {
          const std::ptrdiff_t ih =
              static_cast<std::ptrdiff_t>(oh * g.stride_h + r) - static_cast<std::ptrdiff_t>(g.pad_h);
          const std::ptrdiff_t iw =
              static_cast<std::ptrdiff_t>(ow * g.stride_w + s) - static_cast<std::ptrdiff_t>(g.pad_w);
          vc[q] = (ih >= 0 && iw >= 0 && ih < static_cast<std::ptrdiff_t>(g.h) &&
                   iw < static_cast<std::ptrdiff_t>(g.w))
                      ? x[(n * g.c_in + ci) * hw + static_cast<std::size_t>(ih) * g.w +
                          static_cast<std::size_t>(iw)]
                      : 0.0f;
          if (++ow == wo) {
            ow = 0;
            if (++oh == g.out_h()) {
              oh = 0;
              ++n;
            }
          }
        }
      }
      for (std::size_t i = 0; i < nb; ++i) {
        const float* d = dyt.data() + i * P + p0;
        for (std::size_t c = c0; c < c1; ++c)
          out[i * cols + c] += detail::dot_strided(d, v.data() + (c - c0) * kChunk, 1, len);
      }
    }
  });
}

}  // namespace east::sparse
