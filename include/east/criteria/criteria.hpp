#pragma once
// Built-in prune and regrow criteria and grown-weight initialisers (docs/criteria.md).
//   PruneCriterion:  Scores prune_scores(const LayerContext&) const;  — lowest scores are dropped
//   RegrowCriterion: Scores regrow_scores(const LayerContext&) const; — highest scores are grown
//                    bool reads_gradient() const;                     — whether it needs layer.grad
//   GrowInit:        void initialize(const LayerView&, const std::uint64_t* grown_bits) const;
#include "scores.hpp"

namespace east {

/// Drop the active weights of smallest |w|.
struct MagnitudePrune {
  Scores prune_scores(const LayerContext& ctx) const { return Scores{ctx.layer.weight, nullptr}; }
};

/// Drop uniformly random active weights (seeded; independent of thread count).
struct RandomPrune {
  Scores prune_scores(const LayerContext& ctx) const { return detail::random_keys(ctx); }
};

/// RigL: grow the inactive positions of largest |∂L/∂w| (the dense gradient the user hands over,
/// accumulated over micro-batches or all-reduced across ranks).
struct GradientRegrow {
  Scores regrow_scores(const LayerContext& ctx) const {
    detail::require(ctx.layer.grad != nullptr, "east::GradientRegrow", "layer '", ctx.layer.name,
                    "' has no gradient buffer (register one with ParameterSet::add or set_grad)");
    return Scores{ctx.layer.grad, nullptr};
  }
  static constexpr bool reads_gradient() { return true; }
};

/// SET: grow uniformly random inactive positions.
struct RandomRegrow {
  Scores regrow_scores(const LayerContext& ctx) const { return detail::random_keys(ctx); }
  static constexpr bool reads_gradient() { return false; }
};

/// SNFS: grow the inactive positions of largest |momentum|; the momentum buffer is the layer's
/// optimizer state number `state_index` (ParameterSet::add_state), which must hold the dense
/// momentum of the gradient at update steps.
struct MomentumRegrow {
  std::size_t state_index = 0;
  Scores regrow_scores(const LayerContext& ctx) const {
    detail::require(state_index < ctx.layer.state.size(), "east::MomentumRegrow", "layer '", ctx.layer.name,
                    "' has ", ctx.layer.state.size(), " optimizer buffers; state_index ", state_index,
                    " (valid: < number of buffers registered with add_state)");
    return Scores{ctx.layer.state[state_index], nullptr};
  }
  static constexpr bool reads_gradient() { return false; }
};

/// Grown weights start at zero (RigL, SET, EAST).
struct ZeroInit {
  void initialize(const LayerView& layer, const std::uint64_t* grown) const {
    kernels::fill_where(layer.weight, grown, layer.size(), 0.0f);
  }
};

/// Grown weights start at a constant (e.g. a small value so magnitude pruning does not drop
/// them at once).
struct ConstantInit {
  float value = 0.0f;
  void initialize(const LayerView& layer, const std::uint64_t* grown) const {
    kernels::fill_where(layer.weight, grown, layer.size(), value);
  }
};

}  // namespace east
