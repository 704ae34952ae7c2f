#pragma once
// Named presets whose schedules are fractions of a run: a Preset is a value (method, density,
// hyper-parameters) turned into a controller once the run's length is known, e.g. by the libtorch
// Sparsifier or the reference trainer:
//   auto preset = east::presets::rigl(0.01);          // 99% sparse RigL, the defaults below
//   preset.updates = 50;                               // any field can be changed
//   std::unique_ptr<east::AnyController> ctl = preset.build(params, total_steps);
// The schedule (every method): `updates` mask updates at ΔT, 2ΔT, …, updates·ΔT with
// ΔT = ⌊update_end · T / (updates + 1)⌋ (or update_interval, then as many as fit before
// update_end · T); the drop fraction falls (cosine) from drop_fraction to drop_floor by the last. EAST adds its cyclic density and DyReLU
// phase (EastConfig's fields, presets/east.hpp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "../controller/any_controller.hpp"
#include "east.hpp"
#include "presets.hpp"

namespace east {

struct Preset {
  enum class Kind {
    dense,        ///< every weight active (the same code path, for baselines)
    static_mask,  ///< a fixed random mask
    set,          ///< magnitude drop, random regrowth (Mocanu et al. 2018)
    rigl,         ///< magnitude drop, gradient regrowth (Evci et al. 2020)
    snfs,         ///< magnitude drop, momentum-of-gradient regrowth (Dettmers & Zettlemoyer 2019)
    east,         ///< EAST: cyclic density, then RigL at the target (+ DyReLU phase, sharing budget)
  };
  Kind kind = Kind::rigl;
  double density = 0.01;             ///< target density in (0, 1] (ignored by dense)
  int updates = 20;                  ///< mask updates in the run (with update_interval 0)
  std::int64_t update_interval = 0;  ///< ΔT in steps; 0 = derived from `updates`
  double update_end = 0.75;          ///< masks stay fixed from this fraction of training on
  double drop_fraction = 0.3;        ///< cosine drop fraction from this …
  double drop_floor = 0.0;           ///< … to this at update_end
  double snfs_beta = 0.9;            ///< SNFS: momentum of the dense gradient
  /// Grown weights start at zero (RigL's rule, the default) or, with `fan_in_init`, are drawn
  /// from N(0, gain² / active fan-in) (FanInInit: Evci et al. 2022's sparse-aware rule).
  bool fan_in_init = false;
  double fan_in_gain = 1.4142135623730951;  ///< √2: Kaiming for ReLU networks
  EastConfig east;                   ///< EAST's cyclic density and DyReLU phase (its own density,
                                     ///< total_steps, interval and drop fields are set by build)

  /// "rigl", "set", … as the trainer's --method names them.
  std::string name() const {
    switch (kind) {
      case Kind::dense: return "dense";
      case Kind::static_mask: return "static";
      case Kind::set: return "set";
      case Kind::rigl: return "rigl";
      case Kind::snfs: return "snfs";
      case Kind::east: return "east";
    }
    return "?";
  }
  bool dynamic() const { return kind != Kind::dense && kind != Kind::static_mask; }

  /// Steps of the schedule for a run of `total_steps` optimizer steps.
  DstConfig schedule(std::int64_t total_steps) const {
    constexpr const char* where = "east::Preset::schedule()";
    detail::require(total_steps >= 1, where, "total_steps ", total_steps, " (valid: >= 1)");
    detail::require(update_end > 0 && update_end <= 1, where, "update_end ", update_end, " (valid: (0, 1])");
    detail::require(updates >= 1, where, "updates ", updates, " (valid: >= 1)");
    detail::require(update_interval >= 0, where, "update_interval ", update_interval, " (valid: >= 0, 0 = derived)");
    detail::require(drop_fraction >= 0 && drop_fraction <= 1 && drop_floor >= 0 && drop_floor <= drop_fraction,
                    where, "drop fractions ", drop_fraction, " → ", drop_floor,
                    " (valid: 1 >= drop_fraction >= drop_floor >= 0)");
    DstConfig c;
    c.density = kind == Kind::dense ? 1.0 : density;
    const auto end = std::max<std::int64_t>(
        2, static_cast<std::int64_t>(std::llround(update_end * static_cast<double>(total_steps))));
    c.update_interval = update_interval > 0 ? update_interval : std::max<std::int64_t>(1, end / (updates + 1));
    // Updates at ΔT, …, updates·ΔT: the schedule ends one step after the last.
    c.end_step = update_interval > 0 ? end : std::min(end, c.update_interval * updates + 1);
    c.begin_step = c.update_interval;
    c.drop_fraction = drop_fraction;
    c.drop_floor = drop_floor;
    return c;
  }

