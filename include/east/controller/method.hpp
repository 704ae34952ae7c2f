#pragma once
// Method: the policies of one sparse-training method, as already-built value objects.
// Presets (presets.hpp) are Methods with particular policies; users compose their own.
#include <string>
#include <type_traits>
#include <utility>

#include "../core/parameter_set.hpp"
#include "../criteria/criteria.hpp"
#include "../distributions/distributions.hpp"
#include "../schedules/schedules.hpp"

namespace east {

template <class Distribution, class DensitySchedule, class DropSchedule, class UpdateSchedule,
          class PruneCriterion = MagnitudePrune, class RegrowCriterion = GradientRegrow,
          class GrowInit = ZeroInit>
struct Method {
  Distribution distribution;
  DensitySchedule density;
  DropSchedule drop;
  UpdateSchedule update;
  PruneCriterion prune{};
  RegrowCriterion regrow{};
  GrowInit grow_init{};
};

template <class D, class S, class F, class U>
Method(D, S, F, U) -> Method<D, S, F, U>;
template <class D, class S, class F, class U, class P>
Method(D, S, F, U, P) -> Method<D, S, F, U, P>;
template <class D, class S, class F, class U, class P, class R>
Method(D, S, F, U, P, R) -> Method<D, S, F, U, P, R>;
template <class D, class S, class F, class U, class P, class R, class I>
Method(D, S, F, U, P, R, I) -> Method<D, S, F, U, P, R, I>;

namespace detail {
// Compile-time checks with messages that name the missing method and its doc page.
template <class T, class = void>
struct is_distribution : std::false_type {};
template <class T>
struct is_distribution<T, std::void_t<decltype(std::declval<const T&>().relative_densities(
                              std::declval<const ParameterSet&>()))>> : std::true_type {};
template <class T, class = void>
struct is_density_schedule : std::false_type {};
template <class T>
struct is_density_schedule<T, std::void_t<decltype(double(std::declval<const T&>().density(std::int64_t{})))>>
    : std::true_type {};
template <class T, class = void>
struct is_drop_schedule : std::false_type {};
template <class T>
struct is_drop_schedule<T,
                        std::void_t<decltype(double(std::declval<const T&>().drop_fraction(std::int64_t{})))>>
    : std::true_type {};
template <class T, class = void>
struct is_update_schedule : std::false_type {};
template <class T>
struct is_update_schedule<
    T, std::void_t<decltype(bool(std::declval<const T&>().is_update_step(std::int64_t{})))>>
    : std::true_type {};
template <class T, class = void>
struct is_prune_criterion : std::false_type {};
template <class T>
struct is_prune_criterion<T, std::void_t<decltype(Scores(std::declval<const T&>().prune_scores(
                                 std::declval<const LayerContext&>())))>> : std::true_type {};
template <class T, class = void>
struct is_regrow_criterion : std::false_type {};
template <class T>
struct is_regrow_criterion<T, std::void_t<decltype(Scores(std::declval<const T&>().regrow_scores(
                                  std::declval<const LayerContext&>())))>> : std::true_type {};
/// GrowInits whose initialize() also takes the mask after the update and a seeded stream.
template <class T, class = void>
struct takes_mask_and_stream : std::false_type {};
template <class T>
struct takes_mask_and_stream<T, std::void_t<decltype(std::declval<const T&>().initialize(
                                    std::declval<const LayerView&>(), std::declval<const std::uint64_t*>(),
                                    std::declval<const BitMask&>(), std::declval<RandomStream>()))>>
    : std::true_type {};
template <class T, class = void>
struct is_grow_init : takes_mask_and_stream<T> {};
template <class T>
struct is_grow_init<T, std::void_t<decltype(std::declval<const T&>().initialize(
                           std::declval<const LayerView&>(), std::declval<const std::uint64_t*>()))>>
    : std::true_type {};

template <class M>
struct method_traits;
template <class D, class S, class F, class U, class P, class R, class I>
struct method_traits<Method<D, S, F, U, P, R, I>> {
  static_assert(is_distribution<D>::value,
                "east: a Distribution needs `std::vector<double> relative_densities(const ParameterSet&) "
                "const` (docs/distributions.md)");
  static_assert(is_density_schedule<S>::value,
                "east: a DensitySchedule needs `double density(std::int64_t) const` (docs/schedules.md)");
  static_assert(is_drop_schedule<F>::value,
                "east: a DropSchedule needs `double drop_fraction(std::int64_t) const` (docs/schedules.md)");
  static_assert(
      is_update_schedule<U>::value,
      "east: an UpdateSchedule needs `bool is_update_step(std::int64_t) const` (docs/schedules.md)");
  static_assert(
      is_prune_criterion<P>::value,
      "east: a PruneCriterion needs `Scores prune_scores(const LayerContext&) const` (docs/criteria.md)");
  static_assert(
      is_regrow_criterion<R>::value,
      "east: a RegrowCriterion needs `Scores regrow_scores(const LayerContext&) const` (docs/criteria.md)");
  static_assert(is_grow_init<I>::value,
                "east: a GrowInit needs `void initialize(const LayerView&, const std::uint64_t*) const` "
                "or `initialize(layer, grown, const BitMask& mask_after, RandomStream) const` (docs/criteria.md)");
  static constexpr bool ok = true;
};
// Optional policy hooks, detected at compile time:
//   void observe(std::int64_t step, const ParameterSet&)  — sees the dense gradients every step,
//                                                           before they are masked (SNFS momentum)
//   std::string save_state() const; void load_state(const std::string&) — policy state in checkpoints
template <class T, class = void>
struct has_observe : std::false_type {};
template <class T>
struct has_observe<
    T, std::void_t<decltype(std::declval<T&>().observe(std::int64_t{}, std::declval<const ParameterSet&>()))>>
    : std::true_type {};
template <class T, class = void>
struct has_saved_state : std::false_type {};
template <class T>
struct has_saved_state<
    T, std::void_t<decltype(std::string(std::declval<const T&>().save_state())),
                   decltype(std::declval<T&>().load_state(std::declval<const std::string&>()))>>
    : std::true_type {};

// Optional regrow-criterion constant: `static constexpr bool reads_gradient = false;` says the
// criterion never reads LayerView::grad at an update (e.g. RandomRegrow), so compact layers need
// not keep what their dense gradient needs. Criteria without it are assumed to read it.
template <class T, class = void>
struct regrow_reads_gradient : std::true_type {};
template <class T>
struct regrow_reads_gradient<T, std::void_t<decltype(T::reads_gradient)>>
    : std::integral_constant<bool, T::reads_gradient> {};

/// Calls f on every policy of a Method, in declaration order.
template <class M, class F>
void for_each_policy(M& m, F&& f) {
  f(m.distribution), f(m.density), f(m.drop), f(m.update), f(m.prune), f(m.regrow), f(m.grow_init);
}
}  // namespace detail

}  // namespace east
