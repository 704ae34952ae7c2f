#pragma once
// Exact selection by sample bracketing. For the k-th smallest transformed key t:
//   1. take a deterministic sample of candidate keys and pick brackets lo <= hi around the
//      sample quantile k/C (a few standard deviations wide);
//   2. one vectorized pass over the data counts t < lo, t == lo, t == hi and compress-stores
//      the few keys strictly between lo and hi;
//   3. if rank k-1 falls on lo or hi we are done, if it falls between them recurse on the
//      stored keys (contiguous, in cache), else widen the brackets and retry.
// Counting lo and hi separately keeps the buffer small even when most keys tie (e.g. zeros).
// The result is exact, so it cannot depend on ISA, thread count or on which path was taken.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "../../core/error.hpp"
#include "../dispatch.hpp"
#include "avx2.hpp"
#include "avx512.hpp"
#include "common.hpp"
#include "scalar.hpp"

namespace east::kernels::detail {

constexpr std::size_t kSmallSelect = 2048;                  // below this, std::nth_element on the keys
constexpr std::size_t kGatherAll = 1u << 16;                // below this many candidates, store them all
constexpr std::size_t kTopSample = 16384;                   // sample size at the top level
constexpr std::size_t kScratchKeep = std::size_t{1} << 24;  // larger scratch is not kept

inline void run_filter(Isa isa, const KeySource& src, std::size_t begin, std::size_t end,
                       const std::uint64_t* mask, Among among, std::uint32_t lo, std::uint32_t hi,
                       std::uint32_t* out, std::size_t cap, FilterCounts& c) {
#if defined(EAST_KERNELS_X86)
  if (isa == Isa::avx512) return avx512::filter(src, begin, end, mask, among, lo, hi, out, cap, c);
  if (isa == Isa::avx2) return avx2::filter(src, begin, end, mask, among, lo, hi, out, cap, c);
#endif
  (void)isa;
  scalar::filter(src, begin, end, mask, among, lo, hi, out, cap, c);
}

inline std::size_t run_mark(Isa isa, const KeySource& src, std::size_t begin, std::size_t end,
                            const std::uint64_t* mask, Among among, std::uint32_t thr, std::size_t limit,
                            std::uint64_t* out) {
#if defined(EAST_KERNELS_X86)
  if (isa == Isa::avx512) return avx512::mark(src, begin, end, mask, among, thr, limit, out);
  if (isa == Isa::avx2) return avx2::mark(src, begin, end, mask, among, thr, limit, out);
#endif
  (void)isa;
  return scalar::mark(src, begin, end, mask, among, thr, limit, out);
}

/// Per-thread, per-recursion-level buffers reused across calls (page faults on fresh memory
/// would cost as much as the filtering pass itself).
class ScratchBuffer {
 public:
  std::uint32_t* get(std::size_t n) {
    if (n > size_) {
      data_.reset(new std::uint32_t[n]);
      size_ = n;
    }
    return data_.get();
  }
  ~ScratchBuffer() = default;
  void trim() {
    if (size_ > kScratchKeep) {
      data_.reset();
      size_ = 0;
    }
  }

