#pragma once
// Vocabulary shared by every selection and masking kernel (reference, SIMD, CUDA).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../config.hpp"

namespace east::kernels {

/// Which end of the order a selection takes.
enum class Extreme { largest, smallest };

/// Which positions are candidates, relative to a bit mask (bit i of word i/64, LSB first).
enum class Among { all, active, inactive };

/// Sort key of a float by magnitude: the bit pattern of |x| (sign cleared). For finite and
/// infinite values it orders exactly like |x|; NaN keys sort above +Inf. The controller rejects
/// NaN/Inf before any selection, so that rule only matters to direct kernel users.
EAST_HOST_DEVICE EAST_ALWAYS_INLINE std::uint32_t abs_key(float x) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u & 0x7FFFFFFFu;
}

/// Result of an exact selection of k candidates. A candidate i is selected iff its key beats
/// `threshold` strictly (greater for largest, smaller for smallest), or it equals `threshold`
/// and it is among the first `ties` such candidates in increasing index order. So exactly
/// `k` positions are selected and ties are broken by index (lower index wins).
struct Selection {
  std::uint32_t threshold = 0;
  std::size_t ties = 0;
  std::size_t k = 0;
  friend bool operator==(const Selection& a, const Selection& b) {
    return a.k == b.k && (a.k == 0 || (a.threshold == b.threshold && a.ties == b.ties));
  }
};

/// Number of 64-bit words that hold n bits.
constexpr std::size_t words_for(std::size_t n) noexcept { return (n + 63) / 64; }

EAST_HOST_DEVICE EAST_ALWAYS_INLINE bool test_bit(const std::uint64_t* words, std::size_t i) noexcept {
  return (words[i >> 6] >> (i & 63)) & 1u;
}

/// Whether position i is a candidate under (mask, among); a null mask means all positions.
EAST_HOST_DEVICE EAST_ALWAYS_INLINE bool is_candidate(const std::uint64_t* mask, Among among,
                                                      std::size_t i) noexcept {
  if (among == Among::all || mask == nullptr) return true;
  return test_bit(mask, i) == (among == Among::active);
}

}  // namespace east::kernels

namespace east::kernels {

/// Hyperparameters of one SGD step, with PyTorch's meaning:
///   g' = g + weight_decay * w;  b = momentum * b + (1 - dampening) * g';
///   d = nesterov ? g' + momentum * b : b  (d = g' without momentum);  w = w - lr * d.
/// Every product-sum is one fused multiply-add, so all ISAs round identically.
struct SgdParams {
  float lr = 0.01f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

/// Bins of the |w| histogram the fused SGD step can collect: the top 11 bits of abs_key
/// (sign, exponent and 3 mantissa bits), i.e. bin = abs_key(w) >> 20.
constexpr std::size_t kHistBins = 2048;
constexpr std::uint32_t hist_bin(std::uint32_t key) noexcept { return key >> 20; }

}  // namespace east::kernels