  /// EAST's configuration for a run of `total_steps` (the cyclic multiplier capped at 1/density).
  EastConfig east_config(std::int64_t total_steps) const {
    const DstConfig s = schedule(total_steps);
    EastConfig c = east;
    c.density = density;
    c.total_steps = total_steps;
    c.update_interval = s.update_interval;
    c.update_end = static_cast<double>(s.end_step) / static_cast<double>(total_steps);
    c.drop_initial = drop_fraction;
    c.drop_floor = drop_floor;
    c.multiplier = std::min(c.multiplier, 1.0 / density);
    return c;
  }

  /// The controller for a run of `total_steps` optimizer steps over `params`.
  std::unique_ptr<AnyController> build(ParameterSet params, std::int64_t total_steps,
                                       ControllerOptions options = {}) const {
    constexpr const char* where = "east::Preset::build()";
    if (kind != Kind::dense) detail::require_density(density, where);
    const DstConfig s = schedule(total_steps);
    // Every dynamic method through one path, with the grown-weight rule chosen here.
    const auto finish = [&](auto method) {
      if (!fan_in_init) return erase(Controller(std::move(params), method, options));
      auto m = Method{method.distribution, method.density, method.drop,      method.update,
                      method.prune,        method.regrow,  FanInInit{fan_in_gain}};
      return erase(Controller(std::move(params), std::move(m), options));
    };
    const ErdosRenyiKernel erk{};
    switch (kind) {
      case Kind::dense: return erase(make_static(std::move(params), 1.0, options));
      case Kind::static_mask: return erase(make_static(std::move(params), density, options));
      case Kind::set: return finish(detail::dst_method(s, RandomRegrow{}, erk));
      case Kind::rigl: return finish(detail::dst_method(s, GradientRegrow{}, erk));
      case Kind::snfs: return finish(detail::dst_method(s, detail::snfs_regrow(snfs_beta), erk));
      case Kind::east: return finish(detail::east_method(east_config(total_steps), erk));
    }
    throw InvalidArgument("east::Preset::build(): unknown kind");
  }
};

namespace presets {
inline Preset make(Preset::Kind kind, double density) {
  Preset p;
  p.kind = kind;
  p.density = density;
  return p;
}
inline Preset dense() { return make(Preset::Kind::dense, 1.0); }
inline Preset static_mask(double density) { return make(Preset::Kind::static_mask, density); }
inline Preset set(double density) { return make(Preset::Kind::set, density); }
inline Preset rigl(double density) { return make(Preset::Kind::rigl, density); }
inline Preset snfs(double density) { return make(Preset::Kind::snfs, density); }
/// EAST with ES2's drop fractions (0.5 → 0.005) and its tricks on; the model decides whether
/// DyReLU-B and weight sharing exist (docs/east.md).
inline Preset east(double density) {
  Preset p = make(Preset::Kind::east, density);
  p.drop_fraction = 0.5;
  p.drop_floor = 0.005;
  return p;
}
/// EAST without DyReLU-B, a first-class choice: in every run of docs/dyrelu-study.md it was level
/// with or better than EAST with its DyReLU phase, and it skips the hyper-networks' cost.
inline Preset east_no_dyrelu(double density) {
  Preset p = east(density);
  p.east.dyrelu = false;
  return p;
}
/// By the trainer's --method name: dense, static, set, rigl, snfs, east, east-no-dyrelu.
inline Preset by_name(const std::string& name, double density) {
  if (name == "dense") return dense();
  if (name == "static") return static_mask(density);
  if (name == "set") return set(density);
  if (name == "rigl") return rigl(density);
  if (name == "snfs") return snfs(density);
  if (name == "east") return east(density);
  if (name == "east-no-dyrelu") return east_no_dyrelu(density);
  throw InvalidArgument("east::presets::by_name(): unknown method '" + name +
                        "' (valid: dense, static, set, rigl, snfs, east, east-no-dyrelu)");
}
}  // namespace presets

}  // namespace east
