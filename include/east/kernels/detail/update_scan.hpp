#pragma once
// Bodies of the fused mask-update scan (kernels/update.hpp): one pass over a layer's weights,
// and over its regrow scores when they are an array, that gathers everything the drop/grow
// decisions and the re-masking need. Scalar, AVX2 and AVX-512 bodies give identical results.
#include <algorithm>
#include <vector>

#include "../../core/random.hpp"
#include "../dispatch.hpp"
#include "common.hpp"

namespace east::kernels {

/// What the scan ranks among inactive positions for regrowth.
enum class RegrowKeys {
  none,       ///< nothing (no regrowth, or a criterion the scan does not know)
  magnitude,  ///< |x[i]|, largest first
  random,     ///< stream.bits32(i), largest first
};

/// What one scan collects besides the weight checks.
struct ScanPlan {
  RegrowKeys regrow = RegrowKeys::none;
  const float* x = nullptr;  ///< magnitude: n scores (checked for finiteness at every position)
  RandomStream stream{};     ///< random: the criterion's stream
  std::size_t k = 0;         ///< how many to grow; > 0 unless regrow == none
};

/// Everything one scan found. Indices are positions in the layer, ascending within each list.
struct ScanResult {
  detail::NonfiniteCount weight_bad;  ///< non-finite weights (any position)
  detail::NonfiniteCount x_bad;       ///< non-finite scores (any position; magnitude only)
  bool x_zero_candidate = false;      ///< an inactive position has score ±0 (magnitude only)
  bool ever_missing = false;          ///< an active bit is not set in the ever-active mask
  bool overflow = false;              ///< too many tied keys: `top` is incomplete, select otherwise
  std::vector<std::uint32_t> active_index, active_bits;  ///< every active position and its weight's bits
  std::vector<std::uint32_t>
      dirty_words;  ///< mask words with a nonzero (bits) weight at an inactive position
  /// Regrow candidates (transformed key t = ~key, smallest best): holds every candidate whose t
  /// is <= `top_hi`, and at least k of them, so the k best of the layer are among them.
  std::vector<std::uint32_t> top_index, top_key;
  std::uint32_t top_hi = ~0u;
  std::size_t top_count = 0;
};

namespace detail {

/// Streaming exact top-k buffer: keeps every candidate with t <= hi; when full, lowers hi to the
/// k-th smallest kept t and drops what lies above (keeping index order), so the k best of all
/// candidates seen are always inside. Too many ties to shrink → overflow (caller selects otherwise).
struct TopCollector {
  std::uint32_t* idx = nullptr;
  std::uint32_t* key = nullptr;
  std::size_t count = 0, cap = 0, k = 0;
  std::uint32_t hi = ~0u;
  bool on = false;
  bool overflow = false;
  std::vector<std::uint32_t>* tmp = nullptr;

