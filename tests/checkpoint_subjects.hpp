#pragma once
// What the checkpoint tests save and load: a toy training loop, and RigL, SNFS and EAST
// controllers over ToyModel::small() with a shared, a dense and an excluded layer (the mutation
// test and the libFuzzer target damage their checkpoints).
#include <east/east.hpp>
#include <east/presets/east.hpp>

#include <cstdint>

#include "helpers.hpp"

namespace east_test {

/// Steps [from, to): seeded gradients, the controller's hooks around a plain SGD step.
template <class Ctl>
void train(ToyModel& m, Ctl& ctl, std::int64_t from, std::int64_t to) {
  for (std::int64_t step = from; step < to; ++step) {
    m.randomize_grads(static_cast<unsigned>(step) * 7 + 1);
    ctl.before_optimizer_step(step);
    m.sgd(0.05f);
    ctl.after_optimizer_step(step);
  }
}

/// ToyModel::small() with momentum buffers; conv2 used twice, conv3 dense, fc excluded.
inline east::ParameterSet mixed_params(ToyModel& m) {
  auto p = m.params(true);
  p.set_uses("conv2", 2);
  p.set_role("conv3", east::LayerRole::dense);
  p.set_role("fc", east::LayerRole::excluded);
  return p;
}

inline const east::DstConfig subject_cfg{0.3, 5, 200, 0.4};  // dense conv3 fits the budget

inline auto make_rigl_subject(east::ParameterSet p, std::uint64_t seed) {
  return east::make_rigl(std::move(p), subject_cfg, {seed});
}
inline auto make_snfs_subject(east::ParameterSet p, std::uint64_t seed) {
  return east::make_snfs(std::move(p), subject_cfg, {seed});
}
inline auto make_east_subject(east::ParameterSet p, std::uint64_t seed) {
  east::EastConfig c;
  c.density = 0.3;
  c.total_steps = 40;
  c.update_interval = 5;
  c.multiplier = 2;
  return east::make_east(std::move(p), c, {seed});
}

}  // namespace east_test
