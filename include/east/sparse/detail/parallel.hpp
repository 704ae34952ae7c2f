#pragma once
// Work splitting for the sparse kernels. Every output element is owned by one work item and
// each item is computed by one thread in a fixed order, so results do not depend on the number
// of threads (kernels::set_threads) nor on the OpenMP schedule.
#include <algorithm>
#include <atomic>
#include <cstddef>

#include "../../kernels/dispatch.hpp"

namespace east::sparse::detail {

/// Below this many multiply-adds a call stays on one thread (waking a team costs ~µs). Tests
/// lower it to run the threaded paths on small shapes.
inline std::atomic<double>& min_parallel_work() noexcept {
  static std::atomic<double> v{1 << 18};
  return v;
}

/// Runs body(i) for i in [0, items), on kernels::threads() OpenMP threads when `work` (about
/// the multiply-adds of the call) is large enough. Bodies must not throw.
template <class Body>
void parallel_for(std::size_t items, double work, Body&& body) {
  const int t = ::east::kernels::threads();
  if (t <= 1 || items <= 1 || work < min_parallel_work().load(std::memory_order_relaxed)) {
    for (std::size_t i = 0; i < items; ++i) body(i);
    return;
  }
#if defined(EAST_KERNELS_OPENMP)
  const auto n = static_cast<std::ptrdiff_t>(items);
  // dynamic: items (output channels, images) have very unequal nonzero counts; chunks of about
  // 1/8 of a thread's share keep the scheduling traffic small.
  const auto chunk = static_cast<int>(std::max<std::ptrdiff_t>(1, n / (8 * t)));
#pragma omp parallel for num_threads(t) schedule(dynamic, chunk)
  for (std::ptrdiff_t i = 0; i < n; ++i) body(static_cast<std::size_t>(i));
#else
  for (std::size_t i = 0; i < items; ++i) body(i);
#endif
}

/// out[c * rows + r] = in[r * cols + c]: a blocked transpose (dense activations). 8 × 8 blocks,
/// writes innermost: with 32 × 32 blocks and reads innermost, a destination row stride of a
/// multiple of 4 KiB (1024 floats: a 1024-wide layer's batch-major output) put every write of a
/// block into one L1 set — 2.5 ms instead of 45 µs for 1024 × 128 (docs/sparse.md).
inline void transpose(const float* in, std::size_t rows, std::size_t cols, float* out) {
  constexpr std::size_t B = 8;
  for (std::size_t c0 = 0; c0 < cols; c0 += B)
    for (std::size_t r0 = 0; r0 < rows; r0 += B) {
      const std::size_t r1 = r0 + B < rows ? r0 + B : rows, c1 = c0 + B < cols ? c0 + B : cols;
      for (std::size_t c = c0; c < c1; ++c)
        for (std::size_t r = r0; r < r1; ++r) out[c * rows + r] = in[r * cols + c];
    }
}

}  // namespace east::sparse::detail
