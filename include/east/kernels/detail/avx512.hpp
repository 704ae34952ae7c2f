#pragma once
// AVX-512 bodies (F/VL/BW/DQ). 16 keys per vector; the mask word's 16-bit slices are used
// directly as lane masks, so restricting to active/inactive positions costs nothing and lanes
// without candidates are never loaded. Compress goes through a register, not memory: the
// memory form of vpcompressd is microcoded on AMD Zen 4.
#include "common.hpp"

#if defined(EAST_KERNELS_X86)
namespace east::kernels::detail::avx512 {

// Loads 16 lanes; a masked load only at the array's end. Unaligned masked loads that cross a
// cache line are several times slower than plain ones on AMD Zen 4, and lanes inside the
// array are always safe to read.
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE __m512i load16(const void* p, bool full, __mmask16 valid) {
  return full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(valid, p);
}

// Not _mm512_reduce_add_epi32: GCC 12's version trips -Wuninitialized in its own header.
EAST_TARGET_AVX512 inline std::size_t hsum(__m512i v) {
  alignas(64) std::uint32_t a[16];
  _mm512_store_si512(a, v);
  std::size_t s = 0;
  for (std::uint32_t x : a) s += x;
  return s;
}

EAST_TARGET_AVX512 inline void filter(const KeySource& src, std::size_t begin, std::size_t end,
                                      const std::uint64_t* mask, Among among, std::uint32_t lo,
                                      std::uint32_t hi, std::uint32_t* out, std::size_t cap,
                                      FilterCounts& c) {
  const auto* p = static_cast<const std::uint32_t*>(src.data);
  const __m512i vand = _mm512_set1_epi32(static_cast<int>(src.and_mask));
  const __m512i vxor = _mm512_set1_epi32(static_cast<int>(src.xor_mask));
  const __m512i vlo = _mm512_set1_epi32(static_cast<int>(lo)), vhi = _mm512_set1_epi32(static_cast<int>(hi));
  const __m512i one = _mm512_set1_epi32(1);
  // Per-lane counters: a masked add is one uop where kmov + popcnt + add would be three.
  __m512i acc_lt = _mm512_setzero_si512(), acc_el = _mm512_setzero_si512(), acc_eh = _mm512_setzero_si512();
  std::size_t mid = 0;
  for (std::size_t b = begin; b < end; b += 64) {
    if (mid > cap) {
      c.overflow = true;
      break;
    }
    const std::uint64_t cw = candidate_word(mask, among, b, end);
    if (cw == 0) continue;
    const bool full = b + 64 <= end;
    for (int q = 0; q < 4; ++q) {
      const __mmask16 m = static_cast<__mmask16>(cw >> (16 * q));
      if (m == 0) continue;
      const __m512i x = load16(p + b + 16 * q, full, m);
      const __m512i t = _mm512_xor_si512(_mm512_and_si512(x, vand), vxor);
      const __mmask16 lt = _mm512_mask_cmplt_epu32_mask(m, t, vlo);
      const __mmask16 el = _mm512_mask_cmpeq_epu32_mask(m, t, vlo);
      const __mmask16 eh = _mm512_mask_cmpeq_epu32_mask(m, t, vhi);
      const __mmask16 md = _mm512_mask_cmplt_epu32_mask(_mm512_mask_cmpgt_epu32_mask(m, t, vlo), t, vhi);
      acc_lt = _mm512_mask_add_epi32(acc_lt, lt, acc_lt, one);
      acc_el = _mm512_mask_add_epi32(acc_el, el, acc_el, one);
      acc_eh = _mm512_mask_add_epi32(acc_eh, eh, acc_eh, one);
      // Branch-free: the store always happens, the cursor moves only by the kept count.
      _mm512_storeu_si512(out + mid, _mm512_maskz_compress_epi32(md, t));
      mid += static_cast<std::size_t>(__builtin_popcount(md));
    }
  }
  // Lane counters are 32-bit: fine for n < 2^36.
  c.lt += hsum(acc_lt);
  c.eq_lo += hsum(acc_el);
  c.eq_hi += hsum(acc_eh);
  c.mid += mid;
}

EAST_TARGET_AVX512 inline std::size_t mark(const KeySource& src, std::size_t begin, std::size_t end,
                                           const std::uint64_t* mask, Among among, std::uint32_t thr,
                                           std::size_t limit, std::uint64_t* out) {
  const auto* p = static_cast<const std::uint32_t*>(src.data);
  const __m512i vand = _mm512_set1_epi32(static_cast<int>(src.and_mask));
  const __m512i vxor = _mm512_set1_epi32(static_cast<int>(src.xor_mask));
  const __m512i vt = _mm512_set1_epi32(static_cast<int>(thr));
  std::size_t seen = 0;
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t cw = candidate_word(mask, among, b, end);
    if (cw == 0) continue;
    const bool full = b + 64 <= end;
    std::uint64_t lt = 0, eq = 0;
    for (int q = 0; q < 4; ++q) {
      const __mmask16 m = static_cast<__mmask16>(cw >> (16 * q));
      if (m == 0) continue;
      const __m512i x = load16(p + b + 16 * q, full, m);
      const __m512i t = _mm512_xor_si512(_mm512_and_si512(x, vand), vxor);
      lt |= static_cast<std::uint64_t>(_mm512_mask_cmplt_epu32_mask(m, t, vt)) << (16 * q);
      eq |= static_cast<std::uint64_t>(_mm512_mask_cmpeq_epu32_mask(m, t, vt)) << (16 * q);
    }
    if (eq) {
      const std::size_t e = static_cast<std::size_t>(popcount64(eq));
      seen += e;
      if (e <= limit) {
        limit -= e;
      } else {
        eq = limit ? _pdep_u64((std::uint64_t{1} << limit) - 1, eq) : 0;  // lowest `limit` ties
        limit = 0;
      }
      lt |= eq;
    }
    if (lt) out[b >> 6] |= lt;
  }
  return seen;
}

