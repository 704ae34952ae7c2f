#pragma once
// Fused kernels of a mask update (Controller::update), so that each weight and regrow score is
// read about once per update instead of once per decision step:
//   update_scan      one pass over a layer: finiteness of weights (and scores), the active
//                    positions with their weights (the prune candidates: ~nnz of them), mask
//                    words holding nonzero inactive weights (the only ones re-masking must touch),
//                    and an exact top-k of the regrow keys among inactive positions (a threshold
//                    from a small sample, lowered by compaction as the buffer fills).
//   select_smallest  the exact k smallest of a short (index, key) list, ties to the lower index:
//                    the Selection rule of select.hpp applied to the candidates the scan kept.
// Results are exact and identical on every ISA and thread count (tests/test_controller_update.cpp
// compares whole updates with the previous multi-pass controller).
#include <algorithm>
#include <cmath>
#include <vector>

#include "detail/update_scan.hpp"
#include "dispatch.hpp"
#include "select.hpp"

namespace east::kernels {

namespace detail {

/// Initial threshold for the regrow buffer from 1024 evenly spaced probes: a rank a few standard
/// deviations above where the k-th best should fall, so the pass stores ~C·rank/probes keys
/// instead of every key until the first compactions. `expect` gets that count. ~0u: no sample.
template <class KeyAt>
std::uint32_t sampled_threshold(const std::uint64_t* mask, std::size_t n, std::size_t cands, std::size_t k,
                                KeyAt key_at, std::size_t& expect) {
  constexpr std::size_t kProbes = 1024;
  thread_local std::vector<std::uint32_t> samp;
  samp.clear();
  const std::size_t probes = std::min(n, kProbes);
  for (std::size_t j = 0; j < probes; ++j) {
    const std::size_t i = (2 * j + 1) * n / (2 * probes);
    if (!test_bit(mask, i)) samp.push_back(key_at(i));
  }
  expect = cands;
  const std::size_t m = samp.size();
  if (m < 128 || cands == 0) return ~0u;
  const double mu = static_cast<double>(m) * static_cast<double>(k) / static_cast<double>(cands);
  const double r = std::ceil(mu + 4.0 * std::sqrt(mu) + 8.0);
  if (r >= static_cast<double>(m)) return ~0u;
  const auto ri = static_cast<std::size_t>(r);
  std::nth_element(samp.begin(), samp.begin() + static_cast<std::ptrdiff_t>(ri), samp.end());
  expect = static_cast<std::size_t>(static_cast<double>(cands) * static_cast<double>(ri + 1) /
                                    static_cast<double>(m)) +
           1;
  return samp[ri];
}

struct ChunkOut {
  U32Buffer act_idx, act_bits, dirty, top_idx, top_key;
  ScanState s;
  TopCollector c;
};

inline void run_chunk(Isa isa, int mode, const float* w, const std::uint64_t* mask, const std::uint64_t* ever,
                      Range rg, const ScanPlan& p, ScanState& s, TopCollector& c) {
  if (mode == 1) return update_scan_mode<1>(isa, w, mask, ever, rg.begin, rg.end, p, s, c);
  if (mode == 2) return update_scan_mode<2>(isa, w, mask, ever, rg.begin, rg.end, p, s, c);
  update_scan_mode<0>(isa, w, mask, ever, rg.begin, rg.end, p, s, c);
}

// Points a chunk's cursors at buffers of worst-case size (resize without zero-filling).
inline void prepare(std::size_t words, std::size_t active, std::size_t cap, bool collect, U32Buffer& ai,
                    U32Buffer& ab, U32Buffer& dw, U32Buffer& ti, U32Buffer& tk, ScanState& s, TopCollector& c,
                    const ScanPlan& p, std::uint32_t hi) {
  ai.resize(active);
  ab.resize(active);
  dw.resize(words);
  s = ScanState{ai.data(), ab.data(), dw.data()};
  c = TopCollector{};
  if (collect) {
    ti.resize(cap + kTopSlack);
    tk.resize(cap + kTopSlack);
    c.idx = ti.data();
    c.key = tk.data();
    c.cap = cap;
    c.k = p.k;
    c.hi = hi;
    c.on = true;
  }
}

}  // namespace detail

/// One fused pass over layer positions [0, n) (see the file comment and ScanResult).
/// @param w     n weights   @param mask, ever  words_for(n) words of the mask and ever-active mask
/// @param p     what to collect for regrowth; p.x must hold n floats for RegrowKeys::magnitude
/// @param r     results (its buffers are reused between calls)
/// Requires n < 2^32 (indices are stored as 32 bits) and 0 < p.k <= inactive positions when
/// p.regrow is not none.
inline void update_scan(const float* w, const std::uint64_t* mask, const std::uint64_t* ever, std::size_t n,
                        const ScanPlan& p, ScanResult& r) {
  constexpr const char* where = "east::kernels::update_scan";
  ::east::detail::require(n < (std::size_t{1} << 32), where, "n = ", n, " (valid: < 2^32)");
  ::east::detail::require(p.regrow != RegrowKeys::magnitude || p.x != nullptr, where,
                          "magnitude regrow keys without a score array");
  const std::size_t words = words_for(n);
  std::size_t active = p.active;
  if (active == static_cast<std::size_t>(-1)) {
    active = 0;
    for (std::size_t i = 0; i < words; ++i) active += static_cast<std::size_t>(detail::popcount64(mask[i]));
  }
  const std::size_t cands = n - active;
  const bool collect = p.regrow != RegrowKeys::none;
  ::east::detail::require(!collect || (p.k > 0 && p.k <= cands), where, "k = ", p.k, " with ", cands,
                          " candidates (valid: 1..candidates)");
  const int mode = p.regrow == RegrowKeys::magnitude ? 1 : (p.regrow == RegrowKeys::random ? 2 : 0);

  std::uint32_t hi = ~0u;
  std::size_t cap = 0;
  // Without a sample the buffer starts at hi = ~0 and compacts about log(C/k) times, handling
  // ~3k·ln(C/k) keys; a sample of 1024 probes stores ~C·(μ + 4√μ + 9)/1024 keys, μ = 1024·k/C.
  // The sample wins once k is more than ~1/256 of the candidates.
  const bool sample = collect && p.k * 256 >= cands;
  if (collect) {
    std::size_t expect = cands;
    if (!sample) {
    } else if (mode == 1) {
      hi = detail::sampled_threshold(
          mask, n, cands, p.k, [&](std::size_t i) { return ~abs_key(p.x[i]); }, expect);
    } else {
      hi = detail::sampled_threshold(
          mask, n, cands, p.k, [&](std::size_t i) { return ~p.stream.bits32(i); }, expect);
    }
    cap = std::max<std::size_t>(4 * p.k, 256);
    if (hi != ~0u) cap = std::max(cap, expect + expect / 2);
  }

  r.weight_bad = {};
  r.x_bad = {};
  r.x_zero_candidate = r.ever_missing = r.incomplete = false;
  r.top_count = 0;
  const Isa isa = active_isa();
  const int t = detail::plan_threads(n);
  bool wbad = false, xbad = false;
  if (t <= 1) {
    detail::ScanState s;
    detail::TopCollector c;
    detail::prepare(words, active, cap, collect, r.active_index, r.active_bits, r.dirty_words, r.top_index,
                    r.top_key, s, c, p, hi);
    detail::run_chunk(isa, mode, w, mask, ever, detail::Range{0, n}, p, s, c);
    r.active_index.resize(s.nact);
    r.active_bits.resize(s.nact);
    r.dirty_words.resize(s.ndirty);
    r.top_count = c.count;
    r.incomplete = collect && (c.overflow || c.count < p.k);
    r.ever_missing = s.missing;
    wbad = s.wbad;
    xbad = s.xbad;
  } else {
    // Each chunk keeps every candidate of its own that can be among the layer's k best: the
    // union of their lists (in chunk order: ascending indices) holds the k best of the layer.
    std::vector<detail::ChunkOut> parts(static_cast<std::size_t>(t));
    detail::parallel_chunks(n, t, [&](int j, detail::Range rg) {
      auto& o = parts[static_cast<std::size_t>(j)];
      detail::prepare(words_for(rg.end - rg.begin), active, cap, collect, o.act_idx, o.act_bits, o.dirty,
                      o.top_idx, o.top_key, o.s, o.c, p, hi);
      detail::run_chunk(isa, mode, w, mask, ever, rg, p, o.s, o.c);
    });
    std::size_t na = 0, nd = 0, nt = 0;
    for (const auto& o : parts) na += o.s.nact, nd += o.s.ndirty, nt += o.c.count;
    r.active_index.resize(na);
    r.active_bits.resize(na);
    r.dirty_words.resize(nd);
    r.top_index.resize(nt);
    r.top_key.resize(nt);
    na = nd = 0;
    for (const auto& o : parts) {
      std::copy_n(o.act_idx.data(), o.s.nact, r.active_index.data() + na);
      std::copy_n(o.act_bits.data(), o.s.nact, r.active_bits.data() + na);
      std::copy_n(o.dirty.data(), o.s.ndirty, r.dirty_words.data() + nd);
      std::copy_n(o.top_idx.data(), o.c.count, r.top_index.data() + r.top_count);
      std::copy_n(o.top_key.data(), o.c.count, r.top_key.data() + r.top_count);
      na += o.s.nact;
      nd += o.s.ndirty;
      r.top_count += o.c.count;
      r.incomplete |= o.c.overflow;
      r.ever_missing |= o.s.missing;
      wbad |= o.s.wbad;
      xbad |= o.s.xbad;
    }
    r.incomplete = collect && (r.incomplete || r.top_count < p.k);
  }
  // Rare: exact counts and the first index for the error message.
  if (wbad) r.weight_bad.count = count_nonfinite(w, n, &r.weight_bad.first);
  if (xbad) {
    r.x_bad.count = count_nonfinite(p.x, n, &r.x_bad.first);
    for (std::size_t i = 0; i < n && !r.x_zero_candidate; ++i)
      r.x_zero_candidate = p.x[i] == 0.0f && !test_bit(mask, i);
  }
}

/// Appends to `out` the indices of the k smallest keys of (index[j], key[j]), j < count, ties to
/// the earlier entry (lists ascending in index: ties go to the lower index). Returns the k-th
/// smallest key (the threshold). Requires 0 < k <= count.
template <class Out>
std::uint32_t select_smallest(const std::uint32_t* index, const std::uint32_t* key, std::size_t count,
                              std::size_t k, Out& out) {
  ::east::detail::require(k > 0 && k <= count, "east::kernels::select_smallest", "k = ", k, " (valid: 1..",
                          count, ")");
  thread_local std::vector<std::uint32_t> tmp;
  const std::uint32_t thr = detail::kth_key(key, count, k - 1, tmp);
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
