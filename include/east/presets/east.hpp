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
#include "../controller/presets.hpp"

namespace east {

/// When EAST uses DyReLU-B (EastConfig::dyrelu_phasing).
enum class DyReluPhasing {
  full,       ///< DyReLU-B while β = 1, blended into ReLU over the ramp (EAST-SPEC §2)
  ramp_only,  ///< plain ReLU before the ramp, DyReLU-B only inside it, as the authors' ES2 code runs
};

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
  // Drop fraction: cosine from 0.5 to 0.005 over the whole run (ES2).
  double drop_initial = 0.5;
  double drop_floor = 0.005;
  // Trick 1: DyReLU phasing, full DyReLU until 25%, linear to ReLU at 50% of training.
  bool dyrelu = true;
  double dyrelu_start = 0.25;
  double dyrelu_end = 0.5;
  bool freeze_hypernet = false;
  DyReluPhasing dyrelu_phasing = DyReluPhasing::full;  ///< docs/east.md, "DyReLU phasing: the evidence"
  // Trick 2: weight sharing. The model builder reads this switch; the budget rule itself is
  // automatic for tensors registered with their uses (ParameterSet::set_uses / add_shared).
  bool weight_sharing = true;
};

/// β(step) of EAST's DyReLU phasing; the no-DyReLU ablation is β ≡ 0 (plain ReLU). With
/// ramp_only, β is 0 until the ramp starts, and the hyper-network counts as frozen there (unused:
/// it should take no optimizer step, as in ES2 where it has no gradient).
struct EastPhase {
  bool enabled = true;
  LinearPhase ramp{};
  DyReluPhasing phasing = DyReluPhasing::full;
  double beta(std::int64_t step) const {
    if (!enabled) return 0.0;
    const double b = ramp.beta(step);
    return phasing == DyReluPhasing::ramp_only && b == 1.0 ? 0.0 : b;
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

/// The sparse-training half of EAST: a Controller plus the DyReLU phase it runs beside.
template <class Distribution = ErdosRenyiKernel>
struct East {
  using ControllerType = Controller<
      Method<Distribution, CyclicDensity, CosineDrop, Periodic, MagnitudePrune, GradientRegrow, ZeroInit>>;
  ControllerType controller;
  EastPhase phase;
  EastConfig config;

  template <class... C>
  void before_optimizer_step(std::int64_t step, C&&... cbs) {
    controller.before_optimizer_step(step, cbs...);
  }
  template <class... C>
  bool after_optimizer_step(std::int64_t step, C&&... cbs) {
    return controller.after_optimizer_step(step, cbs...);
  }
  /// The DyReLU blend for this step (0 means plain ReLU: skip the hyper-network).
  double beta(std::int64_t step) const { return phase.beta(step); }
};

/// Builds EAST over `params`. Register weight-shared tensors with their number of uses first.
template <class Distribution = ErdosRenyiKernel>
East<Distribution> make_east(ParameterSet params, const EastConfig& c, ControllerOptions opt = {},
                             Distribution dist = {}) {
  constexpr const char* where = "east::make_east()";
  detail::require(c.total_steps >= 1, where, "total_steps ", c.total_steps, " (valid: >= 1)");
  detail::require_density(c.density, where);
  detail::require(c.cyclic_fraction > 0 && c.cyclic_fraction <= 1, where, "cyclic_fraction ",
                  c.cyclic_fraction, " (valid: (0, 1])");
  detail::require(c.update_end > 0 && c.update_end <= 1, where, "update_end ", c.update_end,
                  " (valid: (0, 1])");
  const auto interval = detail::east_interval(c);
  const auto end = static_cast<std::int64_t>(std::llround(c.update_end * static_cast<double>(c.total_steps)));
  const auto cyclic = detail::east_cyclic(c);
  cyclic.validate();
  detail::require(
      c.drop_initial >= 0 && c.drop_initial <= 1 && c.drop_floor >= 0 && c.drop_floor <= c.drop_initial,
      where, "drop fractions ", c.drop_initial, " → ", c.drop_floor, " (valid: 1 >= initial >= floor >= 0)");
  Method method{dist,
                cyclic,
                CosineDrop{c.drop_initial, c.drop_floor, 0, c.total_steps},
                Periodic{interval, interval, end},
                MagnitudePrune{},
                GradientRegrow{},
                ZeroInit{}};
  EastPhase phase{
      c.dyrelu,
      c.dyrelu ? LinearPhase::from_fractions(c.dyrelu_start, c.dyrelu_end, c.total_steps, c.freeze_hypernet)
               : LinearPhase{},
      c.dyrelu_phasing};
  return East<Distribution>{typename East<Distribution>::ControllerType(std::move(params), method, opt),
                            phase, c};
}

}  // namespace east
