#pragma once
// Callbacks are passed per call as a variadic pack; every hook is optional and detected at
// compile time (ensmallen's pattern). Hooks:
//   void on_update(const UpdateReport&);                         after every mask update
//   void on_density_change(std::int64_t step, double from, double to);
//   void on_grown(const LayerView&, const BitMask& grown);       per layer, after growth — e.g.
//                                                               reset Adam state you did not register
#include <type_traits>
#include <utility>

#include "../core/parameter_set.hpp"
#include "../masks/bit_mask.hpp"
#include "report.hpp"

namespace east::detail {

template <class T, class = void>
struct has_on_update : std::false_type {};
template <class T>
struct has_on_update<T,
                     std::void_t<decltype(std::declval<T&>().on_update(std::declval<const UpdateReport&>()))>>
    : std::true_type {};

template <class T, class = void>
struct has_on_density_change : std::false_type {};
template <class T>
struct has_on_density_change<
    T, std::void_t<decltype(std::declval<T&>().on_density_change(std::int64_t{}, double{}, double{}))>>
    : std::true_type {};

template <class T, class = void>
struct has_on_grown : std::false_type {};
template <class T>
struct has_on_grown<T, std::void_t<decltype(std::declval<T&>().on_grown(std::declval<const LayerView&>(),
                                                                        std::declval<const BitMask&>()))>>
    : std::true_type {};

template <class... C>
void notify_update([[maybe_unused]] const UpdateReport& r, C&... cbs) {
  (
      [&] {
        if constexpr (has_on_update<C>::value) cbs.on_update(r);
      }(),
      ...);
}
template <class... C>
void notify_density_change([[maybe_unused]] std::int64_t step, [[maybe_unused]] double from,
                           [[maybe_unused]] double to, C&... cbs) {
  (
      [&] {
        if constexpr (has_on_density_change<C>::value) cbs.on_density_change(step, from, to);
      }(),
      ...);
}
template <class... C>
void notify_grown([[maybe_unused]] const LayerView& l, [[maybe_unused]] const BitMask& grown, C&... cbs) {
  (
      [&] {
        if constexpr (has_on_grown<C>::value) cbs.on_grown(l, grown);
      }(),
      ...);
}

// Optional schedule hook: forces_update(step).
template <class T, class = void>
struct has_forces_update : std::false_type {};
template <class T>
struct has_forces_update<T, std::void_t<decltype(std::declval<const T&>().forces_update(std::int64_t{}))>>
    : std::true_type {};

}  // namespace east::detail
