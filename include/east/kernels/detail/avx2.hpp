#pragma once
// AVX2 bodies: 8 keys per vector. AVX2 has no unsigned compare and no compress, so keys are
// biased by 2^31 for signed compares and compress is a permute through a 256-entry table.
#include "common.hpp"

#if defined(EAST_KERNELS_X86)
namespace east::kernels::detail::avx2 {

struct CompressTable {
  std::uint32_t idx[256][8];
};
constexpr CompressTable make_compress_table() {
  CompressTable t{};
  for (unsigned m = 0; m < 256; ++m) {
    unsigned k = 0;
    for (unsigned j = 0; j < 8; ++j)
      if ((m >> j) & 1u) t.idx[m][k++] = j;
    while (k < 8) t.idx[m][k++] = 0;
  }
  return t;
}
alignas(64) inline constexpr CompressTable kCompress = make_compress_table();

/// All-ones lanes where bit j of `bits` is set.
EAST_TARGET_AVX2 EAST_ALWAYS_INLINE __m256i lane_mask(unsigned bits) {
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), sel), sel);
}
EAST_TARGET_AVX2 EAST_ALWAYS_INLINE unsigned lane_bits(__m256i v) {
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
}
/// Loads 8 lanes; a masked load (slow on AMD) only at the array's end, where `lm` holds the
/// lanes inside the array.
EAST_TARGET_AVX2 EAST_ALWAYS_INLINE __m256i load_lanes(const void* p, bool full, __m256i lm) {
  return full ? _mm256_loadu_si256(static_cast<const __m256i*>(p))
              : _mm256_maskload_epi32(static_cast<const int*>(p), lm);
}
EAST_TARGET_AVX2 inline std::size_t hsum(__m256i v) {
  alignas(32) std::uint32_t a[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(a), v);
  std::size_t s = 0;
  for (std::uint32_t x : a) s += x;
  return s;
}

EAST_TARGET_AVX2 inline void filter(const KeySource& src, std::size_t begin, std::size_t end,
                                    const std::uint64_t* mask, Among among, std::uint32_t lo,
                                    std::uint32_t hi, std::uint32_t* out, std::size_t cap, FilterCounts& c) {
  const auto* p = static_cast<const std::uint32_t*>(src.data);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i vand = _mm256_set1_epi32(static_cast<int>(src.and_mask));
  const __m256i vxorb = _mm256_set1_epi32(static_cast<int>(src.xor_mask ^ 0x80000000u));
  const __m256i vlo = _mm256_set1_epi32(static_cast<int>(lo ^ 0x80000000u));
  const __m256i vhi = _mm256_set1_epi32(static_cast<int>(hi ^ 0x80000000u));
  __m256i acc_lt = _mm256_setzero_si256(), acc_el = _mm256_setzero_si256(), acc_eh = _mm256_setzero_si256();
  std::size_t mid = 0;
  for (std::size_t b = begin; b < end; b += 64) {
    if (mid > cap) {
      c.overflow = true;
      break;
    }
    const std::uint64_t cw = candidate_word(mask, among, b, end);
    if (cw == 0) continue;
    const bool full = b + 64 <= end;
    for (int q = 0; q < 8; ++q) {
      const unsigned bits = static_cast<unsigned>(cw >> (8 * q)) & 0xFFu;
      if (bits == 0) continue;
      const __m256i lm = lane_mask(bits);
      const __m256i x = load_lanes(p + b + 8 * q, full, lm);
      const __m256i tb = _mm256_xor_si256(_mm256_and_si256(x, vand), vxorb);  // biased key
      acc_lt = _mm256_sub_epi32(acc_lt, _mm256_and_si256(_mm256_cmpgt_epi32(vlo, tb), lm));
      acc_el = _mm256_sub_epi32(acc_el, _mm256_and_si256(_mm256_cmpeq_epi32(tb, vlo), lm));
      acc_eh = _mm256_sub_epi32(acc_eh, _mm256_and_si256(_mm256_cmpeq_epi32(tb, vhi), lm));
      const __m256i md =
          _mm256_and_si256(_mm256_and_si256(_mm256_cmpgt_epi32(tb, vlo), _mm256_cmpgt_epi32(vhi, tb)), lm);
      const unsigned mb = lane_bits(md);
      const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.idx[mb]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + mid),
                          _mm256_permutevar8x32_epi32(_mm256_xor_si256(tb, sign), idx));
      mid += static_cast<std::size_t>(__builtin_popcount(mb));
    }
  }
  c.lt += hsum(acc_lt);
  c.eq_lo += hsum(acc_el);
  c.eq_hi += hsum(acc_eh);
  c.mid += mid;
}