 private:
  std::unique_ptr<std::uint32_t[]> data_;
  std::size_t size_ = 0;
};

inline ScratchBuffer& scratch(std::size_t level) {
  thread_local ScratchBuffer bufs[24];
  return bufs[std::min<std::size_t>(level, 23)];
}

/// The rank-r key among a set (0-based, ascending) and how many keys are smaller.
struct RankResult {
  std::uint32_t t = 0;
  std::size_t less = 0;
};

/// Brackets around rank r of m keys from a sample (reordered in place).
inline void bracket(std::vector<std::uint32_t>& samp, std::size_t r, std::size_t m, double widen,
                    std::uint32_t& lo, std::uint32_t& hi) {
  const double s = static_cast<double>(samp.size());
  const double p = (static_cast<double>(r) + 0.5) / static_cast<double>(m);
  const double sigma = std::sqrt(s * p * (1.0 - p));
  const double delta = widen * (4.0 * sigma + 4.0);
  const double lo_i = std::floor(p * s - delta), hi_i = std::ceil(p * s + delta);
  const auto first = samp.begin();
  if (lo_i < 0) {
    lo = 0;
  } else {
    const auto li = static_cast<std::ptrdiff_t>(lo_i);
    std::nth_element(first, first + li, samp.end());
    lo = first[li];
  }
  if (hi_i >= s) {
    hi = std::numeric_limits<std::uint32_t>::max();
  } else {
    const auto hi_idx = static_cast<std::ptrdiff_t>(hi_i);
    std::nth_element(first, first + hi_idx, samp.end());
    hi = first[hi_idx];
  }
  if (hi < lo) hi = lo;  // cannot happen with a sorted sample; keeps the invariant obvious
}

/// Buffer capacity for a filter pass whose brackets span `frac` of the sample.
inline std::size_t mid_capacity(std::size_t m, double frac) {
  const double want = 2.0 * frac * static_cast<double>(m) + 4096.0;
  return std::min<std::size_t>(m, static_cast<std::size_t>(want));
}

inline RankResult select_rank_contiguous(Isa isa, std::uint32_t* v, std::size_t m, std::size_t r,
                                         std::size_t level);

/// Finishes a selection from filter counts: true and `res` when rank r is inside the brackets.
inline bool resolve(Isa isa, const FilterCounts& c, std::uint32_t lo, std::uint32_t hi, std::size_t r,
                    std::uint32_t* mid, std::size_t level, RankResult& res) {
  if (r < c.lt) return false;
  std::size_t base = c.lt;
  if (r < base + c.eq_lo) {
    res = {lo, base};
    return true;
  }
  base += c.eq_lo;
  if (r < base + c.mid) {
    const RankResult sub = select_rank_contiguous(isa, mid, c.mid, r - base, level + 1);
    res = {sub.t, base + sub.less};
    return true;
  }
  base += c.mid;
  const std::size_t eq_hi = lo == hi ? 0 : c.eq_hi;
  if (r < base + eq_hi) {
    res = {hi, base};
    return true;
  }
  return false;
}

inline RankResult select_small(std::uint32_t* v, std::size_t m, std::size_t r) {
  std::nth_element(v, v + r, v + m);
  RankResult res{v[r], 0};
  for (std::size_t i = 0; i < r; ++i) res.less += v[i] < res.t;
  return res;
}

/// Rank r of m contiguous keys (v is reordered/overwritten).
inline RankResult select_rank_contiguous(Isa isa, std::uint32_t* v, std::size_t m, std::size_t r,
                                         std::size_t level) {
  if (m <= kSmallSelect || level >= 20) return select_small(v, m, r);
  const std::size_t s = std::clamp<std::size_t>(m / 16, 512, kTopSample);
  std::vector<std::uint32_t> samp(s);
  for (std::size_t j = 0; j < s; ++j) samp[j] = v[(2 * j + 1) * m / (2 * s)];
  const KeySource src{v, ~0u, 0u};
  for (double widen : {1.0, 4.0}) {
    std::uint32_t lo, hi;
    bracket(samp, r, m, widen, lo, hi);
    const double frac = std::min(
        1.0, 2.0 * widen * (4.0 * std::sqrt(static_cast<double>(s) / 4) + 4.0) / static_cast<double>(s));
    const std::size_t cap = mid_capacity(m, frac);
    std::uint32_t* out = scratch(level + 1).get(cap + 64);
    FilterCounts c;
    run_filter(isa, src, 0, m, nullptr, Among::all, lo, hi, out, cap, c);
    RankResult res;
    if (!c.overflow && resolve(isa, c, lo, hi, r, out, level, res)) return res;
  }
  return select_small(v, m, r);
}

/// Filters all n positions on `t` threads into one contiguous buffer from scratch(level).
inline FilterCounts filter_parallel(Isa isa, const KeySource& src, std::size_t n, const std::uint64_t* mask,
                                    Among among, std::uint32_t lo, std::uint32_t hi, std::size_t cap, int t,
                                    std::uint32_t*& out) {
  const std::size_t stride = cap + 64;
  out = scratch(0).get(stride * static_cast<std::size_t>(t));
  if (t == 1) {
    FilterCounts c;
    run_filter(isa, src, 0, n, mask, among, lo, hi, out, cap, c);
    return c;
  }
  std::vector<FilterCounts> parts(static_cast<std::size_t>(t));
  std::uint32_t* base = out;
  parallel_chunks(n, t, [&](int j, Range rg) {
    run_filter(isa, src, rg.begin, rg.end, mask, among, lo, hi, base + stride * static_cast<std::size_t>(j),
               cap, parts[static_cast<std::size_t>(j)]);
  });
  FilterCounts c;
  for (int j = 0; j < t; ++j) {  // concatenate in chunk order (order does not affect the result)
    const FilterCounts& pj = parts[static_cast<std::size_t>(j)];
    if (pj.overflow) c.overflow = true;
    if (!c.overflow && j > 0) std::copy_n(base + stride * static_cast<std::size_t>(j), pj.mid, base + c.mid);
    c.lt += pj.lt;
    c.eq_lo += pj.eq_lo;
    c.eq_hi += pj.eq_hi;
    c.mid += pj.mid;
  }
  return c;
}

/// Exact selection of the k smallest transformed keys among candidates.
inline Selection select(const KeySource& src, std::size_t n, std::size_t k, const std::uint64_t* mask,
                        Among among) {
  if (mask == nullptr) among = Among::all;
  const std::size_t cands = count_candidates(mask, among, n);
  require(k <= cands, "east::kernels::select", "k = ", k, " exceeds the number of candidates ", cands,
          " (valid: 0..", cands, ")");
  Selection sel;
  sel.k = k;
  if (k == 0) return sel;
  const Isa isa = active_isa();
  const int t = plan_threads(n);
  const std::size_t r = k - 1;
  RankResult res;
  bool done = false;

  if (cands > kGatherAll && cands >= n / 8) {
    // Deterministic sample: evenly spaced probes, candidates among them.
    const std::size_t probes = std::min(n, kTopSample * n / cands);
    std::vector<std::uint32_t> samp;
    samp.reserve(probes);
    for (std::size_t j = 0; j < probes; ++j) {
      const std::size_t i = (2 * j + 1) * n / (2 * probes);
      if (is_candidate(mask, among, i))
        samp.push_back((load_bits(src.data, i) & src.and_mask) ^ src.xor_mask);
    }
    if (samp.size() >= 256) {
      for (double widen : {1.0, 4.0}) {
        std::uint32_t lo, hi;
        bracket(samp, r, cands, widen, lo, hi);
        const double s = static_cast<double>(samp.size());
        const double frac = std::min(1.0, 2.0 * widen * (4.0 * std::sqrt(s / 4) + 4.0) / s);
        const std::size_t cap = mid_capacity(cands, frac);
        std::uint32_t* out = nullptr;
        const FilterCounts c = filter_parallel(isa, src, n, mask, among, lo, hi, cap, t, out);
        if (!c.overflow && resolve(isa, c, lo, hi, r, out, 0, res)) {
          done = true;
          break;
        }
      }
    }
  }
  if (!done) {  // store every candidate key except the extremes 0 and ~0, which are counted
    std::uint32_t* out = nullptr;
    const FilterCounts c = filter_parallel(isa, src, n, mask, among, 0u, ~0u, cands, t, out);
    resolve(isa, c, 0u, ~0u, r, out, 0, res);
  }
  for (std::size_t level = 0; level < 3; ++level) scratch(level).trim();
  sel.threshold = res.t ^ src.xor_mask;
  sel.ties = k - res.less;
  return sel;
}

/// Clears tie bits (t == thr) in [begin, end) after the first `keep` of them.
inline void drop_excess_ties(const KeySource& src, std::size_t begin, std::size_t end,
                             const std::uint64_t* mask, Among among, std::uint32_t thr, std::size_t keep,
                             std::uint64_t* out) {
  for (std::size_t b = begin; b < end; b += 64) {
    std::uint64_t cw = candidate_word(mask, among, b, end);
    while (cw) {
      const int j = ctz64(cw);
      cw &= cw - 1;
      if (((load_bits(src.data, b + j) & src.and_mask) ^ src.xor_mask) != thr) continue;
      if (keep > 0)
        --keep;
      else
        out[b >> 6] &= ~(std::uint64_t{1} << j);
    }
  }
}

inline void mark(const KeySource& src, std::size_t n, const Selection& s, const std::uint64_t* mask,
                 Among among, std::uint64_t* out) {
  if (s.k == 0) return;
  if (mask == nullptr) among = Among::all;
  const Isa isa = active_isa();
  const std::uint32_t thr = s.threshold ^ src.xor_mask;
  const int t = plan_threads(n);
  if (t == 1) {
    run_mark(isa, src, 0, n, mask, among, thr, s.ties, out);
    return;
  }
  // Each chunk takes all its ties; the chunks past the tie budget then drop their excess.
  std::vector<std::size_t> seen(static_cast<std::size_t>(t));
  parallel_chunks(n, t, [&](int j, Range rg) {
    seen[static_cast<std::size_t>(j)] =
        run_mark(isa, src, rg.begin, rg.end, mask, among, thr, std::numeric_limits<std::size_t>::max(), out);
  });
  std::vector<std::size_t> keep(static_cast<std::size_t>(t));
  std::size_t before = 0;
  bool any = false;
  for (std::size_t j = 0; j < seen.size(); ++j) {
    keep[j] = s.ties > before ? std::min(seen[j], s.ties - before) : 0;
    any |= keep[j] < seen[j];
    before += seen[j];
  }
  if (!any) return;
  parallel_chunks(n, t, [&](int j, Range rg) {
    const auto jj = static_cast<std::size_t>(j);
    if (keep[jj] < seen[jj]) drop_excess_ties(src, rg.begin, rg.end, mask, among, thr, keep[jj], out);
  });
}

inline KeySource abs_source(const float* x, Extreme e) noexcept {
  return {x, 0x7FFFFFFFu, e == Extreme::largest ? ~0u : 0u};
}
inline KeySource key_source(const std::uint32_t* x, Extreme e) noexcept {
  return {x, ~0u, e == Extreme::largest ? ~0u : 0u};
}

}  // namespace east::kernels::detail
