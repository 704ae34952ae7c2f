#pragma once
// Fixtures shared by the libtorch tests.
#include <east/adapters/torch.hpp>

namespace east_test {

/// Sparsifier options that put every drop-in layer on compact weights (crossover 2), quietly and
/// without rescaling the initial weights.
inline east::torch_adapter::SparsifierOptions all_compact() {
  east::torch_adapter::SparsifierOptions o;
  o.crossover = {2.0, 2.0};
  o.log = nullptr;
  o.init = east::InitScaling::none;
  return o;
}

}  // namespace east_test
