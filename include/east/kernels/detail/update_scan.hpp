#pragma once
// Bodies of the fused mask-update scan (kernels/update.hpp): one pass over a layer's weights,
// and over its regrow scores when they are an array, that gathers everything the drop/grow
// decisions and the re-masking need. Scalar, AVX2 and AVX-512 bodies give identical results.
// The hot loops only flag rare events (non-finite values); exact counts are taken afterwards.
#include <algorithm>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
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

/// An allocator whose resize() leaves new elements uninitialised: the scan's buffers are sized
/// to their worst case and filled by the kernels, so zero-filling them would be a wasted pass.
template <class T>
struct NoInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = NoInitAllocator<U>;
  };
  NoInitAllocator() = default;
  template <class U>
  NoInitAllocator(const NoInitAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
};
using U32Buffer = std::vector<std::uint32_t, NoInitAllocator<std::uint32_t>>;

/// What one scan collects besides the weight checks.
struct ScanPlan {
  RegrowKeys regrow = RegrowKeys::none;
  const float* x = nullptr;  ///< magnitude: n scores (checked for finiteness at every position)
  RandomStream stream{};     ///< random: the criterion's stream
  std::size_t k = 0;         ///< how many to grow; > 0 unless regrow == none
  std::size_t active = static_cast<std::size_t>(-1);  ///< active positions if known (else counted)
};

/// Everything one scan found. Indices are positions in the layer, ascending within each list.
struct ScanResult {
  detail::NonfiniteCount weight_bad;  ///< non-finite weights (any position)
  detail::NonfiniteCount x_bad;       ///< non-finite scores (any position; magnitude only)
  bool x_zero_candidate = false;      ///< an inactive position has score ±0 (set only when x_bad.count > 0)
  bool ever_missing = false;          ///< an active bit is not set in the ever-active mask
  U32Buffer active_index, active_bits;  ///< every active position and its weight's bits
  U32Buffer dirty_words;                ///< mask words with a nonzero (bits) weight at an inactive position
  /// Regrow candidates (transformed key t = ~key, smallest best). Unless `incomplete`, holds
  /// every candidate whose t is <= some threshold and at least k of them, so the k best of the
  /// layer (ties to the lower index) are among them, in ascending index order.
  U32Buffer top_index, top_key;
  std::size_t top_count = 0;
  bool incomplete = false;  ///< too many tied keys, or the sampled threshold too low: select otherwise
};

namespace detail {

/// The r-th smallest (0-based) of count keys: radix narrowing (a 2048-bin histogram of the keys
/// between their min and max, then only the keys of the bin holding rank r) down to 1024 keys,
/// then nth_element. Branch-free passes: several times faster than nth_element on the whole list,
/// whose partitions mispredict about once per key.
inline std::uint32_t kth_key(const std::uint32_t* key, std::size_t count, std::size_t r,
                             std::vector<std::uint32_t>& tmp) {
  const std::uint32_t* src = key;
  std::size_t m = count;
  for (int level = 0;; ++level) {
    if (m <= 1024 || level >= 4) {
      if (src != tmp.data()) tmp.assign(src, src + m);
      tmp.resize(m);
      std::nth_element(tmp.begin(), tmp.begin() + static_cast<std::ptrdiff_t>(r), tmp.end());
      return tmp[r];
    }
    std::uint32_t lo = ~0u, hi = 0;
    for (std::size_t j = 0; j < m; ++j) {
      lo = std::min(lo, src[j]);
      hi = std::max(hi, src[j]);
    }
    if (lo == hi) return lo;
    const int bits = 32 - __builtin_clz(hi - lo);
    const int shift = bits > 11 ? bits - 11 : 0;
    std::uint32_t hist[2048] = {};
    for (std::size_t j = 0; j < m; ++j) ++hist[(src[j] - lo) >> shift];
    std::uint32_t b = 0;
    for (std::size_t below = 0;; ++b) {
      if (below + hist[b] > r) {
        r -= below;
        break;
      }
      below += hist[b];
    }
    if (shift == 0) return lo + b;
    // Keep the keys of bin b (in place once they are in tmp: writes never pass reads).
    if (src != tmp.data()) tmp.resize(hist[b]);
    std::uint32_t* dst = tmp.data();
    std::size_t o = 0;
    for (std::size_t j = 0; j < m; ++j)
      if (((src[j] - lo) >> shift) == b) dst[o++] = src[j];
    src = dst;
    m = o;
  }
}

/// Streaming exact top-k buffer: keeps every candidate with t <= hi; when full, lowers hi to the
/// k-th smallest kept t and drops what lies above (keeping index order), so the k best of all
/// candidates seen are always inside. Too many ties to shrink → `on` goes off (incomplete).
struct TopCollector {
  std::uint32_t* idx = nullptr;
  std::uint32_t* key = nullptr;
  std::size_t count = 0, cap = 0, k = 0;
  std::uint32_t hi = ~0u;
  bool on = false;
  bool overflow = false;

