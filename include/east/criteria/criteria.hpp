#pragma once
// Built-in prune and regrow criteria and grown-weight initialisers (docs/criteria.md).
//   PruneCriterion:  Scores prune_scores(const LayerContext&) const;  — lowest scores are dropped
//   RegrowCriterion: Scores regrow_scores(const LayerContext&) const; — highest scores are grown
// Any policy may also have observe(step, params) (sees dense gradients every step) and
// save_state()/load_state() (checkpointed); see docs/criteria.md.
//   GrowInit:        void initialize(const LayerView&, const std::uint64_t* grown_bits) const;
//                    or initialize(layer, grown_bits, const BitMask& mask_after, RandomStream) const
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "scores.hpp"

namespace east {

/// Drop the active weights of smallest |w|; active weights that are exactly zero (e.g. grown
/// ones that never moved) go first, in seeded random order.
struct MagnitudePrune {
  bool random_zero_ties = true;  ///< false: zeros in index order, like every other tie
  Scores prune_scores(const LayerContext& ctx) const {
    if (!random_zero_ties) return Scores{ctx.layer.weight, nullptr};
    return detail::magnitudes_random_zero_ties(ctx, ctx.layer.weight, true, "east::MagnitudePrune");
  }
};

/// Drop uniformly random active weights (seeded; independent of thread count).
struct RandomPrune {
  Scores prune_scores(const LayerContext& ctx) const { return detail::random_keys(ctx); }
};

/// RigL: grow the inactive positions of largest |∂L/∂w| (the dense gradient the user hands over,
/// accumulated over micro-batches or all-reduced across ranks).
/// Inactive positions with exactly zero gradient rank below all others, in seeded random order
/// (with index order a disconnected layer would regrow the same positions at every update).
struct GradientRegrow {
  bool random_zero_ties = true;  ///< false: zeros in index order, like every other tie
  Scores regrow_scores(const LayerContext& ctx) const {
    detail::require(ctx.layer.grad != nullptr, "east::GradientRegrow", "layer '", ctx.layer.name,
                    "' has no gradient buffer (register one with ParameterSet::add or set_grad)");
    if (!random_zero_ties) return Scores{ctx.layer.grad, nullptr};
    return detail::magnitudes_random_zero_ties(ctx, ctx.layer.grad, false, "east::GradientRegrow");
  }
};

/// SET: grow uniformly random inactive positions.
struct RandomRegrow {
  static constexpr bool reads_gradient = false;
  Scores regrow_scores(const LayerContext& ctx) const { return detail::random_keys(ctx); }
};

/// SNFS (Dettmers & Zettlemoyer 2019): grow the inactive positions of largest |m|, where m is an
/// exponential moving average of the *dense* gradient that this criterion keeps itself
/// (m ← β·m + (1 − β)·g every step, before east masks the gradient). Costs one float per weight;
/// its state is saved in checkpoints.
struct MomentumRegrow {
  double beta = 0.9;
  std::vector<std::vector<float>> momentum;  ///< per layer, dense

