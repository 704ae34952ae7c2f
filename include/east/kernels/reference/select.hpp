#pragma once
// Scalar reference selection: obviously correct, used by tests as the oracle for fast paths.
#include <algorithm>
#include <utility>
#include <vector>

#include "../../core/error.hpp"
#include "../types.hpp"

namespace east::kernels::reference {

/// Exact selection of k candidates by key. `key(i)` gives position i's key.
template <class KeyFn>
Selection select_by(KeyFn key, std::size_t n, std::size_t k, Extreme extreme, const std::uint64_t* mask,
                    Among among) {
  std::vector<std::pair<std::uint32_t, std::size_t>> cand;
  cand.reserve(among == Among::all ? n : 0);
  for (std::size_t i = 0; i < n; ++i)
    if (is_candidate(mask, among, i)) cand.emplace_back(key(i), i);
  ::east::detail::require(k <= cand.size(), "east::kernels::select", "k = ", k,
                          " exceeds the number of candidates ", cand.size(), " (valid: 0..", cand.size(),
                          ")");
  Selection s;
  s.k = k;
  if (k == 0) return s;
  auto better = [extreme](const auto& a, const auto& b) {
    if (a.first != b.first) return extreme == Extreme::largest ? a.first > b.first : a.first < b.first;
    return a.second < b.second;
  };
  std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k - 1), cand.end(), better);
  s.threshold = cand[k - 1].first;
  std::size_t strictly = 0;
  for (std::size_t j = 0; j < cand.size(); ++j) {
    const auto kj = cand[j].first;
    strictly += extreme == Extreme::largest ? (kj > s.threshold) : (kj < s.threshold);
  }
  s.ties = k - strictly;
  return s;
}

inline Selection select_abs(const float* x, std::size_t n, std::size_t k, Extreme extreme,
                            const std::uint64_t* mask = nullptr, Among among = Among::all) {
  return select_by([x](std::size_t i) { return abs_key(x[i]); }, n, k, extreme, mask, among);
}

inline Selection select_keys(const std::uint32_t* keys, std::size_t n, std::size_t k, Extreme extreme,
                             const std::uint64_t* mask = nullptr, Among among = Among::all) {
  return select_by([keys](std::size_t i) { return keys[i]; }, n, k, extreme, mask, among);
}

/// Sets bit i of `out` (which the caller has zeroed) for every selected position.
template <class KeyFn>
void mark_selected_by(KeyFn key, std::size_t n, const Selection& s, Extreme extreme,
                      const std::uint64_t* mask, Among among, std::uint64_t* out) {
  if (s.k == 0) return;
  std::size_t ties_left = s.ties;
  for (std::size_t i = 0; i < n; ++i) {
    if (!is_candidate(mask, among, i)) continue;
    const auto ki = key(i);
    bool take = extreme == Extreme::largest ? ki > s.threshold : ki < s.threshold;
    if (!take && ki == s.threshold && ties_left > 0) {
      take = true;
      --ties_left;
    }
    if (take) out[i >> 6] |= std::uint64_t{1} << (i & 63);
  }
}

inline void mark_selected_abs(const float* x, std::size_t n, const Selection& s, Extreme extreme,
                              const std::uint64_t* mask, Among among, std::uint64_t* out) {
  mark_selected_by([x](std::size_t i) { return abs_key(x[i]); }, n, s, extreme, mask, among, out);
}

inline void mark_selected_keys(const std::uint32_t* keys, std::size_t n, const Selection& s, Extreme extreme,
                               const std::uint64_t* mask, Among among, std::uint64_t* out) {
  mark_selected_by([keys](std::size_t i) { return keys[i]; }, n, s, extreme, mask, among, out);
}

/// x[i] = 0 where bit i of mask is clear (keeps active positions).
inline void apply_mask(float* x, const std::uint64_t* mask, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    if (!test_bit(mask, i)) x[i] = 0.0f;
}

/// x[i] = value where bit i of `where` is set.
inline void fill_where(float* x, const std::uint64_t* where, std::size_t n, float value) {
  for (std::size_t i = 0; i < n; ++i)
    if (test_bit(where, i)) x[i] = value;
}

/// Number of positions i with a non-finite x[i] among candidates; first such index in *first.
inline std::size_t count_nonfinite(const float* x, std::size_t n, std::size_t* first) {
  std::size_t c = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (abs_key(x[i]) >= 0x7F800000u) {
      if (c == 0 && first) *first = i;
      ++c;
    }
  return c;
}

}  // namespace east::kernels::reference
