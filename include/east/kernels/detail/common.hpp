#pragma once
// Pieces shared by the scalar, AVX2 and AVX-512 kernel bodies.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../types.hpp"

namespace east::kernels::detail {

/// Where keys come from: t(i) = (bits(data[i]) & and_mask) ^ xor_mask. and_mask clears the sign
/// for |x| keys; xor_mask = ~0 turns "largest" into "smallest", so kernels only ever look for
/// the smallest transformed keys t.
struct KeySource {
  const void* data = nullptr;
  std::uint32_t and_mask = ~0u;
  std::uint32_t xor_mask = 0u;
};

/// Counts of one filtering pass over candidates: t < lo, t == lo, t == hi, lo < t < hi (stored).
struct FilterCounts {
  std::size_t lt = 0, eq_lo = 0, eq_hi = 0, mid = 0;
  bool overflow = false;
};

EAST_ALWAYS_INLINE std::uint32_t load_bits(const void* data, std::size_t i) noexcept {
  std::uint32_t u;
  std::memcpy(&u, static_cast<const unsigned char*>(data) + 4 * i, 4);
  return u;
}

/// Candidate bits of the 64 positions starting at `b` (a multiple of 64), none at or past `end`.
EAST_ALWAYS_INLINE std::uint64_t candidate_word(const std::uint64_t* mask, Among among, std::size_t b,
                                                std::size_t end) noexcept {
  std::uint64_t m = ~std::uint64_t{0};
  if (among != Among::all && mask != nullptr) m = among == Among::active ? mask[b >> 6] : ~mask[b >> 6];
  const std::size_t rem = end - b;
  if (rem < 64) m &= (std::uint64_t{1} << rem) - 1;
  return m;
}

/// Valid bits (position < end) of the word starting at b.
EAST_ALWAYS_INLINE std::uint64_t valid_word(std::size_t b, std::size_t end) noexcept {
  const std::size_t rem = end - b;
  return rem < 64 ? (std::uint64_t{1} << rem) - 1 : ~std::uint64_t{0};
}

EAST_ALWAYS_INLINE int popcount64(std::uint64_t x) noexcept { return __builtin_popcountll(x); }
EAST_ALWAYS_INLINE int ctz64(std::uint64_t x) noexcept { return __builtin_ctzll(x); }

/// Keeps the lowest `keep` set bits of x (keep < popcount(x)).
EAST_ALWAYS_INLINE std::uint64_t keep_lowest_bits(std::uint64_t x, std::size_t keep) noexcept {
  std::uint64_t r = 0;
  for (std::size_t j = 0; j < keep; ++j) {
    const std::uint64_t low = x & (~x + 1);
    r |= low;
    x ^= low;
  }
  return r;
}

/// Number of candidates among n positions.
inline std::size_t count_candidates(const std::uint64_t* mask, Among among, std::size_t n) noexcept {
  if (among == Among::all || mask == nullptr) return n;
  std::size_t c = 0;
  for (std::size_t b = 0; b < n; b += 64)
    c += static_cast<std::size_t>(popcount64(candidate_word(mask, among, b, n)));
  return c;
}

/// Per-chunk result of count_nonfinite.
struct NonfiniteCount {
  std::size_t count = 0;
  std::size_t first = 0;
};

}  // namespace east::kernels::detail
