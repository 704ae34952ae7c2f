#pragma once
// Phase schedules for DyReLU phasing: step -> beta in [0, 1], where 1 is full DyReLU-B and 0 is
// exactly ReLU (see dyrelu.hpp).
//
// The PhaseSchedule concept: any copyable class with
//     double beta(std::int64_t step) const;     // in [0, 1], for every step >= 0
// and optionally
//     bool frozen(std::int64_t step) const;     // hyper-network parameters frozen at `step`
// A schedule without `frozen` never freezes. Use east::phase_frozen(schedule, step) to ask
// either kind, and east::is_phase_schedule_v<P> to check a class at compile time.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../core/error.hpp"

namespace east {

namespace detail {

inline std::int64_t phase_round_step(double v) { return static_cast<std::int64_t>(std::llround(v)); }

inline void phase_check_window(const char* where, std::int64_t start, std::int64_t end) {
  require(start >= 0, where, "start ", start, " must be >= 0");
  require(end >= start, where, "end ", end, " must be >= start ", start);
}

// Steps of a fraction f of `total` steps, rounded to the nearest step.
inline std::int64_t phase_fraction_to_step(const char* where, const char* what, double f,
                                           std::int64_t total) {
  require(f >= 0.0 && f <= 1.0, where, what, " ", f, " is outside [0, 1]");
  return phase_round_step(f * static_cast<double>(total));
}

template <class P, class = void>
struct has_beta : std::false_type {};
template <class P>
struct has_beta<P, std::void_t<decltype(std::declval<const P&>().beta(std::int64_t{}))>>
    : std::is_convertible<decltype(std::declval<const P&>().beta(std::int64_t{})), double> {};

template <class P, class = void>
struct has_frozen : std::false_type {};
template <class P>
struct has_frozen<P, std::void_t<decltype(std::declval<const P&>().frozen(std::int64_t{}))>>
    : std::is_convertible<decltype(std::declval<const P&>().frozen(std::int64_t{})), bool> {};

}  // namespace detail

/// True when P models PhaseSchedule (has `double beta(std::int64_t) const`).
template <class P>
inline constexpr bool is_phase_schedule_v = detail::has_beta<P>::value;

/// Whether the hyper-network is frozen at `step`: P::frozen when P has it, otherwise false.
template <class P>
bool phase_frozen(const P& schedule, std::int64_t step) {
  static_assert(is_phase_schedule_v<P>,
                "east::phase_frozen: P must have `double beta(std::int64_t) const` (see "
                "docs/activations.md, PhaseSchedule)");
  if constexpr (detail::has_frozen<P>::value) {
    return schedule.frozen(step);
  } else {
    (void)schedule;
    (void)step;
    return false;
  }
}

/// EAST's default phasing: beta = 1 before `start`, linear from 1 at `start` to 0 at `end`,
/// 0 from `end` on. With start == end beta is 1 up to and including that step, 0 after it.
/// When `freeze_hypernet` is set, frozen(step) is true from `start` on (the paper's option to
/// freeze the hyper-network once the ramp begins).
struct LinearPhase {
  std::int64_t start = 0;
  std::int64_t end = 0;
  bool freeze_hypernet = false;

  LinearPhase() = default;
  /// @param start first step of the ramp (beta = 1 up to and including it).
  /// @param end step at which beta reaches 0; must be >= start.
  LinearPhase(std::int64_t start, std::int64_t end, bool freeze_hypernet = false)
      : start(start), end(end), freeze_hypernet(freeze_hypernet) {
    detail::phase_check_window("LinearPhase", start, end);
  }

  /// Ramp from fraction `start_fraction` to `end_fraction` of `total_steps` (each rounded to the
  /// nearest step). EAST's default is from_fractions(0.25, 0.5, total).
  static LinearPhase from_fractions(double start_fraction, double end_fraction, std::int64_t total_steps,
                                    bool freeze_hypernet = false) {
    constexpr const char* where = "LinearPhase::from_fractions";
    detail::require(total_steps >= 1, where, "total_steps ", total_steps, " must be >= 1");
    const auto s = detail::phase_fraction_to_step(where, "start_fraction", start_fraction, total_steps);
    const auto e = detail::phase_fraction_to_step(where, "end_fraction", end_fraction, total_steps);
    detail::require(end_fraction >= start_fraction, where, "end_fraction ", end_fraction,
                    " must be >= start_fraction ", start_fraction);
    return LinearPhase(s, e, freeze_hypernet);
  }

