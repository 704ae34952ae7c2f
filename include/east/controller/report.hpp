#pragma once
// What an update did, per layer, handed to callbacks and returned to the caller.
#include <cstdint>
#include <string>
#include <vector>

namespace east {

struct LayerReport {
  std::string name;
  std::size_t size = 0;  ///< stored weights
  std::size_t uses = 1;  ///< uses of the stored tensor (weight sharing)
  std::size_t nnz = 0;   ///< active after the update (== target)
  std::size_t dropped = 0;
  std::size_t grown = 0;
  double ever_active_fraction = 0;  ///< positions active at any time so far ÷ size
};

struct UpdateReport {
  std::int64_t step = 0;
  double density = 0;  ///< scheduled overall density (nonzeros ÷ logical size)
  double drop_fraction = 0;
  std::vector<LayerReport> layers;

  std::size_t total_nnz() const {
    std::size_t n = 0;
    for (const auto& l : layers) n += l.nnz;
    return n;
  }
  std::size_t total_dropped() const {
    std::size_t n = 0;
    for (const auto& l : layers) n += l.dropped;
    return n;
  }
  std::size_t total_grown() const {
    std::size_t n = 0;
    for (const auto& l : layers) n += l.grown;
    return n;
  }
};

}  // namespace east