  __attribute__((noinline)) void compact() {
    thread_local std::vector<std::uint32_t> tmp;
    const std::uint32_t t = kth_key(key, count, k - 1, tmp);
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
};
/// Slack after `cap` in the collector's arrays: a word admits up to 64 before the check, and a
/// compress-store writes 16 lanes.
constexpr std::size_t kTopSlack = 64 + 16;

/// One chunk's outputs: raw cursors into buffers sized to the worst case.
struct ScanState {
  std::uint32_t* act_idx = nullptr;
  std::uint32_t* act_bits = nullptr;
  std::uint32_t* dirty = nullptr;
  std::size_t nact = 0, ndirty = 0;
  bool wbad = false, xbad = false, missing = false;
};

EAST_ALWAYS_INLINE bool nonfinite_bits(std::uint32_t u) noexcept { return (u & 0x7FFFFFFFu) >= 0x7F800000u; }

namespace scalar {

/// Mode: 0 no regrow keys, 1 magnitude of p.x, 2 random keys of p.stream.
template <int Mode>
void update_scan(const float* w, const std::uint64_t* mask, const std::uint64_t* ever, std::size_t begin,
                 std::size_t end, const ScanPlan& p, ScanState& s, TopCollector& c) {
  for (std::size_t b = begin; b < end; b += 64) {
    const std::size_t m = std::min<std::size_t>(64, end - b);
    const std::uint64_t on = mask[b >> 6] & valid_word(b, end);
    s.missing |= (on & ~ever[b >> 6]) != 0;
    bool dirty = false;
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t i = b + j;
      const std::uint32_t wb = load_bits(w, i);
      s.wbad |= nonfinite_bits(wb);
      const bool active = (on >> j) & 1u;
      if (active) {
        s.act_idx[s.nact] = static_cast<std::uint32_t>(i);
        s.act_bits[s.nact++] = wb;
      } else {
        dirty |= wb != 0;
      }
      if constexpr (Mode != 0) {
        std::uint32_t t = 0;
        if constexpr (Mode == 1) {
          const std::uint32_t xb = load_bits(p.x, i);
          s.xbad |= nonfinite_bits(xb);
          t = ~(xb & 0x7FFFFFFFu);
        } else {
          if (active) continue;
          t = ~p.stream.bits32(i);
        }
        if (!active && c.on && t <= c.hi) {
          c.idx[c.count] = static_cast<std::uint32_t>(i);
          c.key[c.count++] = t;
        }
      }
    }
    if (dirty) s.dirty[s.ndirty++] = static_cast<std::uint32_t>(b >> 6);
    if (Mode != 0 && c.on && c.count >= c.cap) c.compact();
  }
}

}  // namespace scalar

#if defined(EAST_KERNELS_X86)
namespace avx512 {

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

// Whole 64-position words only (the caller hands a partial last word to the scalar body).
// Per 16 lanes the common case is two loads, two AND/MAX pairs (non-finite values are found from
// the running maximum of |bits| at the end), one test and one compare; the four 16-bit masks of a
// word are joined into 64 bits and checked against the mask word once.
template <int Mode>
EAST_TARGET_AVX512 void update_scan(const float* w, const std::uint64_t* mask, const std::uint64_t* ever,
                                    std::size_t begin, std::size_t end, const ScanPlan& p, ScanState& s,
                                    TopCollector& c) {
  const __m512i vabs = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i ones = _mm512_set1_epi32(-1);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // Mode 1 keeps |x| >= ~hi (i.e. t = ~|x| <= hi); Mode 2 compares t itself.
  __m512i vthr = _mm512_set1_epi32(static_cast<int>(Mode == 1 ? ~c.hi : c.hi));
  const auto* wu = reinterpret_cast<const std::uint32_t*>(w);
  const auto* xu = reinterpret_cast<const std::uint32_t*>(p.x);
  std::uint32_t* act_idx = s.act_idx;
  std::uint32_t* act_bits = s.act_bits;
  std::uint32_t* dirty_out = s.dirty;
  std::size_t nact = s.nact, ndirty = s.ndirty, cnt = c.count;
  bool collect = c.on;
  __m512i maxw = _mm512_setzero_si512(), maxx = _mm512_setzero_si512();
  std::uint64_t missing = 0;
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t mw = mask[b >> 6];
    missing |= mw & ~ever[b >> 6];
    __mmask16 nz[4], kp[4] = {0, 0, 0, 0};
    for (int q = 0; q < 4; ++q) {
      const std::size_t i = b + 16 * static_cast<std::size_t>(q);
      const __m512i wv = _mm512_loadu_si512(wu + i);
      maxw = _mm512_maskz_max_epu32(0xFFFF, maxw, _mm512_and_si512(wv, vabs));  // maskz: GCC 12 warning
      nz[q] = _mm512_test_epi32_mask(wv, wv);
      if constexpr (Mode == 1) {
        const __m512i xa = _mm512_and_si512(_mm512_loadu_si512(xu + i), vabs);
        maxx = _mm512_maskz_max_epu32(0xFFFF, maxx, xa);
        kp[q] = _mm512_cmpge_epu32_mask(xa, vthr);
      }
    }
    const std::uint64_t nz64 = static_cast<std::uint64_t>(nz[0]) | static_cast<std::uint64_t>(nz[1]) << 16 |
                               static_cast<std::uint64_t>(nz[2]) << 32 |
                               static_cast<std::uint64_t>(nz[3]) << 48;
    if (nz64 & ~mw) dirty_out[ndirty++] = static_cast<std::uint32_t>(b >> 6);
    if (mw) {  // the active positions: ~0.1% of them at 99.9% sparsity
      for (std::uint64_t a = mw; a; a &= a - 1) {
        const std::size_t i = b + static_cast<std::size_t>(ctz64(a));
        act_idx[nact] = static_cast<std::uint32_t>(i);
        act_bits[nact++] = wu[i];
      }
    }
    if constexpr (Mode == 1) {
      const std::uint64_t kp64 =
          (static_cast<std::uint64_t>(kp[0]) | static_cast<std::uint64_t>(kp[1]) << 16 |
           static_cast<std::uint64_t>(kp[2]) << 32 | static_cast<std::uint64_t>(kp[3]) << 48) &
          ~mw;
      if (kp64 && collect) {
        for (int q = 0; q < 4; ++q) {
          const __mmask16 keep = static_cast<__mmask16>(kp64 >> (16 * q));
          if (!keep) continue;
          const std::size_t i = b + 16 * static_cast<std::size_t>(q);
          const __m512i t = _mm512_xor_si512(_mm512_and_si512(_mm512_loadu_si512(xu + i), vabs), ones);
          const __m512i vi = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(i)), iota);
          // compress through a register: the memory form is microcoded on AMD Zen 4
          _mm512_storeu_si512(c.idx + cnt, _mm512_maskz_compress_epi32(keep, vi));
          _mm512_storeu_si512(c.key + cnt, _mm512_maskz_compress_epi32(keep, t));
          cnt += static_cast<std::size_t>(__builtin_popcount(keep));
        }
      }
    } else if constexpr (Mode == 2) {
      if (collect && ~mw) {
        for (int q = 0; q < 4; ++q) {
          const __mmask16 cm = static_cast<__mmask16>(~mw >> (16 * q));
          if (cm == 0) continue;
          const std::size_t i = b + 16 * static_cast<std::size_t>(q);
          const __m512i t = _mm512_xor_si512(random_keys16(p.stream.key, i), ones);
          const __mmask16 keep = _mm512_mask_cmple_epu32_mask(cm, t, vthr);
          if (!keep) continue;
          const __m512i vi = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(i)), iota);
          _mm512_storeu_si512(c.idx + cnt, _mm512_maskz_compress_epi32(keep, vi));
          _mm512_storeu_si512(c.key + cnt, _mm512_maskz_compress_epi32(keep, t));
          cnt += static_cast<std::size_t>(__builtin_popcount(keep));
        }
      }
    }
    if (Mode != 0 && cnt >= c.cap && collect) {
      c.count = cnt;
      c.compact();
      cnt = c.count;
      collect = c.on;
      vthr = _mm512_set1_epi32(static_cast<int>(Mode == 1 ? ~c.hi : c.hi));
    }
  }
  s.nact = nact;
  s.ndirty = ndirty;
  c.count = cnt;
  const __m512i vinf = _mm512_set1_epi32(0x7F800000);
  s.wbad |= _mm512_cmpge_epu32_mask(maxw, vinf) != 0;
  s.xbad |= _mm512_cmpge_epu32_mask(maxx, vinf) != 0;
  s.missing |= missing != 0;
}

}  // namespace avx512