EAST_TARGET_AVX2 inline std::size_t mark(const KeySource& src, std::size_t begin, std::size_t end,
                                         const std::uint64_t* mask, Among among, std::uint32_t thr,
                                         std::size_t limit, std::uint64_t* out) {
  const auto* p = static_cast<const std::uint32_t*>(src.data);
  const __m256i vand = _mm256_set1_epi32(static_cast<int>(src.and_mask));
  const __m256i vxorb = _mm256_set1_epi32(static_cast<int>(src.xor_mask ^ 0x80000000u));
  const __m256i vt = _mm256_set1_epi32(static_cast<int>(thr ^ 0x80000000u));
  std::size_t seen = 0;
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t cw = candidate_word(mask, among, b, end);
    if (cw == 0) continue;
    const bool full = b + 64 <= end;
    std::uint64_t lt = 0, eq = 0;
    for (int q = 0; q < 8; ++q) {
      const unsigned bits = static_cast<unsigned>(cw >> (8 * q)) & 0xFFu;
      if (bits == 0) continue;
      const __m256i lm = lane_mask(bits);
      const __m256i tb = _mm256_xor_si256(_mm256_and_si256(load_lanes(p + b + 8 * q, full, lm), vand), vxorb);
      lt |= static_cast<std::uint64_t>(lane_bits(_mm256_cmpgt_epi32(vt, tb)) & bits) << (8 * q);
      eq |= static_cast<std::uint64_t>(lane_bits(_mm256_cmpeq_epi32(tb, vt)) & bits) << (8 * q);
    }
    if (eq) {
      const std::size_t e = static_cast<std::size_t>(popcount64(eq));
      seen += e;
      if (e <= limit) {
        limit -= e;
      } else {
        eq = limit ? _pdep_u64((std::uint64_t{1} << limit) - 1, eq) : 0;
        limit = 0;
      }
      lt |= eq;
    }
    if (lt) out[b >> 6] |= lt;
  }
  return seen;
}

EAST_TARGET_AVX2 inline void apply_mask(float* x, const std::uint64_t* mask, std::size_t begin,
                                        std::size_t end) {
  const __m256i zero = _mm256_setzero_si256();
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t off = ~mask[b >> 6] & valid_word(b, end);
    if (off == 0) continue;
    const bool full = b + 64 <= end;
    for (int q = 0; q < 8; ++q) {
      const unsigned bits = static_cast<unsigned>(off >> (8 * q)) & 0xFFu;
      if (bits == 0) continue;
      float* px = x + b + 8 * q;
      const __m256i lm = lane_mask(bits);
      const __m256i nz = _mm256_andnot_si256(_mm256_cmpeq_epi32(load_lanes(px, full, lm), zero), lm);
      if (lane_bits(nz)) _mm256_maskstore_ps(px, nz, _mm256_setzero_ps());
    }
  }
}

EAST_TARGET_AVX2 inline void fill_where(float* x, const std::uint64_t* where, std::size_t begin,
                                        std::size_t end, float value) {
  const __m256 vv = _mm256_set1_ps(value);
  const __m256i vb = _mm256_castps_si256(vv);
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t on = where[b >> 6] & valid_word(b, end);
    if (on == 0) continue;
    const bool full = b + 64 <= end;
    for (int q = 0; q < 8; ++q) {
      const unsigned bits = static_cast<unsigned>(on >> (8 * q)) & 0xFFu;
      if (bits == 0) continue;
      float* px = x + b + 8 * q;
      const __m256i lm = lane_mask(bits);
      const __m256i ne = _mm256_andnot_si256(_mm256_cmpeq_epi32(load_lanes(px, full, lm), vb), lm);
      if (lane_bits(ne)) _mm256_maskstore_ps(px, ne, vv);
    }
  }
}

