#pragma once
// Sparse-aware initialisation (Evci et al. 2022, "Gradient flow in sparse neural networks and
// how lottery tickets win"): a dense initialiser (Kaiming, Xavier, libtorch's default) sets a
// unit's weight scale from its fan-in, so that the unit's output variance is about its input's.
// Under a mask a unit keeps only `active` of its `fan_in` inputs, and at 99% sparsity its output
// variance collapses by fan_in / active (100×) per layer — deep networks without normalisation
// then output a constant and never learn. Rescaling each unit's surviving weights by
// sqrt(fan_in / active) restores the variance the dense initialiser intended, whatever its
// distribution and gain (docs/initialisation.md has the evidence).
#include <cmath>
#include <cstddef>

#include "../core/parameter_set.hpp"
#include "../masks/bit_mask.hpp"

namespace east {

/// How the controller rescales the surviving weights when it creates the masks.
enum class InitScaling {
  none,    ///< keep the dense initialiser's values (the inactive ones are zeroed)
  fan_in,  ///< multiply each output unit's active weights by sqrt(fan_in / active fan-in)
};

/// Multiplies the active weights of every output unit (a row of the {out, in…} shape) of `layer`
/// by sqrt(fan_in / active), fan_in being the row length and active its active count under
/// `mask`; rows with no active weight are left alone. Handles column-major 2-D layers.
inline void scale_to_active_fan_in(const LayerView& layer, const BitMask& mask) {
  const std::size_t n = layer.size(), rows = static_cast<std::size_t>(layer.shape[0]), cols = n / rows;
  detail::require(mask.size() == n, "east::scale_to_active_fan_in()", "mask of ", mask.size(),
                  " positions for layer '", layer.name, "' of ", n, " weights");
  const bool strided = layer.column_major && layer.shape.size() == 2;
  for (std::size_t r = 0; r < rows; ++r) {
    // Element c of row r: r * cols + c (row-major) or r + c * rows (column-major).
    const std::size_t first = strided ? r : r * cols, step = strided ? rows : 1;
    std::size_t active = 0;
    for (std::size_t c = 0, i = first; c < cols; ++c, i += step) active += mask.test(i);
    if (active == 0 || active == cols) continue;
    const float s = static_cast<float>(std::sqrt(static_cast<double>(cols) / static_cast<double>(active)));
    for (std::size_t c = 0, i = first; c < cols; ++c, i += step) layer.weight[i] *= s;
  }
}

}  // namespace east
