#pragma once
// AVX-512 bodies of the sparse convolution's one-run ("flat") kernels (sparse/conv.hpp). A run is
// one stored weight's contiguous span of an output plane and the matching span of an input plane;
// at 99.9% sparsity on 4×4 to 16×16 planes it is 16–256 floats, so what the portable loops spent
// on a scalar remainder and a select per element (most runs are shorter than two vectors) is
// done here by masked vector loads and one masked FMA per 16 floats. The column mask (taps that
// wrap over a row edge) becomes a lane mask: masked-off lanes keep the destination, so non-finite
// inputs there cannot leak. Results are deterministic (fixed order) but may differ from the
// portable loops in the last bit where those do not fuse the multiply-add.
#include <cstddef>
#include <cstdint>

#include "../../kernels/dispatch.hpp"

#if defined(EAST_KERNELS_X86)
namespace east::sparse::detail::avx512 {

EAST_TARGET_AVX512 EAST_ALWAYS_INLINE __mmask16 tail_mask(std::size_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// Lanes of mask[0..16) that are nonzero, within `valid`. A masked load only for a partial vector:
// on AMD Zen 4 masked loads that cross a cache line are several times slower than plain ones.
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE __mmask16 column_mask(const float* mask, __mmask16 valid) {
  const __m512 m = valid == 0xFFFF ? _mm512_loadu_ps(mask) : _mm512_maskz_loadu_ps(valid, mask);
  return _mm512_mask_cmp_ps_mask(valid, m, _mm512_setzero_ps(), _CMP_NEQ_OQ);
}

// acc + a[i..i+16)·b[i..i+16) on the lanes the column mask keeps (all when mask is null).
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE __m512 dot_term(__m512 acc, const float* a, const float* b,
                                                      const float* mask, std::size_t i) {
  const __mmask16 k = mask ? column_mask(mask + i, 0xFFFF) : static_cast<__mmask16>(0xFFFF);
  return _mm512_mask3_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc, k);
}

EAST_TARGET_AVX512 EAST_ALWAYS_INLINE float hsum(__m512 v) {
  alignas(64) float a[16];
  _mm512_store_ps(a, v);
  float s[8];
  for (int l = 0; l < 8; ++l) s[l] = a[l] + a[l + 8];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/// dst[i] += v · src[i] over one run on the lanes the column mask keeps (every lane when mask is
/// null): the forward's and input gradient's step on planes larger than 8×8, 512-bit whatever the
/// caller's compiler flags.
EAST_TARGET_AVX512 inline void axpy_run(float v, const float* src, const float* mask, float* dst, std::size_t n) {
  const __m512 vv = _mm512_set1_ps(v);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __mmask16 k = mask ? column_mask(mask + i, 0xFFFF) : static_cast<__mmask16>(0xFFFF);
    _mm512_storeu_ps(dst + i, _mm512_mask3_fmadd_ps(vv, _mm512_loadu_ps(src + i), _mm512_loadu_ps(dst + i), k));
  }
  if (i < n) {
    const __mmask16 t = tail_mask(n - i), k = mask ? column_mask(mask + i, t) : t;
    _mm512_mask_storeu_ps(
        dst + i, t, _mm512_mask3_fmadd_ps(vv, _mm512_maskz_loadu_ps(t, src + i), _mm512_maskz_loadu_ps(t, dst + i), k));
  }
}

/// Σ over images m < batch of Σ_i a_m[i] · b_m[i] (masked), a_m = a + m·a_stride, b_m = b + m·b_stride:
/// one stored weight's gradient over a chunk of images. A run here is more than 4 vectors (planes
/// larger than 8×8): four accumulators take its vectors i ≡ 0..3 (mod 4) so the FMAs do not wait
/// on one chain (the last whole vectors go to the first three, the masked tail to the fourth).
/// Fixed order.
EAST_TARGET_AVX512 inline float dot_runs(const float* a, std::size_t a_stride, const float* b,
                                         std::size_t b_stride, std::size_t batch, const float* mask,
                                         std::size_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  for (std::size_t m = 0; m < batch; ++m) {
    const float* am = a + m * a_stride;
    const float* bm = b + m * b_stride;
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64) {
      acc0 = dot_term(acc0, am, bm, mask, i);
      acc1 = dot_term(acc1, am, bm, mask, i + 16);
      acc2 = dot_term(acc2, am, bm, mask, i + 32);
      acc3 = dot_term(acc3, am, bm, mask, i + 48);
    }
    if (i + 16 <= n) acc0 = dot_term(acc0, am, bm, mask, i), i += 16;
    if (i + 16 <= n) acc1 = dot_term(acc1, am, bm, mask, i), i += 16;
    if (i + 16 <= n) acc2 = dot_term(acc2, am, bm, mask, i), i += 16;
    if (i < n) {
      const __mmask16 t = tail_mask(n - i), k = mask ? column_mask(mask + i, t) : t;
      acc3 = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(t, am + i), _mm512_maskz_loadu_ps(t, bm + i), acc3, k);
    }
  }
  return hsum(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

// ---- Planes of at most 64 outputs (8×8, 4×4, 7×7 ...): the whole plane lives in NW registers.
// A tap adds v·x shifted by its constant offset d to every output position it reaches; which
// positions those are is a fixed 64-bit mask per kernel tap (r, s) (`mo`, in output positions;
// `mi`, the same set in input positions for the input gradient). So a tap is NW plain unaligned
// loads and masked FMAs into registers: no per-element masks in memory, no masked memory access
// (slow on Zen 4 when it crosses a cache line) except next to the ends of the arrays, where lanes
// outside the tap's set may lie outside the array (`edge`).

template <bool Edge>
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE __m512 load_lanes(const float* p, __mmask16 k) {
  if constexpr (Edge)
    return _mm512_maskz_loadu_ps(k, p);
  else
    return _mm512_loadu_ps(p);
}

template <int NW>
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE void store_plane(float* y, const __m512* acc, std::size_t hwo) {
  for (int w = 0; w < NW; ++w) {
    const std::size_t p = 16 * static_cast<std::size_t>(w);
    if (p + 16 <= hwo)
      _mm512_storeu_ps(y + p, acc[w]);
    else
      _mm512_mask_storeu_ps(y + p, tail_mask(hwo - p), acc[w]);
  }
}

/// G images' output planes of one channel: y_u = b + Σ_taps v_j · x_u(shifted), taps [jb, je),
/// image u's input at x0 + u·xs and output at y0 + u·ys. x_shift[j] = input offset of output
/// position 0 for tap j (relative to an image's first input plane, negative for channel 0 when
/// the tap reads up or left); rs[j] indexes mo. The tap is decoded once for the G images, whose
/// G·NW planes stay in registers.
template <int NW, int G, bool Edge>
EAST_TARGET_AVX512 void small_forward(const float* x0, std::size_t xs, const float* val,
                                      const std::ptrdiff_t* x_shift, const std::uint16_t* rs,
                                      const std::uint64_t* mo, std::uint32_t jb, std::uint32_t je, float b,
                                      float* y0, std::size_t ys, std::size_t hwo) {
  __m512 acc[G][NW];
  for (int u = 0; u < G; ++u)
    for (int w = 0; w < NW; ++w) acc[u][w] = _mm512_set1_ps(b);
  for (std::uint32_t j = jb; j < je; ++j) {
    const std::uint64_t m = mo[rs[j]];
    const float* src = x0 + x_shift[j];
    const __m512 v = _mm512_set1_ps(val[j]);
    __mmask16 k[NW];
    for (int w = 0; w < NW; ++w) k[w] = static_cast<__mmask16>(m >> (16 * w));
    for (int u = 0; u < G; ++u)
      for (int w = 0; w < NW; ++w)
        acc[u][w] = _mm512_mask3_fmadd_ps(v, load_lanes<Edge>(src + u * xs + 16 * w, k[w]), acc[u][w], k[w]);
  }
  for (int u = 0; u < G; ++u) store_plane<NW>(y0 + u * ys, acc[u], hwo);
}

/// G images' input-gradient planes of one channel: dx_u = Σ over the entries [tb, te) of its
/// transposed group of v · dy_u(co) shifted by −d (position q of the input plane reads dy at q − d);
/// added to dx_u's values when `add`.
template <int NW, int G, bool Edge>
EAST_TARGET_AVX512 void small_grad_input(const float* dy0, std::size_t dys, std::size_t hwo,
                                         const std::uint32_t* tpos, const std::uint32_t* trow,
                                         const float* val, const std::uint16_t* rs, const std::ptrdiff_t* d,
                                         const std::uint64_t* mi, std::uint32_t tb, std::uint32_t te,
                                         float* dx0, std::size_t dxs, std::size_t hw, bool add) {
  __m512 acc[G][NW];
  for (int u = 0; u < G; ++u)
    for (int w = 0; w < NW; ++w) {
      const std::size_t p = 16 * static_cast<std::size_t>(w);
      acc[u][w] = !add          ? _mm512_setzero_ps()
                  : p + 16 <= hw ? _mm512_loadu_ps(dx0 + u * dxs + p)
                                 : _mm512_maskz_loadu_ps(tail_mask(hw - p), dx0 + u * dxs + p);
    }
  for (std::uint32_t t = tb; t < te; ++t) {
    const std::uint32_t j = tpos[t];
    const std::uint16_t r = rs[j];
    const std::uint64_t m = mi[r];
    const float* src = dy0 + static_cast<std::ptrdiff_t>(trow[t] * hwo) - d[r];
    const __m512 vv = _mm512_set1_ps(val[j]);
    __mmask16 k[NW];
    for (int w = 0; w < NW; ++w) k[w] = static_cast<__mmask16>(m >> (16 * w));
    for (int u = 0; u < G; ++u)
      for (int w = 0; w < NW; ++w)
        acc[u][w] =
            _mm512_mask3_fmadd_ps(vv, load_lanes<Edge>(src + u * dys + 16 * w, k[w]), acc[u][w], k[w]);
  }
  for (int u = 0; u < G; ++u) store_plane<NW>(dx0 + u * dxs, acc[u], hw);
}

/// Images per group for NW windows: G·NW ≤ 16 accumulators (half the registers).
template <int NW>
constexpr int small_group() {
  return NW == 1 ? 16 : (NW == 2 ? 8 : 4);
}

/// One stored weight's gradient over images [m0, m1): Σ_m Σ_w dy_m(window w) · x_m(shifted window w)
/// on the lanes of mo. d: the output-gradient plane of image m at d + m·d_stride (its windows
/// past the plane's end are masked out and must be readable: callers pad or use Edge);
/// x_m at x + m·x_stride. Four accumulators over images, fixed order.
template <int NW, bool Edge>
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE void small_dot_acc(__m512& acc, const float* d, const float* x,
                                                         std::uint64_t mo) {
  for (int w = 0; w < NW; ++w) {
    const __mmask16 k = static_cast<__mmask16>(mo >> (16 * w));
    acc = _mm512_mask3_fmadd_ps(load_lanes<Edge>(d + 16 * w, k), load_lanes<Edge>(x + 16 * w, k), acc, k);
  }
}

template <int NW, bool Edge>
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE void small_dot_image(__m512& acc, const float* d, const float* x,
                                                           std::uint64_t mo) {
  small_dot_acc<NW, Edge>(acc, d, x, mo);
}
template <int NW>
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE void small_dot_any(__m512& acc, const float* d, const float* x,
                                                         std::uint64_t mo, bool edge) {
  if (edge)
    small_dot_image<NW, true>(acc, d, x, mo);
  else
    small_dot_image<NW, false>(acc, d, x, mo);
}

/// Σ over images m < batch (d + m·d_stride, x + m·x_stride), four accumulators taking images
/// m ≡ 0..3 (mod 4), then one fixed-order reduction. Images 0 and batch − 1 load only the lanes
/// of mo (their shifted windows may leave the arrays).
template <int NW>
EAST_TARGET_AVX512 float small_dot_runs(const float* d, std::size_t d_stride, const float* x,
                                        std::size_t x_stride, std::size_t batch, std::uint64_t mo) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  std::size_t m = 0;
  for (; m + 4 <= batch; m += 4) {
    // The input windows of successive images lie C_in·H·W floats apart (a power of two in
    // ResNets), which no hardware prefetcher follows: fetch 8 images ahead.
    for (std::size_t u = 0; u < 4; ++u)
      for (int w = 0; w < NW + 1; ++w)
        _mm_prefetch(reinterpret_cast<const char*>(x + (m + 8 + u) * x_stride + 16 * w), _MM_HINT_T0);
    small_dot_any<NW>(a0, d + m * d_stride, x + m * x_stride, mo, m == 0);
    small_dot_any<NW>(a1, d + (m + 1) * d_stride, x + (m + 1) * x_stride, mo, m + 2 == batch);
    small_dot_any<NW>(a2, d + (m + 2) * d_stride, x + (m + 2) * x_stride, mo, m + 3 == batch);
    small_dot_any<NW>(a3, d + (m + 3) * d_stride, x + (m + 3) * x_stride, mo, m + 4 == batch);
  }
  if (m < batch) small_dot_any<NW>(a0, d + m * d_stride, x + m * x_stride, mo, true);
  if (m + 1 < batch) small_dot_any<NW>(a1, d + (m + 1) * d_stride, x + (m + 1) * x_stride, mo, true);
  if (m + 2 < batch) small_dot_any<NW>(a2, d + (m + 2) * d_stride, x + (m + 2) * x_stride, mo, true);
  return hsum(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// ---------------------------------------------------------------- stride 2 along rows
// Strided layers (the first 3×3 conv and the 1×1 downsample of each ResNet stage) keep per-row
// loops, but a row's inputs are every second float: the portable loops gathered them one by one.
// Here 16 outputs' inputs come from two loads and one permute (even lanes of 32 floats), and the
// input gradient adds into the even lanes of two 16-float windows. Only the floats a row needs
// are read or written (masked at the row's end), in the portable loops' order of taps.

// x[0], x[2], …, x[2(n−1)] in lanes 0..n−1 (n ≤ 16), reading x[0 .. 2n − 1) only.
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE __m512 load_even(const float* x, std::size_t n) {
  const std::size_t m = 2 * n - 1;
  const __m512 a = m >= 16 ? _mm512_loadu_ps(x) : _mm512_maskz_loadu_ps(tail_mask(m), x);
  const __m512 b = m > 16 ? _mm512_maskz_loadu_ps(tail_mask(m - 16), x + 16) : _mm512_setzero_ps();
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_ps(a, even, b);
}

/// y[row·y_step + i] += v · x[row·x_step + 2i] for rows < rows, i < n: one tap of the forward.
EAST_TARGET_AVX512 inline void axpy_even_rows(float v, const float* x, std::size_t x_step, float* y,
                                              std::size_t y_step, std::size_t rows, std::size_t n) {
  const __m512 vv = _mm512_set1_ps(v);
  for (std::size_t r = 0; r < rows; ++r, x += x_step, y += y_step)
    for (std::size_t i = 0; i < n; i += 16) {
      const std::size_t c = n - i < 16 ? n - i : 16;
      const __mmask16 k = tail_mask(c);
      const __m512 yv = _mm512_fmadd_ps(vv, load_even(x + 2 * i, c), _mm512_maskz_loadu_ps(k, y + i));
      _mm512_mask_storeu_ps(y + i, k, yv);
    }
}

/// x[row·x_step + 2i] += v · y[row·y_step + i]: one tap of the input gradient (odd floats of x
/// are loaded and stored back unchanged; the caller owns the plane).
EAST_TARGET_AVX512 inline void axpy_to_even_rows(float v, const float* y, std::size_t y_step, float* x,
                                                 std::size_t x_step, std::size_t rows, std::size_t n) {
  const __m512 vv = _mm512_set1_ps(v);
  const __m512i lo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i hi = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  constexpr __mmask16 even = 0x5555;  // (maskz permutes: GCC 12 warns on the plain ones' undefined source)
  for (std::size_t r = 0; r < rows; ++r, x += x_step, y += y_step)
    for (std::size_t i = 0; i < n; i += 16) {
      const std::size_t c = n - i < 16 ? n - i : 16, m = 2 * c - 1;
      const __m512 yv = _mm512_maskz_loadu_ps(tail_mask(c), y + i);
      float* xp = x + 2 * i;
      const __mmask16 ka = tail_mask(m < 16 ? m : 16);
      const __m512 xa = _mm512_maskz_loadu_ps(ka, xp);
      _mm512_mask_storeu_ps(xp, ka, _mm512_mask3_fmadd_ps(_mm512_maskz_permutexvar_ps(0xFFFF, lo, yv), vv, xa, ka & even));
      if (m > 16) {
        const __mmask16 kb = tail_mask(m - 16);
        const __m512 xb = _mm512_maskz_loadu_ps(kb, xp + 16);
        _mm512_mask_storeu_ps(xp + 16, kb,
                              _mm512_mask3_fmadd_ps(_mm512_maskz_permutexvar_ps(0xFFFF, hi, yv), vv, xb, kb & even));
      }
    }
}

/// Σ over images m < batch, rows, i < n of dy[m·dy_image + row·dy_step + i] · x[m·x_image +
/// row·x_step + 2i]: one stored weight's gradient. Four accumulators take images m ≡ 0..3
/// (mod 4), as dot_runs; fixed order.
EAST_TARGET_AVX512 inline float dot_even_rows(const float* dy, std::size_t dy_image, std::size_t dy_step,
                                              const float* x, std::size_t x_image, std::size_t x_step,
                                              std::size_t batch, std::size_t rows, std::size_t n) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (std::size_t m = 0; m < batch; ++m) {
    const float* d = dy + m * dy_image;
    const float* xm = x + m * x_image;
    __m512& a = acc[m & 3];
    for (std::size_t r = 0; r < rows; ++r, d += dy_step, xm += x_step)
      for (std::size_t i = 0; i < n; i += 16) {
        const std::size_t c = n - i < 16 ? n - i : 16;
        const __mmask16 k = tail_mask(c);
        a = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(k, d + i), load_even(xm + 2 * i, c), a, k);
      }
  }
  return hsum(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

}  // namespace east::sparse::detail::avx512
#endif
