#pragma once
// Fused kernels of a mask update (Controller::update), so that each weight and regrow score is
// read about once per update instead of once per decision step:
//   update_scan      one pass over a layer: finiteness of weights (and scores), the active
//                    positions with their weights (the prune candidates: ~nnz of them), mask
//                    words holding nonzero inactive weights (the only ones re-masking must touch),
//                    and an exact streaming top-k of the regrow keys among inactive positions.
//   select_smallest  the exact k smallest of a short (index, key) list, ties to the lower index:
//                    the Selection rule of select.hpp applied to the candidates the scan kept.
// Results are exact and bit-identical on every ISA and thread count (see tests/test_kernels_update.cpp
// and tests/test_controller_update.cpp, which compares whole updates against the previous
// multi-pass controller).
#include <algorithm>
#include <vector>

#include "detail/update_scan.hpp"
#include "dispatch.hpp"

namespace east::kernels {

namespace detail {
inline void run_update_scan(Isa isa, const float* w, const std::uint64_t* mask, const std::uint64_t* ever,
                            std::size_t begin, std::size_t end, const ScanPlan& p, ScanResult& r,
                            TopCollector& c) {
#if defined(EAST_KERNELS_X86)
  if (isa == Isa::avx512) return avx512::update_scan(w, mask, ever, begin, end, p, r, c);
  if (isa == Isa::avx2) return avx2::update_scan(w, mask, ever, begin, end, p, r, c);
#endif
  (void)isa;
  scalar::update_scan(w, mask, ever, begin, end, p, r, c);
}

inline void clear_scan(ScanResult& r) {
  r.weight_bad = {};
  r.x_bad = {};
  r.x_zero_candidate = r.ever_missing = r.overflow = false;
  r.active_index.clear();
  r.active_bits.clear();
  r.dirty_words.clear();
  r.top_hi = ~0u;
  r.top_count = 0;
}

// Buffer size of the streaming top-k: 4k candidates. A compaction costs O(cap) and the buffer
// refills ever more slowly as the threshold falls, so a small buffer does the least work.
inline std::size_t top_capacity(std::size_t k) { return std::max<std::size_t>(4 * k, 256); }

inline void scan_chunk(Isa isa, const float* w, const std::uint64_t* mask, const std::uint64_t* ever,
                       Range rg, const ScanPlan& p, ScanResult& r, std::vector<std::uint32_t>& tmp) {
  clear_scan(r);
  TopCollector c;
  c.on = p.regrow != RegrowKeys::none && p.k > 0;
  if (c.on) {
    c.k = p.k;
    c.cap = top_capacity(p.k);
    r.top_index.resize(c.cap + 64);
    r.top_key.resize(c.cap + 64);
    c.idx = r.top_index.data();
    c.key = r.top_key.data();
    c.tmp = &tmp;
  }
  run_update_scan(isa, w, mask, ever, rg.begin, rg.end, p, r, c);
  r.overflow = c.overflow;
  r.top_count = c.on || c.overflow ? c.count : 0;
  r.top_hi = c.hi;
}
}  // namespace detail

/// One fused pass over layer positions [0, n) (see the file comment and ScanResult).
/// @param w     n weights   @param mask, ever  words_for(n) words of the mask and ever-active mask
/// @param p     what to collect for regrowth; p.x must hold n floats for RegrowKeys::magnitude
/// @param r     results (its buffers are reused between calls)
/// Requires n < 2^32 (indices are stored as 32 bits).
inline void update_scan(const float* w, const std::uint64_t* mask, const std::uint64_t* ever, std::size_t n,
                        const ScanPlan& p, ScanResult& r) {
  ::east::detail::require(n < (std::size_t{1} << 32), "east::kernels::update_scan", "n = ", n,
                          " (valid: < 2^32)");
  ::east::detail::require(p.regrow == RegrowKeys::none || p.k > 0, "east::kernels::update_scan",
                          "k = 0 with a regrow key kind (valid: k > 0, or RegrowKeys::none)");
  ::east::detail::require(p.regrow != RegrowKeys::magnitude || p.x != nullptr, "east::kernels::update_scan",
                          "magnitude regrow keys without a score array");
  thread_local std::vector<std::uint32_t> tmp;
  const Isa isa = active_isa();
  const int t = detail::plan_threads(n);
  if (t <= 1) {
    detail::scan_chunk(isa, w, mask, ever, detail::Range{0, n}, p, r, tmp);
    return;
  }
  // Each chunk keeps every candidate of its own that can be among its k best, so the union of
  // the chunks' lists (in chunk order: still ascending indices) holds the k best of the layer.
  std::vector<ScanResult> parts(static_cast<std::size_t>(t));
  detail::parallel_chunks(n, t, [&](int j, detail::Range rg) {
    thread_local std::vector<std::uint32_t> ttmp;
    detail::scan_chunk(isa, w, mask, ever, rg, p, parts[static_cast<std::size_t>(j)], ttmp);
  });
  detail::clear_scan(r);
  r.top_count = 0;
  r.top_hi = 0;
  std::size_t top_total = 0;
  for (const auto& q : parts) top_total += q.top_count;
  r.top_index.resize(top_total);
  r.top_key.resize(top_total);
  for (const auto& q : parts) {
    if (q.weight_bad.count) detail::note_nonfinite(r.weight_bad, q.weight_bad.first, q.weight_bad.count);
    if (q.x_bad.count) detail::note_nonfinite(r.x_bad, q.x_bad.first, q.x_bad.count);
    r.x_zero_candidate |= q.x_zero_candidate;
    r.ever_missing |= q.ever_missing;
    r.overflow |= q.overflow;
    r.active_index.insert(r.active_index.end(), q.active_index.begin(), q.active_index.end());
    r.active_bits.insert(r.active_bits.end(), q.active_bits.begin(), q.active_bits.end());
    r.dirty_words.insert(r.dirty_words.end(), q.dirty_words.begin(), q.dirty_words.end());
    std::copy_n(q.top_index.begin(), q.top_count,
                r.top_index.begin() + static_cast<std::ptrdiff_t>(r.top_count));
    std::copy_n(q.top_key.begin(), q.top_count, r.top_key.begin() + static_cast<std::ptrdiff_t>(r.top_count));
    r.top_count += q.top_count;
    r.top_hi = std::max(r.top_hi, q.top_hi);
  }
}

/// Appends to `out` the indices of the k smallest keys of (index[j], key[j]), j < count, ties to
/// the earlier entry (lists ascending in index: ties go to the lower index). Returns the k-th
/// smallest key (the threshold). Requires 0 < k <= count.
inline std::uint32_t select_smallest(const std::uint32_t* index, const std::uint32_t* key, std::size_t count,
                                     std::size_t k, std::vector<std::uint32_t>& out) {
  ::east::detail::require(k > 0 && k <= count, "east::kernels::select_smallest", "k = ", k, " (valid: 1..",
                          count, ")");
  thread_local std::vector<std::uint32_t> tmp;
  tmp.assign(key, key + count);
  std::nth_element(tmp.begin(), tmp.begin() + static_cast<std::ptrdiff_t>(k - 1), tmp.end());
  const std::uint32_t thr = tmp[k - 1];
  std::size_t less = 0;
  for (std::size_t j = 0; j < count; ++j) less += key[j] < thr;
  std::size_t ties = k - less;
  for (std::size_t j = 0; j < count; ++j) {
    if (key[j] < thr) {
      out.push_back(index[j]);
    } else if (key[j] == thr && ties > 0) {
      out.push_back(index[j]);
      --ties;
    }
  }
  return thr;
}

}  // namespace east::kernels