namespace avx2 {

EAST_TARGET_AVX2 EAST_ALWAYS_INLINE unsigned movemask32(__m256i v) {
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
}

// Whole 64-position words only. Random keys need 64-bit multiplies AVX2 lacks: scalar body.
template <int Mode>
EAST_TARGET_AVX2 void update_scan(const float* w, const std::uint64_t* mask, const std::uint64_t* ever,
                                  std::size_t begin, std::size_t end, const ScanPlan& p, ScanState& s,
                                  TopCollector& c) {
  static_assert(Mode != 2, "random keys take the scalar body on AVX2");
  const __m256i vabs = _mm256_set1_epi32(0x7FFFFFFF), vinf_m1 = _mm256_set1_epi32(0x7F7FFFFF);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u)), zero = _mm256_setzero_si256();
  const auto* wu = reinterpret_cast<const std::uint32_t*>(w);
  const auto* xu = reinterpret_cast<const std::uint32_t*>(p.x);
  alignas(32) std::uint32_t tl[8];
  __m256i badw = zero, badx = zero;
  std::uint64_t missing = 0;
  bool collect = c.on;
  // unsigned t <= hi  <=>  signed (~xa ^ sign) <= (hi ^ sign)  <=>  !((xa ^ ~sign) > (hi ^ sign))
  __m256i vhi_s = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(c.hi)), sign);
  const __m256i nsign = _mm256_set1_epi32(0x7FFFFFFF);
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t mw = mask[b >> 6];
    missing |= mw & ~ever[b >> 6];
    std::uint64_t nz = 0;
    for (int q = 0; q < 8; ++q) {
      const std::size_t i = b + 8 * static_cast<std::size_t>(q);
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wu + i));
      badw = _mm256_or_si256(badw, _mm256_cmpgt_epi32(_mm256_and_si256(wv, vabs), vinf_m1));
      nz |= static_cast<std::uint64_t>(~movemask32(_mm256_cmpeq_epi32(wv, zero)) & 0xFFu) << (8 * q);
      if constexpr (Mode == 1) {
        const __m256i xa =
            _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xu + i)), vabs);
        badx = _mm256_or_si256(badx, _mm256_cmpgt_epi32(xa, vinf_m1));
        const unsigned cm = ~static_cast<unsigned>(mw >> (8 * q)) & 0xFFu;
        const unsigned keep = ~movemask32(_mm256_cmpgt_epi32(_mm256_xor_si256(xa, nsign), vhi_s)) & cm;
        if (keep && collect) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(tl), _mm256_xor_si256(xa, _mm256_set1_epi32(-1)));
          for (unsigned a = keep; a; a &= a - 1) {
            const int j = __builtin_ctz(a);
            c.idx[c.count] = static_cast<std::uint32_t>(i + static_cast<std::size_t>(j));
            c.key[c.count++] = tl[j];
          }
        }
      }
    }
    for (std::uint64_t a = mw; a; a &= a - 1) {
      const std::size_t i = b + static_cast<std::size_t>(ctz64(a));
      s.act_idx[s.nact] = static_cast<std::uint32_t>(i);
      s.act_bits[s.nact++] = wu[i];
    }
    if (nz & ~mw) s.dirty[s.ndirty++] = static_cast<std::uint32_t>(b >> 6);
    if (Mode != 0 && collect && c.count >= c.cap) {
      c.compact();
      collect = c.on;
      vhi_s = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(c.hi)), sign);
    }
  }
  s.wbad |= !_mm256_testz_si256(badw, badw);
  s.xbad |= !_mm256_testz_si256(badx, badx);
  s.missing |= missing != 0;
}

}  // namespace avx2
#endif

/// Runs the chosen body over [begin, end) (begin a multiple of 64): SIMD over whole words, the
/// scalar body for a partial last word.
template <int Mode>
void update_scan_mode(Isa isa, const float* w, const std::uint64_t* mask, const std::uint64_t* ever,
                      std::size_t begin, std::size_t end, const ScanPlan& p, ScanState& s, TopCollector& c) {
  std::size_t mid = begin;
#if defined(EAST_KERNELS_X86)
  const std::size_t whole = begin + (end - begin) / 64 * 64;
  if (isa == Isa::avx512) {
    avx512::update_scan<Mode>(w, mask, ever, begin, whole, p, s, c);
    mid = whole;
  } else if (isa == Isa::avx2 && Mode != 2) {
    avx2::update_scan<Mode == 2 ? 0 : Mode>(w, mask, ever, begin, whole, p, s, c);
    mid = whole;
  }
#endif
  (void)isa;
  scalar::update_scan<Mode>(w, mask, ever, mid, end, p, s, c);
}

}  // namespace detail
}  // namespace east::kernels