  void compact() {
    tmp->assign(key, key + count);
    std::nth_element(tmp->begin(), tmp->begin() + static_cast<std::ptrdiff_t>(k - 1), tmp->end());
    const std::uint32_t t = (*tmp)[k - 1];
    std::size_t o = 0;
    for (std::size_t j = 0; j < count; ++j)
      if (key[j] <= t) {
        idx[o] = idx[j];
        key[o] = key[j];
        ++o;
      }
    count = o;
    hi = t;
    if (count > cap - cap / 4) {  // ties at t fill the buffer: it cannot make progress
      on = false;
      overflow = true;
    }
  }
  EAST_ALWAYS_INLINE void push(std::uint32_t i, std::uint32_t t) {
    idx[count] = i;
    key[count] = t;
    if (++count >= cap) compact();
  }
};

EAST_ALWAYS_INLINE void note_nonfinite(NonfiniteCount& c, std::size_t i, std::size_t count) {
  if (c.count == 0) c.first = i;
  c.count += count;
}

namespace scalar {

inline void update_scan(const float* w, const std::uint64_t* mask, const std::uint64_t* ever,
                        std::size_t begin, std::size_t end, const ScanPlan& p, ScanResult& r,
                        TopCollector& c) {
  const bool mag = p.regrow == RegrowKeys::magnitude && c.on;
  const bool rnd = p.regrow == RegrowKeys::random && c.on;
  for (std::size_t b = begin; b < end; b += 64) {
    const std::size_t m = std::min<std::size_t>(64, end - b);
    const std::uint64_t on = mask[b >> 6] & valid_word(b, end);
    if (on & ~ever[b >> 6]) r.ever_missing = true;
    bool dirty = false;
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t i = b + j;
      const std::uint32_t wb = load_bits(w, i);
      if ((wb & 0x7FFFFFFFu) >= 0x7F800000u) note_nonfinite(r.weight_bad, i, 1);
      const bool active = (on >> j) & 1u;
      if (active) {
        r.active_index.push_back(static_cast<std::uint32_t>(i));
        r.active_bits.push_back(wb);
      } else if (wb != 0) {
        dirty = true;
      }
      if (mag) {
        const std::uint32_t xa = load_bits(p.x, i) & 0x7FFFFFFFu;
        if (xa >= 0x7F800000u) note_nonfinite(r.x_bad, i, 1);
        if (!active) {
          r.x_zero_candidate |= xa == 0;
          const std::uint32_t t = ~xa;
          if (c.on && t <= c.hi) c.push(static_cast<std::uint32_t>(i), t);
        }
      } else if (rnd && !active) {
        const std::uint32_t t = ~p.stream.bits32(i);
        if (c.on && t <= c.hi) c.push(static_cast<std::uint32_t>(i), t);
      }
    }
    if (dirty) r.dirty_words.push_back(static_cast<std::uint32_t>(b >> 6));
  }
}

}  // namespace scalar

#if defined(EAST_KERNELS_X86)
namespace avx512 {

EAST_TARGET_AVX512 EAST_ALWAYS_INLINE __m512i scan_load16(const void* p, bool full, __mmask16 valid) {
  return full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(valid, p);
}

// bits32(i..i+15) of a RandomStream: mix64(key + i * C) >> 32, eight 64-bit lanes at a time.
EAST_TARGET_AVX512 EAST_ALWAYS_INLINE __m512i random_keys16(std::uint64_t key, std::size_t i) {
  const __m512i vkey = _mm512_set1_epi64(static_cast<long long>(key));
  const __m512i vc = _mm512_set1_epi64(static_cast<long long>(0xD1B54A32D192ED03ull));
  const __m512i g = _mm512_set1_epi64(static_cast<long long>(0x9E3779B97F4A7C15ull));
  const __m512i c1 = _mm512_set1_epi64(static_cast<long long>(0xBF58476D1CE4E5B9ull));
  const __m512i c2 = _mm512_set1_epi64(static_cast<long long>(0x94D049BB133111EBull));
  const __m512i base = _mm512_set1_epi64(static_cast<long long>(i));
  __m256i half[2];
  for (int h = 0; h < 2; ++h) {
    const __m512i idx = _mm512_add_epi64(base, _mm512_setr_epi64(8 * h + 0, 8 * h + 1, 8 * h + 2, 8 * h + 3,
                                                                 8 * h + 4, 8 * h + 5, 8 * h + 6, 8 * h + 7));
    __m512i x = _mm512_add_epi64(_mm512_add_epi64(vkey, _mm512_mullo_epi64(idx, vc)), g);
    // maskz forms: the plain ones trip -Wmaybe-uninitialized in GCC 12's headers
    x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_maskz_srli_epi64(0xFF, x, 30)), c1);
    x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_maskz_srli_epi64(0xFF, x, 27)), c2);
    x = _mm512_xor_si512(x, _mm512_maskz_srli_epi64(0xFF, x, 31));
    half[h] = _mm512_maskz_cvtepi64_epi32(0xFF, _mm512_maskz_srli_epi64(0xFF, x, 32));
  }
  return _mm512_maskz_inserti64x4(0xFF, _mm512_castsi256_si512(half[0]), half[1], 1);
}

