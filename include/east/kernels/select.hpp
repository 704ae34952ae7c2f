#pragma once
// The one dispatch point for selection and masking kernels. Policies and the controller call
// only these functions; which implementation runs (scalar, AVX2, AVX-512, threads) is decided
// here, at run time (see dispatch.hpp: set_isa, set_threads). Every function returns exactly
// what its scalar reference in reference/ returns, bit for bit, on every ISA and thread count.
#include <vector>

#include "detail/select_impl.hpp"
#include "dispatch.hpp"
#include "reference/select.hpp"
#include "reference/sgd.hpp"

namespace east::kernels {

/// Exact selection of the k largest/smallest |x[i]| among candidates (see Selection).
/// @param x       n floats; keys are abs_key(x[i]) (NaN above +Inf).
/// @param k       0..number of candidates, else InvalidArgument.
/// @param mask    bit mask for `among` (null: every position is a candidate).
inline Selection select_abs(const float* x, std::size_t n, std::size_t k, Extreme extreme,
                            const std::uint64_t* mask = nullptr, Among among = Among::all) {
  return detail::select(detail::abs_source(x, extreme), n, k, mask, among);
}

/// Exact selection of the k largest/smallest raw uint32 keys among candidates.
inline Selection select_keys(const std::uint32_t* keys, std::size_t n, std::size_t k, Extreme extreme,
                             const std::uint64_t* mask = nullptr, Among among = Among::all) {
  return detail::select(detail::key_source(keys, extreme), n, k, mask, among);
}

/// Sets bit i of `out` (which the caller has zeroed) for every position selected by `s`.
inline void mark_selected_abs(const float* x, std::size_t n, const Selection& s, Extreme extreme,
                              const std::uint64_t* mask, Among among, std::uint64_t* out) {
  detail::mark(detail::abs_source(x, extreme), n, s, mask, among, out);
}

/// As mark_selected_abs, for raw uint32 keys.
inline void mark_selected_keys(const std::uint32_t* keys, std::size_t n, const Selection& s, Extreme extreme,
                               const std::uint64_t* mask, Among among, std::uint64_t* out) {
  detail::mark(detail::key_source(keys, extreme), n, s, mask, among, out);
}

/// x[i] = 0 where bit i of mask is clear. Writes only positions that are not +0 already, so
/// re-applying a mask to pruned weights is a read-only pass.
inline void apply_mask(float* x, const std::uint64_t* mask, std::size_t n) {
  const Isa isa = active_isa();
  detail::parallel_chunks(n, detail::plan_threads(n), [&](int, detail::Range r) {
#if defined(EAST_KERNELS_X86)
    if (isa == Isa::avx512) return detail::avx512::apply_mask(x, mask, r.begin, r.end);
    if (isa == Isa::avx2) return detail::avx2::apply_mask(x, mask, r.begin, r.end);
#endif
    detail::scalar::apply_mask(x, mask, r.begin, r.end);
  });
  (void)isa;
}

/// x[i] = value where bit i of `where` is set (writes only positions that differ).
inline void fill_where(float* x, const std::uint64_t* where, std::size_t n, float value) {
  const Isa isa = active_isa();
  detail::parallel_chunks(n, detail::plan_threads(n), [&](int, detail::Range r) {
#if defined(EAST_KERNELS_X86)
    if (isa == Isa::avx512) return detail::avx512::fill_where(x, where, r.begin, r.end, value);
    if (isa == Isa::avx2) return detail::avx2::fill_where(x, where, r.begin, r.end, value);
#endif
    detail::scalar::fill_where(x, where, r.begin, r.end, value);
  });
  (void)isa;
}

/// Number of non-finite x[i] (NaN or ±Inf); the first such index goes to *first when any.
inline std::size_t count_nonfinite(const float* x, std::size_t n, std::size_t* first = nullptr) {
  const Isa isa = active_isa();
  const int t = detail::plan_threads(n);
  std::vector<detail::NonfiniteCount> parts(static_cast<std::size_t>(t));
  detail::parallel_chunks(n, t, [&](int j, detail::Range r) {
    auto& out = parts[static_cast<std::size_t>(j)];
#if defined(EAST_KERNELS_X86)
    if (isa == Isa::avx512) {
      out = detail::avx512::count_nonfinite(x, r.begin, r.end);
      return;
    }
    if (isa == Isa::avx2) {
      out = detail::avx2::count_nonfinite(x, r.begin, r.end);
      return;
    }
#endif
    out = detail::scalar::count_nonfinite(x, r.begin, r.end);
  });
  (void)isa;
  std::size_t c = 0;
  for (const auto& p : parts) {
    if (c == 0 && p.count > 0 && first) *first = p.first;
    c += p.count;
  }
  return c;
}

/// Fused SGD step under a bit mask, in one pass: active positions (bit set) get the update of
/// SgdParams, inactive ones w = 0 (and buf = 0 with momentum). Zeros that are already zero are
/// not rewritten, so the cost of pruned positions is a read.
/// @param w     n weights, updated in place.
/// @param g     n gradients (read only at active positions' vectors).
/// @param buf   n momentum buffers, required iff p.momentum != 0 (start them at 0: the first
///              step then gives buf = g, as PyTorch does).
/// @param mask  words_for(n) words, bit set = active.
/// @param hist  optional kHistBins counters; adds hist_bin(abs_key(new w)) of active positions.
inline void masked_sgd(float* w, const float* g, float* buf, const std::uint64_t* mask, std::size_t n,
                       const SgdParams& p, std::uint64_t* hist = nullptr) {
  detail::require(!(p.momentum != 0.0f) || buf != nullptr, "east::kernels::masked_sgd",
                  "momentum = ", p.momentum, " needs a momentum buffer (got null)");
  detail::require(!p.nesterov || (p.momentum > 0.0f && p.dampening == 0.0f), "east::kernels::masked_sgd",
                  "nesterov needs momentum > 0 and dampening = 0 (got momentum ", p.momentum, ", dampening ",
                  p.dampening, ")");
  const Isa isa = active_isa();
  const int t = detail::plan_threads(n);
  std::vector<std::uint32_t> local(hist ? kHistBins * static_cast<std::size_t>(t) : 0, 0u);
  detail::parallel_chunks(n, t, [&](int j, detail::Range r) {
    std::uint32_t* h = hist ? local.data() + kHistBins * static_cast<std::size_t>(j) : nullptr;
#if defined(EAST_KERNELS_X86)
    if (isa == Isa::avx512) return detail::avx512::masked_sgd(w, g, buf, mask, r.begin, r.end, p, h);
    if (isa == Isa::avx2) return detail::avx2::masked_sgd(w, g, buf, mask, r.begin, r.end, p, h);
#endif
    detail::scalar::masked_sgd(w, g, buf, mask, r.begin, r.end, p, h);
  });
  (void)isa;
  if (hist)
    for (std::size_t j = 0; j < local.size(); ++j) hist[j % kHistBins] += local[j];
}

}  // namespace east::kernels
