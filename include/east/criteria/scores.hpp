#pragma once
// What a prune or regrow criterion hands to the selection kernels: either float values ranked
// by magnitude, or precomputed 32-bit keys (random criteria). One of the two is set.
#include <cstdint>
#include <vector>

#include "../core/parameter_set.hpp"
#include "../core/random.hpp"
#include "../masks/bit_mask.hpp"

namespace east {

struct Scores {
  const float* magnitudes = nullptr;    ///< rank by |x|
  const std::uint32_t* keys = nullptr;  ///< rank by key
};

/// Everything a criterion may look at for one layer at one update.
struct LayerContext {
  const LayerView& layer;
  std::size_t index;                    ///< position of the layer in the ParameterSet
  const BitMask& mask;                  ///< the mask before this update
  RandomStream stream;                  ///< unique to (seed, update, layer, role)
  std::vector<std::uint32_t>& scratch;  ///< reusable buffer of layer.size() keys
};

namespace detail {
inline Scores random_keys(const LayerContext& ctx) {
  const auto n = ctx.layer.size();
  ctx.scratch.resize(n);
  for (std::size_t i = 0; i < n; ++i) ctx.scratch[i] = ctx.stream.bits32(i);
  return Scores{nullptr, ctx.scratch.data()};
}
/// Scores by |x| among the candidates (active or inactive positions of ctx.mask), except that
/// exact zeros are ordered among themselves at random (seeded) instead of by index: at extreme
/// sparsity whole layers can have zero gradient (no input→output path), and index order would
/// then regrow the same lowest positions forever. Nonzero values keep their exact order and all
/// rank above the zeros. Non-finite values are rejected here, since keys hide them.
inline Scores magnitudes_random_zero_ties(const LayerContext& ctx, const float* x, bool among_active,
                                          const char* who) {
  const auto n = ctx.layer.size();
  const auto* words = ctx.mask.words();
  bool zero_candidate = false;
  for (std::size_t i = 0; i < n && !zero_candidate; ++i)
    zero_candidate = x[i] == 0.0f && kernels::test_bit(words, i) == among_active;
  if (!zero_candidate) return Scores{x, nullptr};  // the fast path: rank the floats directly
  ctx.scratch.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t k = kernels::abs_key(x[i]);
    require(k < 0x7F800000u, who, "layer '", ctx.layer.name, "' has a non-finite score at index ", i, " = ",
            x[i], " (valid: finite weights and gradients)");
    // Bit 31 is free in |x| keys: nonzero values go above every zero, zeros get 31 random bits.
    ctx.scratch[i] = k != 0 ? (0x80000000u | k) : (ctx.stream.bits32(i) >> 1);
  }
  return Scores{nullptr, ctx.scratch.data()};
}
}  // namespace detail

}  // namespace east