  void observe(std::int64_t, const ParameterSet& params) {
    if (momentum.size() != params.size()) momentum.assign(params.size(), {});
    const float b = static_cast<float>(beta), a = 1.0f - b;
    for (std::size_t l = 0; l < params.size(); ++l) {
      const auto& layer = params[l];
      if (!layer.grad || layer.role != LayerRole::sparse) continue;
      auto& m = momentum[l];
      if (m.size() != layer.size()) m.assign(layer.size(), 0.0f);
      for (std::size_t i = 0; i < m.size(); ++i) m[i] = b * m[i] + a * layer.grad[i];
    }
  }
  Scores regrow_scores(const LayerContext& ctx) const {
    detail::require(ctx.index < momentum.size() && momentum[ctx.index].size() == ctx.layer.size(),
                    "east::MomentumRegrow", "no gradient has been observed for layer '", ctx.layer.name,
                    "' (register a gradient buffer and call before_optimizer_step every step)");
    return detail::magnitudes_random_zero_ties(ctx, momentum[ctx.index].data(), false,
                                               "east::MomentumRegrow");
  }
  std::string save_state() const {
    std::string s;
    const std::uint64_t layers = momentum.size();
    s.append(reinterpret_cast<const char*>(&layers), 8);
    for (const auto& m : momentum) {
      const std::uint64_t n = m.size();
      s.append(reinterpret_cast<const char*>(&n), 8);
      s.append(reinterpret_cast<const char*>(m.data()), n * sizeof(float));
    }
    return s;
  }
  void load_state(const std::string& s) {
    constexpr const char* where = "east::MomentumRegrow::load_state()";
    std::size_t pos = 0;
    auto left = [&] { return s.size() - pos; };
    auto take = [&](void* out, std::size_t n) {
      detail::require(n <= left(), where, "state is truncated at byte ", pos, " of ", s.size());
      if (n == 0) return;  // `out` may be an empty vector's null data(): memcpy must not see it
      std::memcpy(out, s.data() + pos, n);
      pos += n;
    };
    // Counts are checked against the bytes left before anything is sized by them.
    std::uint64_t layers = 0;
    take(&layers, 8);
    detail::require(layers <= left() / 8, where, "layer count ", layers, " is implausible (", left(),
                    " bytes left)");
    std::vector<std::vector<float>> m(layers);
    for (auto& v : m) {
      std::uint64_t n = 0;
      take(&n, 8);
      detail::require(n <= left() / sizeof(float), where, "layer size ", n, " is implausible (", left(),
                      " bytes left)");
      v.resize(n);
      take(v.data(), n * sizeof(float));
    }
    detail::require(pos == s.size(), where, "state has ", s.size() - pos, " trailing bytes");
    momentum = std::move(m);
  }
};

namespace detail {
/// How the controller's fused update (kernels/update.hpp) can reach a built-in criterion's exact
/// decisions without materialising its Scores: rank |x| (with or without the seeded random order
/// of exact zeros) or the criterion's random keys. Any other criterion, including one derived
/// from a built-in, gets `general`: its Scores are used as they are.
struct ScorePlan {
  enum Kind { general, magnitude, random } kind = general;
  const float* x = nullptr;
  bool random_zero_ties = true;
  const char* who = "";
};
template <class Criterion>
ScorePlan prune_plan(const Criterion&, const LayerContext&) {
  return {};
}
inline ScorePlan prune_plan(const MagnitudePrune& c, const LayerContext& ctx) {
  return {ScorePlan::magnitude, ctx.layer.weight, c.random_zero_ties, "east::MagnitudePrune"};
}
inline ScorePlan prune_plan(const RandomPrune&, const LayerContext&) { return {ScorePlan::random}; }
template <class Criterion>
ScorePlan regrow_plan(const Criterion&, const LayerContext&) {
  return {};
}
// A missing buffer gives `general`, so the criterion itself raises its error at the usual point.
inline ScorePlan regrow_plan(const GradientRegrow& c, const LayerContext& ctx) {
  if (ctx.layer.grad == nullptr) return {};
  return {ScorePlan::magnitude, ctx.layer.grad, c.random_zero_ties, "east::GradientRegrow"};
}
inline ScorePlan regrow_plan(const MomentumRegrow& c, const LayerContext& ctx) {
  if (ctx.index >= c.momentum.size() || c.momentum[ctx.index].size() != ctx.layer.size()) return {};
  return {ScorePlan::magnitude, c.momentum[ctx.index].data(), true, "east::MomentumRegrow"};
}
inline ScorePlan regrow_plan(const RandomRegrow&, const LayerContext&) { return {ScorePlan::random}; }
}  // namespace detail

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

/// Grown weights drawn from N(0, gain² / a), a being their unit's active fan-in after the update
/// (the sparse-aware Kaiming/LeCun rule of Evci et al. 2022, "Gradient flow in sparse neural
/// networks"; gain √2 for ReLU networks) instead of starting at zero, so a regrown unit's output
/// variance is what the dense initialiser intended. Seeded per (seed, update, layer).
struct FanInInit {
  double gain = 1.0;
  void initialize(const LayerView& layer, const std::uint64_t* grown, const BitMask& mask, RandomStream s) const {
    detail::require(std::isfinite(gain) && gain >= 0, "east::FanInInit", "gain ", gain, " (valid: finite, >= 0)");
    const std::size_t n = layer.size(), rows = static_cast<std::size_t>(layer.shape[0]), cols = n / rows;
    const bool strided = layer.column_major && layer.shape.size() == 2;
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t first = strided ? r : r * cols, step = strided ? rows : 1;
      std::size_t active = 0;
      for (std::size_t c = 0, i = first; c < cols; ++c, i += step) active += mask.test(i);
      if (active == 0) continue;
      const double sd = gain / std::sqrt(static_cast<double>(active));
      for (std::size_t c = 0, i = first; c < cols; ++c, i += step) {
        if (!((grown[i / 64] >> (i % 64)) & 1u)) continue;
        // Box–Muller from two counter-based uniforms in (0, 1].
        const double u1 = 1.0 - s.uniform(2 * i), u2 = s.uniform(2 * i + 1);
        layer.weight[i] = static_cast<float>(sd * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
      }
    }
  }
};

namespace detail {
/// Built-in GrowInits write one value at the grown positions: the fused commit writes it there
/// directly. Any other GrowInit's initialize() is called with the grown bits, as documented.
template <class Init>
struct is_constant_grow_init : std::false_type {};
template <>
struct is_constant_grow_init<ZeroInit> : std::true_type {};
template <>
struct is_constant_grow_init<ConstantInit> : std::true_type {};
inline float grow_value(const ZeroInit&) { return 0.0f; }
inline float grow_value(const ConstantInit& c) { return c.value; }
}  // namespace detail

}  // namespace east