EAST_TARGET_AVX512 inline void update_scan(const float* w, const std::uint64_t* mask,
                                           const std::uint64_t* ever, std::size_t begin, std::size_t end,
                                           const ScanPlan& p, ScanResult& r, TopCollector& c) {
  const bool mag = p.regrow == RegrowKeys::magnitude && c.on;
  const bool rnd = p.regrow == RegrowKeys::random && c.on;
  const __m512i vabs = _mm512_set1_epi32(0x7FFFFFFF), vinf = _mm512_set1_epi32(0x7F800000);
  const __m512i ones = _mm512_set1_epi32(-1);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i vhi = _mm512_set1_epi32(static_cast<int>(c.hi));
  const auto* x = reinterpret_cast<const std::uint32_t*>(p.x);
  alignas(64) std::uint32_t lanes[16];
  bool zero_cand = false;
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t valid = valid_word(b, end), on = mask[b >> 6] & valid;
    if (on & ~ever[b >> 6]) r.ever_missing = true;
    bool dirty = false;
    for (int q = 0; q < 4; ++q) {
      const __mmask16 vm = static_cast<__mmask16>(valid >> (16 * q));
      if (vm == 0) break;
      const __mmask16 am = static_cast<__mmask16>(on >> (16 * q));
      const __mmask16 cm = static_cast<__mmask16>(vm & ~am);
      const std::size_t i = b + 16 * static_cast<std::size_t>(q);
      const bool full = vm == 0xFFFF;
      const __m512i wv = scan_load16(w + i, full, vm);
      const __mmask16 nf = _mm512_mask_cmpge_epu32_mask(vm, _mm512_and_si512(wv, vabs), vinf);
      if (nf)
        note_nonfinite(r.weight_bad, i + static_cast<std::size_t>(__builtin_ctz(nf)),
                       static_cast<std::size_t>(__builtin_popcount(nf)));
      dirty |= _mm512_mask_test_epi32_mask(cm, wv, wv) != 0;
      if (am) {
        _mm512_store_si512(lanes, wv);
        for (unsigned a = am; a; a &= a - 1) {
          const int j = __builtin_ctz(a);
          r.active_index.push_back(static_cast<std::uint32_t>(i + static_cast<std::size_t>(j)));
          r.active_bits.push_back(lanes[j]);
        }
      }
      __m512i t;
      __mmask16 keep = 0;
      if (mag) {
        const __m512i xa = _mm512_and_si512(scan_load16(x + i, full, vm), vabs);
        const __mmask16 nfx = _mm512_mask_cmpge_epu32_mask(vm, xa, vinf);
        if (nfx)
          note_nonfinite(r.x_bad, i + static_cast<std::size_t>(__builtin_ctz(nfx)),
                         static_cast<std::size_t>(__builtin_popcount(nfx)));
        zero_cand |= _mm512_mask_testn_epi32_mask(cm, xa, xa) != 0;
        t = _mm512_xor_si512(xa, ones);
        keep = _mm512_mask_cmple_epu32_mask(cm, t, vhi);
      } else if (rnd && cm) {
        t = _mm512_xor_si512(random_keys16(p.stream.key, i), ones);
        keep = _mm512_mask_cmple_epu32_mask(cm, t, vhi);
      }
      if (keep && c.on) {
        const __m512i vi = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(i)), iota);
        _mm512_storeu_si512(c.idx + c.count, _mm512_maskz_compress_epi32(keep, vi));
        _mm512_storeu_si512(c.key + c.count, _mm512_maskz_compress_epi32(keep, t));
        c.count += static_cast<std::size_t>(__builtin_popcount(keep));
        if (c.count >= c.cap) {
          c.compact();
          vhi = _mm512_set1_epi32(static_cast<int>(c.hi));
        }
      }
    }
    if (dirty) r.dirty_words.push_back(static_cast<std::uint32_t>(b >> 6));
  }
  r.x_zero_candidate |= zero_cand;
}

}  // namespace avx512

