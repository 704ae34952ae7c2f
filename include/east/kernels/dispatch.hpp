#pragma once
// Run-time choice of instruction set and thread count for the kernels in kernels/select.hpp.
// One binary runs everywhere: the AVX2 and AVX-512 bodies are compiled with GCC/Clang
// `target` attributes (no -march needed) and picked after asking the CPU. Every kernel is
// exact or element-wise, so results are bit-identical whichever ISA and thread count run.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/error.hpp"

#if defined(EAST_HAS_OPENMP) && EAST_HAS_OPENMP && defined(_OPENMP)
#include <omp.h>
#define EAST_KERNELS_OPENMP 1
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(EAST_NO_SIMD)
#define EAST_KERNELS_X86 1
#include <immintrin.h>
#define EAST_TARGET_AVX2 __attribute__((target("avx2,fma,bmi,bmi2,popcnt")))
#define EAST_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,popcnt")))
#endif

namespace east::kernels {
namespace detail {
using ::east::detail::require;
}

/// Instruction sets the kernels have bodies for.
enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

/// Human-readable name of an ISA ("scalar", "avx2", "avx512").
inline const char* isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    default:
      return "scalar";
  }
}

namespace detail {

inline bool cpu_supports(Isa isa) noexcept {
  if (isa == Isa::scalar) return true;
#if defined(EAST_KERNELS_X86)
  __builtin_cpu_init();
  if (isa == Isa::avx2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  if (isa == Isa::avx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
#endif
  return false;
}

// -1: not chosen yet (use the best available).
inline std::atomic<int>& isa_setting() noexcept {
  static std::atomic<int> v{-1};
  return v;
}
inline std::atomic<int>& thread_setting() noexcept {
  static std::atomic<int> v{1};
  return v;
}

}  // namespace detail

/// The ISAs this CPU (and this build) can run, scalar first, best last.
inline std::vector<Isa> available_isas() {
  std::vector<Isa> out{Isa::scalar};
  for (Isa isa : {Isa::avx2, Isa::avx512})
    if (detail::cpu_supports(isa)) out.push_back(isa);
  return out;
}

/// The best ISA available here.
inline Isa best_isa() {
  static const Isa best = available_isas().back();
  return best;
}

/// The ISA the kernels use now: the one set by set_isa(), else best_isa().
inline Isa active_isa() {
  const int v = detail::isa_setting().load(std::memory_order_relaxed);
  return v < 0 ? best_isa() : static_cast<Isa>(v);
}

/// Forces the kernels onto one ISA (tests use it to cover every body). Throws InvalidArgument
/// when this CPU cannot run it.
inline void set_isa(Isa isa) {
  detail::require(detail::cpu_supports(isa), "east::kernels::set_isa", "ISA ", isa_name(isa),
                  " is not supported by this CPU or build (valid: scalar",
                  detail::cpu_supports(Isa::avx2) ? ", avx2" : "",
                  detail::cpu_supports(Isa::avx512) ? ", avx512" : "", ")");
  detail::isa_setting().store(static_cast<int>(isa), std::memory_order_relaxed);
}

/// Goes back to the automatic choice (best_isa()).
inline void reset_isa() noexcept { detail::isa_setting().store(-1, std::memory_order_relaxed); }

/// Number of OpenMP threads the kernels may use on large arrays (default 1; 0 means
/// omp_get_max_threads()). Without OpenMP the kernels always run on the calling thread.
inline void set_threads(int t) {
  detail::require(t >= 0 && t <= 1024, "east::kernels::set_threads", "threads = ", t,
                  " is outside 0..1024 (0 = all OpenMP threads)");
  detail::thread_setting().store(t, std::memory_order_relaxed);
}

/// Threads the kernels use for a large array now.
inline int threads() noexcept {
#if defined(EAST_KERNELS_OPENMP)
  const int t = detail::thread_setting().load(std::memory_order_relaxed);
  return t == 0 ? omp_get_max_threads() : t;
#else
  return 1;
#endif
}

namespace detail {

/// Below this many elements one thread is faster than waking a team. Tests lower it to run
/// the multi-thread paths on small arrays.
inline std::atomic<std::size_t>& parallel_min() noexcept {
  static std::atomic<std::size_t> v{std::size_t{1} << 18};
  return v;
}

/// Threads to use for n elements.
inline int plan_threads(std::size_t n) noexcept {
  const int t = threads();
  const std::size_t lim = std::max<std::size_t>(parallel_min().load(std::memory_order_relaxed), 128);
  if (t <= 1 || n < lim) return 1;
  const std::size_t most = n / (lim / 2);
  return static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(t), most < 1 ? 1 : most));
}

/// Element range [begin, end) of chunk j of t over n elements; boundaries fall on mask words
/// so no two threads write the same 64-bit word.
struct Range {
  std::size_t begin, end;
};
inline Range chunk(std::size_t n, int t, int j) noexcept {
  const std::size_t words = (n + 63) / 64;
  const std::size_t wb = words * static_cast<std::size_t>(j) / static_cast<std::size_t>(t);
  const std::size_t we = words * static_cast<std::size_t>(j + 1) / static_cast<std::size_t>(t);
  return {std::min(n, wb * 64), std::min(n, we * 64)};
}

/// Runs body(j, range) for j in 0..t-1, on t OpenMP threads when available.
template <class Body>
void parallel_chunks(std::size_t n, int t, Body&& body) {
  if (t <= 1) {
    body(0, Range{0, n});
    return;
  }
#if defined(EAST_KERNELS_OPENMP)
#pragma omp parallel for num_threads(t) schedule(static, 1)
  for (int j = 0; j < t; ++j) body(j, chunk(n, t, j));
#else
  for (int j = 0; j < t; ++j) body(j, chunk(n, t, j));
#endif
}

}  // namespace detail
}  // namespace east::kernels