EAST_TARGET_AVX512 inline void apply_mask(float* x, const std::uint64_t* mask, std::size_t begin,
                                          std::size_t end) {
  const __m512 zero = _mm512_setzero_ps();
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t off = ~mask[b >> 6] & valid_word(b, end);
    if (off == 0) continue;
    const bool full = b + 64 <= end;
    for (int q = 0; q < 4; ++q) {
      const __mmask16 m = static_cast<__mmask16>(off >> (16 * q));
      if (m == 0) continue;
      float* px = x + b + 16 * q;
      const __m512i v = load16(px, full, m);
      // Store only lanes that change: pruned weights are usually 0 already, so no write traffic.
      const __mmask16 nz = _mm512_mask_test_epi32_mask(m, v, v);
      if (nz) _mm512_mask_storeu_ps(px, nz, zero);
    }
  }
}

EAST_TARGET_AVX512 inline void fill_where(float* x, const std::uint64_t* where, std::size_t begin,
                                          std::size_t end, float value) {
  const __m512 vv = _mm512_set1_ps(value);
  const __m512i vb = _mm512_castps_si512(vv);
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t on = where[b >> 6] & valid_word(b, end);
    if (on == 0) continue;
    const bool full = b + 64 <= end;
    for (int q = 0; q < 4; ++q) {
      const __mmask16 m = static_cast<__mmask16>(on >> (16 * q));
      if (m == 0) continue;
      float* px = x + b + 16 * q;
      const __m512i v = load16(px, full, m);
      const __mmask16 ne = _mm512_mask_cmpneq_epi32_mask(m, v, vb);
      if (ne) _mm512_mask_storeu_ps(px, ne, vv);
    }
  }
}

