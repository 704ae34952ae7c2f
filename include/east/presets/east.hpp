#pragma once
// The EAST preset (arXiv 2411.13545): cyclic density → RigL drop/grow at the target density,
// DyReLU phasing, and a weight-sharing-aware budget — one composition of the core's policies,
// each trick with an ablation switch. Defaults are EAST-SPEC's (the authors' ES2 code), with every
// phase given as a fraction of training so the recipe scales to shorter runs.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../activations/phase_schedule.hpp"
#include "../controller/controller.hpp"
#include "presets.hpp"

namespace east {

/// When EAST uses DyReLU-B (EastConfig::dyrelu_phasing).
enum class DyReluPhasing {
  full,       ///< DyReLU-B while β = 1 from the first step, blended into ReLU over the ramp (EAST-SPEC §2)
  ramp_only,  ///< plain ReLU before the ramp, DyReLU-B only inside it: what the authors' ES2 code runs
};

/// The shape of β's ramp from 1 to 0 (EastConfig::dyrelu_ramp).
enum class DyReluRamp {
  linear,  ///< EAST-SPEC §2
  cosine,  ///< β = ½(1 + cos πp), p the linear ramp's progress (a probe: docs/dyrelu-probes.md)
};

/// EAST's hyper-parameters. Every field has a default (ES2's, EAST-SPEC §1–5); only total_steps
/// must be set. Phases are fractions of training so the recipe scales to shorter runs.
struct EastConfig {
  double density = 0.001;            ///< target overall density (counting every shared use)
  std::int64_t total_steps = 0;      ///< optimizer steps of the whole run (required)
  std::int64_t update_interval = 0;  ///< ΔT; 0 = total_steps / 25 (≈ ES2's 11 of 250 epochs)
  double update_end = 1.0;           ///< no updates from this fraction of training on (ES2: never stops)
  // Trick 3: cyclic sparsity.
  bool cyclic = true;
  double multiplier = 3.0;  ///< d_max = m · target
  int cycles = 2;
  double cyclic_fraction = 0.4;  ///< the cycles fill the first 40% of training
  CycleShape shape = CycleShape::cosine;
  // Drop fraction: cosine from 0.5 to 0.005 over [0, update_end · total_steps] (ES2: the whole run).
  double drop_initial = 0.5;
  double drop_floor = 0.005;
  // Trick 1: DyReLU phasing: a ramp of β from 1 (DyReLU-B) to 0 (ReLU) between 25% and 50% of training.
  bool dyrelu = true;
  double dyrelu_start = 0.25;
  double dyrelu_end = 0.5;
  bool freeze_hypernet = false;
  /// ramp_only by default: measured +5.9 ± 1.3 points over `full` at 350 steps and +1.7–3.1 at
  /// 1400 (docs/dyrelu-probes.md, docs/east.md "DyReLU phasing: the evidence").
  DyReluPhasing dyrelu_phasing = DyReluPhasing::ramp_only;
  DyReluRamp dyrelu_ramp = DyReluRamp::linear;
  // Trick 2: weight sharing. The model builder reads this switch; the budget rule itself is
  // automatic for tensors registered with their uses (ParameterSet::set_uses / add_shared).
  bool weight_sharing = true;
};

/// β(step) of EAST's DyReLU phasing (1 = full DyReLU-B, 0 = plain ReLU); the no-DyReLU ablation
/// is β ≡ 0. With ramp_only, β is 0 until the ramp starts and the hyper-network counts as frozen
/// there (unused: it takes no optimizer step, as in ES2 where it has no gradient).
struct EastPhase {
  bool enabled = true;
  LinearPhase ramp{};
  DyReluPhasing phasing = DyReluPhasing::ramp_only;
  DyReluRamp shape = DyReluRamp::linear;
  double beta(std::int64_t step) const {
    if (!enabled) return 0.0;
    const double b = ramp.beta(step);
    if (phasing == DyReluPhasing::ramp_only && b == 1.0) return 0.0;  // ES2: ReLU until the ramp
    return shape == DyReluRamp::cosine ? 0.5 * (1.0 + std::cos(3.14159265358979323846 * (1.0 - b))) : b;
  }
  bool frozen(std::int64_t step) const {
    return enabled && (ramp.frozen(step) || (phasing == DyReluPhasing::ramp_only && ramp.beta(step) == 1.0));
  }
};

namespace detail {
inline std::int64_t east_interval(const EastConfig& c) {
  return c.update_interval > 0 ? c.update_interval : std::max<std::int64_t>(1, c.total_steps / 25);
}
inline CyclicDensity east_cyclic(const EastConfig& c) {
  CyclicDensity d;
  d.target = c.density;
  d.multiplier = c.multiplier;
  d.cycles = c.cyclic ? c.cycles : 0;
  d.shape = c.shape;
  d.length = c.cycles > 0 ? std::max<std::int64_t>(
                                1, static_cast<std::int64_t>(std::llround(
                                       c.cyclic_fraction * static_cast<double>(c.total_steps) / c.cycles)))
                          : 1;
  return d;
}
}  // namespace detail

/// The Controller type make_east returns.
template <class Distribution = ErdosRenyiKernel>
using EastController = Controller<
    Method<Distribution, CyclicDensity, CosineDrop, Periodic, MagnitudePrune, GradientRegrow, ZeroInit>>;

/// EAST's DyReLU phase for `c` (β per step: 1 = full DyReLU-B, 0 = ReLU); with c.dyrelu off, β ≡ 0.
inline EastPhase make_east_phase(const EastConfig& c) {
  detail::require(c.total_steps >= 1, "east::make_east_phase()", "total_steps ", c.total_steps,
                  " (valid: >= 1)");
  return EastPhase{c.dyrelu,
                   c.dyrelu ? LinearPhase::from_fractions(c.dyrelu_start, c.dyrelu_end, c.total_steps,
                                                          c.freeze_hypernet)
                            : LinearPhase{},
                   c.dyrelu_phasing, c.dyrelu_ramp};
}

namespace detail {
/// EAST's Method for `c` (validated): cyclic density, cosine drop, periodic updates, RigL criteria.
template <class Distribution = ErdosRenyiKernel>
auto east_method(const EastConfig& c, Distribution dist = {}) {
  constexpr const char* where = "east::make_east()";
  require(c.total_steps >= 1, where, "total_steps ", c.total_steps, " (valid: >= 1)");
  require_density(c.density, where);
  require(c.cyclic_fraction > 0 && c.cyclic_fraction <= 1, where, "cyclic_fraction ", c.cyclic_fraction,
          " (valid: (0, 1])");
  require(c.update_end > 0 && c.update_end <= 1, where, "update_end ", c.update_end, " (valid: (0, 1])");
  const auto interval = east_interval(c);
  const auto end = std::max<std::int64_t>(
      1, static_cast<std::int64_t>(std::llround(c.update_end * static_cast<double>(c.total_steps))));
  const auto cyclic = east_cyclic(c);
  cyclic.validate();
  require(c.drop_initial >= 0 && c.drop_initial <= 1 && c.drop_floor >= 0 && c.drop_floor <= c.drop_initial, where,
          "drop fractions ", c.drop_initial, " → ", c.drop_floor, " (valid: 1 >= initial >= floor >= 0)");
  return Method{dist,
                cyclic,
                CosineDrop{c.drop_initial, c.drop_floor, 0, std::max<std::int64_t>(end, 2)},
                Periodic{interval, interval, end},
                MagnitudePrune{},
                GradientRegrow{},
                ZeroInit{}};
}
}  // namespace detail

/// EAST's sparse training over `params` (cyclic density, then RigL at the target, cosine drop),
/// a Controller like every preset; the DyReLU phase that runs beside it is make_east_phase(c).
/// Register weight-shared tensors with their number of uses first: the budget counts every use.
template <class Distribution = ErdosRenyiKernel>
EastController<Distribution> make_east(ParameterSet params, const EastConfig& c, ControllerOptions opt = {},
                                       Distribution dist = {}) {
  return EastController<Distribution>(std::move(params), detail::east_method(c, dist), opt);
}

}  // namespace east