  /// Ramp from (possibly fractional) epoch `start_epoch` to `end_epoch`, with
  /// `steps_per_epoch` optimizer steps per epoch (each boundary rounded to the nearest step).
  static LinearPhase from_epochs(double start_epoch, double end_epoch, std::int64_t steps_per_epoch,
                                 bool freeze_hypernet = false) {
    constexpr const char* where = "LinearPhase::from_epochs";
    detail::require(steps_per_epoch >= 1, where, "steps_per_epoch ", steps_per_epoch, " must be >= 1");
    detail::require(start_epoch >= 0.0, where, "start_epoch ", start_epoch, " must be >= 0");
    detail::require(end_epoch >= start_epoch, where, "end_epoch ", end_epoch, " must be >= start_epoch ",
                    start_epoch);
    const double spe = static_cast<double>(steps_per_epoch);
    return LinearPhase(detail::phase_round_step(start_epoch * spe), detail::phase_round_step(end_epoch * spe),
                       freeze_hypernet);
  }

  double beta(std::int64_t step) const {
    if (step <= start) return 1.0;
    if (step >= end) return 0.0;
    return static_cast<double>(end - step) / static_cast<double>(end - start);
  }
  bool frozen(std::int64_t step) const { return freeze_hypernet && step >= start; }
};

/// Cosine ramp over the same window: beta = (1 + cos(pi (step - start) / (end - start))) / 2
/// inside [start, end], 1 before, 0 after. Gentler than LinearPhase at both ends.
struct CosinePhase {
  std::int64_t start = 0;
  std::int64_t end = 0;
  bool freeze_hypernet = false;

  CosinePhase() = default;
  CosinePhase(std::int64_t start, std::int64_t end, bool freeze_hypernet = false)
      : start(start), end(end), freeze_hypernet(freeze_hypernet) {
    detail::phase_check_window("CosinePhase", start, end);
  }
  /// Same rounding rules as LinearPhase::from_fractions.
  static CosinePhase from_fractions(double start_fraction, double end_fraction, std::int64_t total_steps,
                                    bool freeze_hypernet = false) {
    const LinearPhase l =
        LinearPhase::from_fractions(start_fraction, end_fraction, total_steps, freeze_hypernet);
    return CosinePhase(l.start, l.end, freeze_hypernet);
  }
  /// Same rounding rules as LinearPhase::from_epochs.
  static CosinePhase from_epochs(double start_epoch, double end_epoch, std::int64_t steps_per_epoch,
                                 bool freeze_hypernet = false) {
    const LinearPhase l = LinearPhase::from_epochs(start_epoch, end_epoch, steps_per_epoch, freeze_hypernet);
    return CosinePhase(l.start, l.end, freeze_hypernet);
  }

  double beta(std::int64_t step) const {
    if (step <= start) return 1.0;
    if (step >= end) return 0.0;
    const double t = static_cast<double>(step - start) / static_cast<double>(end - start);
    return 0.5 * (1.0 + std::cos(3.14159265358979323846 * t));
  }
  bool frozen(std::int64_t step) const { return freeze_hypernet && step >= start; }
};

/// A fixed beta: 1 is DyReLU-B throughout (the ablation "no phasing"), 0 is plain ReLU
/// throughout (the ablation "no DyReLU").
struct ConstantPhase {
  double value = 1.0;

  ConstantPhase() = default;
  explicit ConstantPhase(double value) : value(value) {
    detail::require(value >= 0.0 && value <= 1.0, "ConstantPhase", "value ", value, " is outside [0, 1]");
  }
  double beta(std::int64_t) const { return value; }
};

}  // namespace east