EAST_TARGET_AVX512 inline NonfiniteCount count_nonfinite(const float* x, std::size_t begin, std::size_t end) {
  NonfiniteCount r;
  const __m512i vabs = _mm512_set1_epi32(0x7FFFFFFF), vinf = _mm512_set1_epi32(0x7F800000);
  for (std::size_t i = begin; i < end; i += 16) {
    const __mmask16 m = end - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (end - i)) - 1);
    const __m512i v = _mm512_and_si512(load16(x + i, m == 0xFFFF, m), vabs);
    const __mmask16 nf = _mm512_mask_cmpge_epu32_mask(m, v, vinf);
    if (nf) {  // rare, so a branch is cheaper than counting every vector
      if (r.count == 0) r.first = i + static_cast<std::size_t>(__builtin_ctz(nf));
      r.count += static_cast<std::size_t>(__builtin_popcount(nf));
    }
  }
  return r;
}

EAST_TARGET_AVX512 inline void masked_sgd(float* w, const float* g, float* buf, const std::uint64_t* mask,
                                          std::size_t begin, std::size_t end, const SgdParams& p,
                                          std::uint32_t* hist) {
  const bool mom = p.momentum != 0.0f, wd = p.weight_decay != 0.0f, nest = p.nesterov;
  const __m512 vwd = _mm512_set1_ps(p.weight_decay), vmu = _mm512_set1_ps(p.momentum);
  const __m512 vd1 = _mm512_set1_ps(1.0f - p.dampening), vnlr = _mm512_set1_ps(-p.lr);
  const __m512 zero = _mm512_setzero_ps();
  const __m512i vabs = _mm512_set1_epi32(0x7FFFFFFF);
  alignas(64) std::uint32_t bins[16];
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t valid = valid_word(b, end), on = mask[b >> 6] & valid;
    for (int q = 0; q < 4; ++q) {
      const __mmask16 v = static_cast<__mmask16>(valid >> (16 * q));
      if (v == 0) break;
      const __mmask16 m = static_cast<__mmask16>(on >> (16 * q));
      const std::size_t i = b + 16 * q;
      const bool full = v == 0xFFFF;
      if (m == 0) {  // all inactive: read-only unless something is not zero yet
        const __m512i x = load16(w + i, full, v);
        const __mmask16 nz = _mm512_mask_test_epi32_mask(v, x, x);
        if (nz) _mm512_mask_storeu_ps(w + i, nz, zero);
        if (mom) {
          const __m512i y = load16(buf + i, full, v);
          const __mmask16 nzb = _mm512_mask_test_epi32_mask(v, y, y);
          if (nzb) _mm512_mask_storeu_ps(buf + i, nzb, zero);
        }
        continue;
      }
      const __m512 wi = _mm512_castsi512_ps(load16(w + i, full, v));
      __m512 gi = _mm512_castsi512_ps(load16(g + i, full, v));
      if (wd) gi = _mm512_fmadd_ps(vwd, wi, gi);
      __m512 d = gi;
      if (mom) {
        const __m512 bi =
            _mm512_fmadd_ps(vmu, _mm512_castsi512_ps(load16(buf + i, full, v)), _mm512_mul_ps(vd1, gi));
        // Inactive lanes get 0, so a full vector is one plain store.
        if (full)
          _mm512_storeu_ps(buf + i, _mm512_maskz_mov_ps(m, bi));
        else
          _mm512_mask_storeu_ps(buf + i, v, _mm512_maskz_mov_ps(m, bi));
        d = nest ? _mm512_fmadd_ps(vmu, bi, gi) : bi;
      }
      const __m512 wn = _mm512_maskz_mov_ps(m, _mm512_fmadd_ps(vnlr, d, wi));
      if (full)
        _mm512_storeu_ps(w + i, wn);
      else
        _mm512_mask_storeu_ps(w + i, v, wn);
      if (hist) {
        // maskz form: the plain one trips -Wmaybe-uninitialized in GCC 12 headers
        _mm512_store_si512(bins, _mm512_maskz_srli_epi32(
                                     __mmask16(0xFFFF), _mm512_and_si512(_mm512_castps_si512(wn), vabs), 20));
        for (unsigned mm = m; mm; mm &= mm - 1) ++hist[bins[__builtin_ctz(mm)]];
      }
    }
  }
}

}  // namespace east::kernels::detail::avx512
#endif