namespace avx2 {

EAST_TARGET_AVX2 EAST_ALWAYS_INLINE __m256i scan_load8(const std::uint32_t* p, std::size_t n_valid) {
  if (n_valid >= 8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  alignas(32) std::uint32_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (std::size_t j = 0; j < n_valid; ++j) tmp[j] = p[j];
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
}

EAST_TARGET_AVX2 EAST_ALWAYS_INLINE unsigned movemask32(__m256i v) {
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
}

// AVX2 has no 64-bit multiply: random keys take the scalar body.
EAST_TARGET_AVX2 inline void update_scan(const float* w, const std::uint64_t* mask, const std::uint64_t* ever,
                                         std::size_t begin, std::size_t end, const ScanPlan& p, ScanResult& r,
                                         TopCollector& c) {
  if (p.regrow == RegrowKeys::random && c.on) return scalar::update_scan(w, mask, ever, begin, end, p, r, c);
  const bool mag = p.regrow == RegrowKeys::magnitude && c.on;
  const __m256i vabs = _mm256_set1_epi32(0x7FFFFFFF), vinf_m1 = _mm256_set1_epi32(0x7F7FFFFF);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u)), zero = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi32(-1);
  const auto* wu = reinterpret_cast<const std::uint32_t*>(w);
  const auto* x = reinterpret_cast<const std::uint32_t*>(p.x);
  alignas(32) std::uint32_t lanes[8], tl[8];
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t valid = valid_word(b, end), on = mask[b >> 6] & valid;
    if (on & ~ever[b >> 6]) r.ever_missing = true;
    bool dirty = false;
    __m256i vhi_s = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(c.hi)), sign);
    for (int q = 0; q < 8; ++q) {
      const unsigned vm = static_cast<unsigned>((valid >> (8 * q)) & 0xFF);
      if (vm == 0) break;
      const unsigned am = static_cast<unsigned>((on >> (8 * q)) & 0xFF);
      const unsigned cm = vm & ~am;
      const std::size_t i = b + 8 * static_cast<std::size_t>(q);
      const std::size_t nv = static_cast<std::size_t>(__builtin_popcount(vm));
      const __m256i wv = scan_load8(wu + i, nv);
      // |w| > 0x7F7FFFFF as signed ints (|w| < 2^31): non-finite.
      const unsigned nf = movemask32(_mm256_cmpgt_epi32(_mm256_and_si256(wv, vabs), vinf_m1)) & vm;
      if (nf)
        note_nonfinite(r.weight_bad, i + static_cast<std::size_t>(__builtin_ctz(nf)),
                       static_cast<std::size_t>(__builtin_popcount(nf)));
      const unsigned nz = ~movemask32(_mm256_cmpeq_epi32(wv, zero)) & 0xFFu;
      dirty |= (nz & cm) != 0;
      if (am) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), wv);
        for (unsigned a = am; a; a &= a - 1) {
          const int j = __builtin_ctz(a);
          r.active_index.push_back(static_cast<std::uint32_t>(i + static_cast<std::size_t>(j)));
          r.active_bits.push_back(lanes[j]);
        }
      }
      if (mag) {
        const __m256i xa = _mm256_and_si256(scan_load8(x + i, nv), vabs);
        const unsigned nfx = movemask32(_mm256_cmpgt_epi32(xa, vinf_m1)) & vm;
        if (nfx)
          note_nonfinite(r.x_bad, i + static_cast<std::size_t>(__builtin_ctz(nfx)),
                         static_cast<std::size_t>(__builtin_popcount(nfx)));
        if (movemask32(_mm256_cmpeq_epi32(xa, zero)) & cm) r.x_zero_candidate = true;
        const __m256i t = _mm256_xor_si256(xa, ones);
        // unsigned t <= hi  <=>  !(signed (t^sign) > (hi^sign))
        const unsigned keep = ~movemask32(_mm256_cmpgt_epi32(_mm256_xor_si256(t, sign), vhi_s)) & cm;
        if (keep && c.on) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(tl), t);
          for (unsigned a = keep; a && c.on; a &= a - 1) {
            const int j = __builtin_ctz(a);
            if (tl[j] <= c.hi) c.push(static_cast<std::uint32_t>(i + static_cast<std::size_t>(j)), tl[j]);
          }
          vhi_s = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(c.hi)), sign);
        }
      }
    }
    if (dirty) r.dirty_words.push_back(static_cast<std::uint32_t>(b >> 6));
  }
}

}  // namespace avx2
#endif

}  // namespace detail
}  // namespace east::kernels
