#pragma once
// The one dispatch point for selection and masking kernels. Policies and the controller call
// only these functions; which implementation runs (scalar, SIMD, threads) is decided here.
#include "reference/select.hpp"

namespace east::kernels {

inline Selection select_abs(const float* x, std::size_t n, std::size_t k, Extreme extreme,
                            const std::uint64_t* mask = nullptr, Among among = Among::all) {
  return reference::select_abs(x, n, k, extreme, mask, among);
}
inline Selection select_keys(const std::uint32_t* keys, std::size_t n, std::size_t k, Extreme extreme,
                             const std::uint64_t* mask = nullptr, Among among = Among::all) {
  return reference::select_keys(keys, n, k, extreme, mask, among);
}
inline void mark_selected_abs(const float* x, std::size_t n, const Selection& s, Extreme extreme,
                              const std::uint64_t* mask, Among among, std::uint64_t* out) {
  reference::mark_selected_abs(x, n, s, extreme, mask, among, out);
}
inline void mark_selected_keys(const std::uint32_t* keys, std::size_t n, const Selection& s,
                               Extreme extreme, const std::uint64_t* mask, Among among,
                               std::uint64_t* out) {
  reference::mark_selected_keys(keys, n, s, extreme, mask, among, out);
}
inline void apply_mask(float* x, const std::uint64_t* mask, std::size_t n) {
  reference::apply_mask(x, mask, n);
}
inline void fill_where(float* x, const std::uint64_t* where, std::size_t n, float value) {
  reference::fill_where(x, where, n, value);
}
inline std::size_t count_nonfinite(const float* x, std::size_t n, std::size_t* first = nullptr) {
  return reference::count_nonfinite(x, n, first);
}

}  // namespace east::kernels
