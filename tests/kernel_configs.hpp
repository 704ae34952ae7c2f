#pragma once
// Shared by the kernel tests: run a check on every ISA this CPU has, on 1 and 2 threads.
#include <east/kernels/select.hpp>

#include <cstdint>
#include <cstring>

namespace east_test {

/// Restores the automatic ISA, one thread and the normal parallel threshold.
struct KernelConfigGuard {
  KernelConfigGuard() { east::kernels::detail::parallel_min().store(128); }  // threads even on small arrays
  ~KernelConfigGuard() {
    east::kernels::reset_isa();
    east::kernels::set_threads(1);
    east::kernels::detail::parallel_min().store(std::size_t{1} << 18);
  }
};

/// Runs f(isa, threads) on every ISA with one thread, and with two threads too when
/// `two_threads` (waking a team costs milliseconds on a loaded 2-core machine).
template <class F>
void for_each_kernel_config(F&& f, bool two_threads = true) {
  KernelConfigGuard guard;
  for (east::kernels::Isa isa : east::kernels::available_isas())
    for (int t : {1, 2}) {
      if (t == 2 && !two_threads) continue;
      east::kernels::set_isa(isa);
      east::kernels::set_threads(t);
      f(isa, t);
    }
}

inline float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace east_test
