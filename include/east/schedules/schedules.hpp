#pragma once
// Built-in schedules (docs/schedules.md). Steps are optimizer steps counted from 0.
//   UpdateSchedule:  bool is_update_step(std::int64_t step) const;
//   DropSchedule:    double drop_fraction(std::int64_t step) const;     in [0, 1]
//   DensitySchedule: double density(std::int64_t step) const;          in (0, 1]
//                    optional: bool forces_update(std::int64_t step) const;  — e.g. the end of
//                    EAST's cyclic phase, so every layer is back at its target count exactly.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../core/error.hpp"

namespace east {

inline constexpr double pi = 3.14159265358979323846;

namespace detail {
/// Position of `step` in the window [begin, end], clamped to [0, 1].
inline double window_progress(std::int64_t step, std::int64_t begin, std::int64_t end, const char* where) {
  require(end > begin, where, "end ", end, " must be > begin ", begin);
  return std::clamp(static_cast<double>(step - begin) / static_cast<double>(end - begin), 0.0, 1.0);
}
}  // namespace detail

// ---------------------------------------------------------------- when to update

/// Update every `interval` steps, at begin, begin + interval, … while step < end.
struct Periodic {
  std::int64_t interval = 100;
  std::int64_t begin = 100;      ///< first update step (RigL: not at step 0)
  std::int64_t end = INT64_MAX;  ///< no updates at or after this step

  bool is_update_step(std::int64_t step) const {
    detail::require(interval > 0, "east::Periodic", "interval ", interval, " (valid: >= 1)");
    return step >= begin && step < end && (step - begin) % interval == 0;
  }
};

/// Never updates: static sparse training.
struct Never {
  bool is_update_step(std::int64_t) const { return false; }
};

// ---------------------------------------------------------------- drop fraction

struct ConstantDrop {
  double fraction = 0.3;
  double drop_fraction(std::int64_t) const { return fraction; }
};

/// f(t) = f_min + (f_0 − f_min)·(1 + cos(π (t − begin)/(end − begin)))/2, held at f_min after end.
struct CosineDrop {
  double initial = 0.3;
  double floor = 0.0;
  std::int64_t begin = 0;
  std::int64_t end = 1;
  double drop_fraction(std::int64_t step) const {
    const double p = detail::window_progress(step, begin, end, "east::CosineDrop");
    return floor + (initial - floor) * 0.5 * (1.0 + std::cos(pi * p));
  }
};

/// f(t) = max(floor, f_0 · decay^((t − begin)/period)).
struct ExponentialDrop {
  double initial = 0.3;
  double decay = 0.5;
  std::int64_t period = 1000;
  std::int64_t begin = 0;
  double floor = 0.0;
  double drop_fraction(std::int64_t step) const {
    detail::require(period > 0, "east::ExponentialDrop", "period ", period, " (valid: >= 1)");
    const double t =
        static_cast<double>(std::max<std::int64_t>(0, step - begin)) / static_cast<double>(period);
    return std::max(floor, initial * std::pow(decay, t));
  }
};

// ---------------------------------------------------------------- target density

struct ConstantDensity {
  double value = 0.1;
  double density(std::int64_t) const { return value; }
};

/// Gradual magnitude pruning (Zhu & Gupta 2017): sparsity
/// s_t = s_f + (s_i − s_f)(1 − (t − begin)/(end − begin))³, constant outside [begin, end].
struct CubicDensity {
  double initial = 1.0;
  double final_density = 0.1;
  std::int64_t begin = 0;
  std::int64_t end = 1;
  double density(std::int64_t step) const {
    const double p = detail::window_progress(step, begin, end, "east::CubicDensity");
    const double si = 1.0 - initial, sf = 1.0 - final_density;
    return 1.0 - (sf + (si - sf) * std::pow(1.0 - p, 3));
  }
};

enum class CycleShape { cosine, triangular };

/// EAST's cyclic sparsity: density oscillates between `target` and `multiplier`·target for
/// `cycles` cycles starting at `begin`, cycle i lasting length·length_mult^i steps; each cycle
/// starts and ends at the target; after the cycles the density stays at the target.
struct CyclicDensity {
  double target = 0.001;
  double multiplier = 3.0;
  int cycles = 2;
  std::int64_t length = 1000;
  double length_mult = 1.0;
  CycleShape shape = CycleShape::cosine;
  std::int64_t begin = 0;

  void validate() const {
    constexpr const char* where = "east::CyclicDensity";
    detail::require_density(target, where, "target");
    detail::require(multiplier >= 1.0 && target * multiplier <= 1.0, where, "multiplier ", multiplier,
                    " (valid: >= 1 with target*multiplier <= 1)");
    detail::require(cycles >= 0, where, "cycles ", cycles, " (valid: >= 0)");
    detail::require(length > 0, where, "length ", length, " (valid: >= 1 step)");
    detail::require(length_mult > 0, where, "length_mult ", length_mult, " (valid: > 0)");
  }
  /// First step after the cyclic phase.
  std::int64_t end() const {
    double t = static_cast<double>(begin), len = static_cast<double>(length);
    for (int i = 0; i < cycles; ++i, len *= length_mult) t += std::round(len);
    return static_cast<std::int64_t>(t);
  }
  double density(std::int64_t step) const {
    validate();
    if (step < begin) return target;
    double start = static_cast<double>(begin), len = static_cast<double>(length);
    for (int i = 0; i < cycles; ++i, len *= length_mult) {
      const double l = std::round(len);
      if (static_cast<double>(step) < start + l) {
        const double p = (static_cast<double>(step) - start) / l;  // position in [0, 1)
        const double up = shape == CycleShape::cosine ? 0.5 * (1.0 - std::cos(2.0 * pi * p))
                                                      : 1.0 - std::abs(2.0 * p - 1.0);
        return target + (multiplier * target - target) * up;
      }
      start += l;
    }
    return target;
  }
  /// The first step after the cycles forces an update so every layer returns to its target.
  bool forces_update(std::int64_t step) const { return cycles > 0 && step == end(); }
};

}  // namespace east
