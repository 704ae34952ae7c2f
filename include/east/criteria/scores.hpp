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
  const float* magnitudes = nullptr;     ///< rank by |x|
  const std::uint32_t* keys = nullptr;   ///< rank by key
};

/// Everything a criterion may look at for one layer at one update.
struct LayerContext {
  const LayerView& layer;
  std::size_t index;                     ///< position of the layer in the ParameterSet
  const BitMask& mask;                   ///< the mask before this update
  RandomStream stream;                   ///< unique to (seed, update, layer, role)
  std::vector<std::uint32_t>& scratch;   ///< reusable buffer of layer.size() keys
};

namespace detail {
inline Scores random_keys(const LayerContext& ctx) {
  const auto n = ctx.layer.size();
  ctx.scratch.resize(n);
  for (std::size_t i = 0; i < n; ++i) ctx.scratch[i] = ctx.stream.bits32(i);
  return Scores{nullptr, ctx.scratch.data()};
}
}  // namespace detail

}  // namespace east
