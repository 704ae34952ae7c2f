#pragma once
// Scalar reference of the fused masked SGD step: the oracle the SIMD bodies are tested against.
#include <cmath>

#include "../../core/error.hpp"
#include "../types.hpp"

namespace east::kernels::reference {

/// One SGD step on the active positions of `mask` (bit set = active). Inactive positions get
/// w = 0 and, with momentum, buf = 0. With `hist` (kHistBins counters) it adds the count of
/// hist_bin(abs_key(new w)) over active positions. `buf` is needed iff p.momentum != 0.
inline void masked_sgd(float* w, const float* g, float* buf, const std::uint64_t* mask, std::size_t n,
                       const SgdParams& p, std::uint64_t* hist = nullptr) {
  const bool mom = p.momentum != 0.0f;
  ::east::detail::require(!mom || buf != nullptr, "east::kernels::masked_sgd", "momentum = ", p.momentum,
                          " needs a momentum buffer (got null)");
  const float damp1 = 1.0f - p.dampening;
  for (std::size_t i = 0; i < n; ++i) {
    if (!test_bit(mask, i)) {
      w[i] = 0.0f;
      if (mom) buf[i] = 0.0f;
      continue;
    }
    float gi = g[i];
    if (p.weight_decay != 0.0f) gi = std::fma(p.weight_decay, w[i], gi);
    float d = gi;
    if (mom) {
      const float b = std::fma(p.momentum, buf[i], damp1 * gi);
      buf[i] = b;
      d = p.nesterov ? std::fma(p.momentum, b, gi) : b;
    }
    w[i] = std::fma(-p.lr, d, w[i]);
    if (hist) ++hist[hist_bin(abs_key(w[i]))];
  }
}

}  // namespace east::kernels::reference
