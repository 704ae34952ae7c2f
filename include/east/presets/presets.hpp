#pragma once
// Named presets: the same Controller with particular policies (docs/controller.md).
//   make_static  fixed random mask                  make_set   random regrowth (SET)
//   make_rigl    gradient regrowth (RigL)           make_snfs  momentum regrowth (SNFS)
//   make_gmp     gradual magnitude pruning (Zhu & Gupta)
//   make_cyclic  EAST's cyclic sparsity followed by RigL at the target density
#include "../controller/controller.hpp"

namespace east {

/// Hyperparameters shared by the dynamic presets. Steps are optimizer steps.
struct DstConfig {
  double density = 0.1;                ///< target overall density, in (0, 1]
  std::int64_t update_interval = 100;  ///< ΔT
  std::int64_t end_step = INT64_MAX;   ///< no updates from here (RigL: 75% of training)
  double drop_fraction = 0.3;          ///< initial drop fraction f_0
  double drop_floor = 0.0;             ///< cosine decays f_0 → floor over [0, end_step]
  std::int64_t begin_step = -1;        ///< first update; -1 means update_interval
};

namespace detail {
inline Periodic periodic_of(const DstConfig& c) {
  require(c.update_interval > 0, "east preset", "update_interval ", c.update_interval, " (valid: >= 1)");
  return Periodic{c.update_interval, c.begin_step < 0 ? c.update_interval : c.begin_step, c.end_step};
}
inline CosineDrop cosine_of(const DstConfig& c) {
  require(c.drop_fraction >= 0 && c.drop_fraction <= 1, "east preset", "drop_fraction ", c.drop_fraction,
          " (valid: [0, 1])");
  require(c.drop_floor >= 0 && c.drop_floor <= 1, "east preset", "drop_floor ", c.drop_floor,
          " (valid: [0, 1])");
  return CosineDrop{c.drop_fraction, c.drop_floor, 0,
                    c.end_step == INT64_MAX ? INT64_MAX / 2 : std::max<std::int64_t>(1, c.end_step)};
}
inline ConstantDensity constant_of(const DstConfig& c) {
  require_density(c.density, "east preset");
  return ConstantDensity{c.density};
}
}  // namespace detail

template <class Distribution = ErdosRenyiKernel>
auto make_static(ParameterSet params, double density, ControllerOptions opt = {}, Distribution dist = {}) {
  detail::require_density(density, "east::make_static()");
  return Controller(std::move(params), Method{dist, ConstantDensity{density}, ConstantDrop{0.0}, Never{}},
                    opt);
}

namespace detail {
/// The Method of a constant-density DST preset with regrowth criterion `regrow`.
template <class Regrow, class Distribution>
auto dst_method(const DstConfig& c, Regrow regrow, Distribution dist) {
  return Method{dist, constant_of(c), cosine_of(c), periodic_of(c), MagnitudePrune{}, std::move(regrow), ZeroInit{}};
}
inline MomentumRegrow snfs_regrow(double beta) {
  require(beta >= 0 && beta < 1, "east::make_snfs()", "beta ", beta, " (valid: [0, 1))");
  return MomentumRegrow{beta, {}};
}
}  // namespace detail

template <class Distribution = ErdosRenyiKernel>
auto make_rigl(ParameterSet params, const DstConfig& c, ControllerOptions opt = {}, Distribution dist = {}) {
  return Controller(std::move(params), detail::dst_method(c, GradientRegrow{}, dist), opt);
}

template <class Distribution = ErdosRenyiKernel>
auto make_set(ParameterSet params, const DstConfig& c, ControllerOptions opt = {}, Distribution dist = {}) {
  return Controller(std::move(params), detail::dst_method(c, RandomRegrow{}, dist), opt);
}

/// SNFS regrowth by the momentum (coefficient `beta`) of the dense gradient, kept by the criterion.
template <class Distribution = ErdosRenyiKernel>
auto make_snfs(ParameterSet params, const DstConfig& c, ControllerOptions opt = {}, Distribution dist = {},
               double beta = 0.9) {
  return Controller(std::move(params), detail::dst_method(c, detail::snfs_regrow(beta), dist), opt);
}

/// Gradual magnitude pruning from `initial_density` to c.density between begin and end_step.
template <class Distribution = Uniform>
auto make_gmp(ParameterSet params, const DstConfig& c, double initial_density = 1.0,
              ControllerOptions opt = {}, Distribution dist = {}) {
  const auto p = detail::periodic_of(c);
  detail::require(c.end_step != INT64_MAX, "east::make_gmp()",
                  "end_step must be set (the step pruning ends)");
  return Controller(
      std::move(params),
      Method{dist, CubicDensity{initial_density, c.density, p.begin, c.end_step}, ConstantDrop{0.0},
             Periodic{p.interval, p.begin, c.end_step + 1}, MagnitudePrune{}, GradientRegrow{}, ZeroInit{}},
      opt);
}

/// EAST's cyclic sparsity: `cyclic` sets the density over time (its target is c.density's role),
/// RigL drop/grow throughout.
template <class Distribution = ErdosRenyiKernel>
auto make_cyclic(ParameterSet params, const DstConfig& c, CyclicDensity cyclic, ControllerOptions opt = {},
                 Distribution dist = {}) {
  cyclic.target = c.density;
  cyclic.validate();
  return Controller(std::move(params),
                    Method{dist, cyclic, detail::cosine_of(c), detail::periodic_of(c), MagnitudePrune{},
                           GradientRegrow{}, ZeroInit{}},
                    opt);
}

}  // namespace east
