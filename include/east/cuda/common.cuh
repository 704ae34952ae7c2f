#pragma once
// Shared plumbing of east's CUDA backend: the nvcc guard, EAST_CUDA_CHECK, two-phase temporary
// storage, launch geometry and device-side key helpers. Every public function of the backend
// follows CUB's conventions: device pointers, a caller-given stream, nothing allocated or
// synchronised inside, errors returned as cudaError_t. See docs/cuda.md.
#if !defined(__CUDACC__)
#error \
    "east/cuda/*.cuh are CUDA headers: compile this translation unit with nvcc (a .cu file, or LANGUAGE CUDA), and link east::cuda"
#endif

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../kernels/types.hpp"

/// Host-side check: throws std::runtime_error("file:line: expr: CUDA error text") when `expr`
/// does not return cudaSuccess. Device code never throws; kernels report through status words.
#define EAST_CUDA_CHECK(expr)                                                                          \
  do {                                                                                                 \
    const cudaError_t east_cuda_err_ = (expr);                                                         \
    if (east_cuda_err_ != cudaSuccess)                                                                 \
      throw std::runtime_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + #expr + \
                               ": " + cudaGetErrorString(east_cuda_err_));                             \
  } while (0)

/// `#pragma unroll` for loops in __host__ __device__ functions (the host compiler does not know
/// the pragma and -Wall warns about it).
#if defined(__CUDA_ARCH__)
#define EAST_CUDA_UNROLL _Pragma("unroll")
#else
#define EAST_CUDA_UNROLL
#endif

namespace east::cuda {

using kernels::Among;
using kernels::Extreme;
using kernels::Selection;

namespace detail {

constexpr std::size_t kTempAlign = 256;

__host__ __device__ constexpr std::size_t round_up(std::size_t x, std::size_t a) {
  return (x + a - 1) / a * a;
}

/// Carves `N` pieces of the given byte sizes out of one caller-owned allocation (CUB's
/// AliasTemporaries). With d_temp == nullptr only writes the total to temp_bytes.
template <int N>
cudaError_t alias_temporaries(void* d_temp, std::size_t& temp_bytes, void* (&ptrs)[N],
                              const std::size_t (&sizes)[N]) {
  std::size_t offsets[N];
  std::size_t total = 0;
  for (int i = 0; i < N; ++i) {
    offsets[i] = total;
    total += round_up(sizes[i] == 0 ? 1 : sizes[i], kTempAlign);
  }
  if (d_temp == nullptr) {
    temp_bytes = total;
    return cudaSuccess;
  }
  if (temp_bytes < total) return cudaErrorInvalidValue;
  for (int i = 0; i < N; ++i) ptrs[i] = static_cast<char*>(d_temp) + offsets[i];
  return cudaSuccess;
}

/// Number of multiprocessors of the current device (for grid sizes); 1 if the query fails.
inline int sm_count() {
  int dev = 0, sms = 1;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 1;
  return sms > 0 ? sms : 1;
}

/// Blocks for a grid-stride loop over `units` work units: enough to fill the device, no more.
inline unsigned grid_for(std::size_t units, int per_sm = 8) {
  const std::size_t cap = static_cast<std::size_t>(sm_count()) * static_cast<std::size_t>(per_sm);
  std::size_t g = units < cap ? units : cap;
  return static_cast<unsigned>(g == 0 ? 1 : g);
}

__host__ __device__ constexpr std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

__host__ __device__ inline std::size_t words_for(std::size_t n) { return (n + 63) / 64; }

// Keys, bits and candidates are the CPU's own host/device functions (kernels/types.hpp), so the
// device cannot disagree with the reference about what a key or a candidate is.
__host__ __device__ __forceinline__ std::uint32_t abs_bits(float x) { return kernels::abs_key(x); }

__host__ __device__ __forceinline__ bool bit_at(const std::uint64_t* words, std::size_t i) {
  return kernels::test_bit(words, i);
}

/// Whether position i is a candidate under (mask, among); a null mask means all positions.
__host__ __device__ __forceinline__ bool candidate(const std::uint64_t* mask, Among among, std::size_t i) {
  return kernels::is_candidate(mask, among, i);
}

/// NaN or ±Inf, from the abs key (the CPU's count_nonfinite test).
__host__ __device__ __forceinline__ bool nonfinite_key(std::uint32_t abs_key) { return abs_key >= 0x7F800000u; }

// Uncontracted arithmetic: nvcc fuses a * b + c into an FMA by default, the CPU reference
// (compiled for baseline x86-64) does not, so paths that promise equal bits spell it out. On the
// host (the host-side tests of the shared logic) they are the plain operations.
__host__ __device__ __forceinline__ float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
__host__ __device__ __forceinline__ double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
__host__ __device__ __forceinline__ float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
__host__ __device__ __forceinline__ float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ __forceinline__ double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ __forceinline__ float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

/// Key sources: what a selection orders. Both give abs_key / the raw key of position i.
struct AbsKeys {
  const float* x;
  __host__ __device__ __forceinline__ std::uint32_t operator()(std::size_t i) const { return abs_bits(x[i]); }
  __host__ __device__ const float* ptr() const { return x; }
};
struct RawKeys {
  const std::uint32_t* k;
  __host__ __device__ __forceinline__ std::uint32_t operator()(std::size_t i) const { return k[i]; }
  __host__ __device__ const std::uint32_t* ptr() const { return k; }
};

/// Keys are mapped so that "better" is always "larger": ~key when selecting the smallest.
__host__ __device__ __forceinline__ std::uint32_t ordered(std::uint32_t key, Extreme e) {
  return e == Extreme::largest ? key : ~key;
}

}  // namespace detail
}  // namespace east::cuda
