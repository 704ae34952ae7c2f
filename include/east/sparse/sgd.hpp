#pragma once
// SGD with momentum over the compact values only: the optimizer state of a sparse layer is
// nnz floats, not one per dense weight. Same arithmetic as kernels::reference::masked_sgd (one
// fused multiply-add per product-sum), so a compact step equals the masked dense step bit for bit.
#include <cmath>
#include <cstddef>

#include "../core/error.hpp"
#include "../kernels/types.hpp"
#include "detail/parallel.hpp"

namespace east::sparse {

/// One SGD step (PyTorch semantics, see kernels::SgdParams) on n compact values.
/// @param w values, updated  @param g gradients  @param buf momentum (n floats, start at 0),
/// needed iff p.momentum != 0.
inline void sgd_step(float* w, const float* g, float* buf, std::size_t n, const kernels::SgdParams& p) {
  constexpr const char* where = "east::sparse::sgd_step()";
  const bool mom = p.momentum != 0.0f;
  ::east::detail::require(!mom || buf != nullptr, where, "momentum = ", p.momentum,
                          " needs a momentum buffer (got null)");
  ::east::detail::require(!p.nesterov || (p.momentum > 0.0f && p.dampening == 0.0f), where,
                          "nesterov needs momentum > 0 and dampening = 0 (got momentum ", p.momentum,
                          ", dampening ", p.dampening, ")");
  const float damp1 = 1.0f - p.dampening;
  constexpr std::size_t kChunk = 1 << 14;
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  detail::parallel_for(chunks, static_cast<double>(n), [&](std::size_t c) {
    const std::size_t b = c * kChunk, e = std::min(n, b + kChunk);
    for (std::size_t i = b; i < e; ++i) {
      float gi = g[i];
      if (p.weight_decay != 0.0f) gi = std::fma(p.weight_decay, w[i], gi);
      float d = gi;
      if (mom) {
        const float bb = std::fma(p.momentum, buf[i], damp1 * gi);
        buf[i] = bb;
        d = p.nesterov ? std::fma(p.momentum, bb, gi) : bb;
      }
      w[i] = std::fma(-p.lr, d, w[i]);
    }
  });
}

}  // namespace east::sparse