EAST_TARGET_AVX2 inline NonfiniteCount count_nonfinite(const float* x, std::size_t begin, std::size_t end) {
  NonfiniteCount r;
  const __m256i vabs = _mm256_set1_epi32(0x7FFFFFFF), vmax = _mm256_set1_epi32(0x7F7FFFFF);
  std::size_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), vabs);
    const unsigned nf = lane_bits(_mm256_cmpgt_epi32(v, vmax));  // v >= 0 after the abs, so signed is fine
    if (nf) {
      if (r.count == 0) r.first = i + static_cast<std::size_t>(__builtin_ctz(nf));
      r.count += static_cast<std::size_t>(__builtin_popcount(nf));
    }
  }
  for (; i < end; ++i)
    if ((load_bits(x, i) & 0x7FFFFFFFu) >= 0x7F800000u) {
      if (r.count == 0) r.first = i;
      ++r.count;
    }
  return r;
}

EAST_TARGET_AVX2 inline void masked_sgd(float* w, const float* g, float* buf, const std::uint64_t* mask,
                                        std::size_t begin, std::size_t end, const SgdParams& p,
                                        std::uint32_t* hist) {
  const bool mom = p.momentum != 0.0f, wd = p.weight_decay != 0.0f, nest = p.nesterov;
  const __m256 vwd = _mm256_set1_ps(p.weight_decay), vmu = _mm256_set1_ps(p.momentum);
  const __m256 vd1 = _mm256_set1_ps(1.0f - p.dampening), vnlr = _mm256_set1_ps(-p.lr);
  const __m256i zero = _mm256_setzero_si256(), vabs = _mm256_set1_epi32(0x7FFFFFFF);
  alignas(32) std::uint32_t bins[8];
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t valid = valid_word(b, end), on = mask[b >> 6] & valid;
    for (int q = 0; q < 8; ++q) {
      const unsigned v = static_cast<unsigned>(valid >> (8 * q)) & 0xFFu;
      if (v == 0) break;
      const unsigned m = static_cast<unsigned>(on >> (8 * q)) & 0xFFu;
      const std::size_t i = b + 8 * q;
      const __m256i lv = lane_mask(v);
      if (m == 0) {  // all inactive: read-only unless something is not zero yet
        const __m256i nz =
            _mm256_andnot_si256(_mm256_cmpeq_epi32(load_lanes(w + i, v == 0xFFu, lv), zero), lv);
        if (lane_bits(nz)) _mm256_maskstore_ps(w + i, nz, _mm256_setzero_ps());
        if (mom) {
          const __m256i nzb =
              _mm256_andnot_si256(_mm256_cmpeq_epi32(load_lanes(buf + i, v == 0xFFu, lv), zero), lv);
          if (lane_bits(nzb)) _mm256_maskstore_ps(buf + i, nzb, _mm256_setzero_ps());
        }
        continue;
      }
      const __m256 lm = _mm256_castsi256_ps(lane_mask(m));
      const __m256 wi = _mm256_castsi256_ps(load_lanes(w + i, v == 0xFFu, lv));
      __m256 gi = _mm256_castsi256_ps(load_lanes(g + i, v == 0xFFu, lv));
      if (wd) gi = _mm256_fmadd_ps(vwd, wi, gi);
      __m256 d = gi;
      if (mom) {
        const __m256 bi = _mm256_fmadd_ps(vmu, _mm256_castsi256_ps(load_lanes(buf + i, v == 0xFFu, lv)),
                                          _mm256_mul_ps(vd1, gi));
        const __m256 bo = _mm256_and_ps(bi, lm);
        if (v == 0xFFu)
          _mm256_storeu_ps(buf + i, bo);
        else
          _mm256_maskstore_ps(buf + i, lv, bo);
        d = nest ? _mm256_fmadd_ps(vmu, bi, gi) : bi;
      }
      const __m256 wn = _mm256_and_ps(_mm256_fmadd_ps(vnlr, d, wi), lm);
      if (v == 0xFFu)
        _mm256_storeu_ps(w + i, wn);
      else
        _mm256_maskstore_ps(w + i, lv, wn);
      if (hist) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(bins),
                           _mm256_srli_epi32(_mm256_and_si256(_mm256_castps_si256(wn), vabs), 20));
        for (unsigned mm = m; mm; mm &= mm - 1) ++hist[bins[__builtin_ctz(mm)]];
      }
    }
  }
}

}  // namespace east::kernels::detail::avx2
#endif
