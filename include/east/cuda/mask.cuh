#pragma once
// Element-wise mask kernels on the GPU: apply_mask, fill_where, count_nonfinite and the fused
// masked SGD step. Each equals its CPU counterpart in east/kernels/select.hpp bit for bit: the
// SGD step uses the same fused multiply-adds (__fmaf_rn, never contracted differently), and the
// counts are integers.
#include "../core/error.hpp"
#include "common.cuh"

namespace east::cuda {

/// Result of count_nonfinite (device memory).
struct NonfiniteResult {
  unsigned long long count;  ///< number of NaN/±Inf values
  unsigned long long first;  ///< smallest such index, or n when there is none
};

namespace detail {

constexpr int kEltThreads = 256;

__global__ void apply_mask_kernel(float* x, const std::uint64_t* mask, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    if (!bit_at(mask, i) && __float_as_uint(x[i]) != 0u) x[i] = 0.0f;
}

__global__ void fill_where_kernel(float* x, const std::uint64_t* where, std::size_t n, float value) {
  const std::uint32_t vb = __float_as_uint(value);
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    if (bit_at(where, i) && __float_as_uint(x[i]) != vb) x[i] = value;
}

__global__ void nonfinite_init_kernel(unsigned long long* count, unsigned long long* first, std::size_t n) {
  *count = 0;
  *first = n;
}

// Adds the number of non-finite x[i] to *count and lowers *first to the smallest such index;
// raises *failed (when given) if any. Integer atomics only: the result is deterministic.
__global__ void nonfinite_kernel(const float* x, std::size_t n, unsigned long long* count,
                                 unsigned long long* first, int* failed) {
  unsigned long long c = 0, f = ~0ull;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    if (nonfinite_key(abs_bits(x[i]))) {
      if (c == 0) f = i;
      ++c;
    }
  for (int o = 16; o > 0; o >>= 1) {
    c += __shfl_xor_sync(0xFFFFFFFFu, c, o);
    const unsigned long long fo = __shfl_xor_sync(0xFFFFFFFFu, f, o);
    f = fo < f ? fo : f;
  }
  if ((threadIdx.x & 31) == 0 && c > 0) {
    atomicAdd(count, c);
    atomicMin(first, f);
    if (failed) atomicExch(failed, 1);
  }
}

/// One active position's SGD step, exactly the CPU reference's expression (kernels/reference/
/// sgd.hpp): returns the new weight and updates `b` (the momentum buffer) when momentum != 0.
/// Shared by the kernel and the host-side tests.
__host__ __device__ inline float sgd_step(float w, float g, float& b, const kernels::SgdParams& p) {
  const bool mom = p.momentum != 0.0f;
  if (p.weight_decay != 0.0f) g = fma_rn(p.weight_decay, w, g);
  float d = g;
  if (mom) {
    const float nb = fma_rn(p.momentum, b, mul_rn(sub_rn(1.0f, p.dampening), g));
    b = nb;
    d = p.nesterov ? fma_rn(p.momentum, nb, g) : nb;
  }
  return fma_rn(-p.lr, d, w);
}

/// kernels::hist_bin(abs_key(w)) (that one is host-only constexpr).
__host__ __device__ inline std::uint32_t sgd_hist_bin(float w) { return abs_bits(w) >> 20; }

template <bool Hist>
__global__ void __launch_bounds__(kEltThreads)
    masked_sgd_kernel(float* w, const float* g, float* buf, const std::uint64_t* mask, std::size_t n,
                      kernels::SgdParams p, unsigned long long* hist) {
  __shared__ unsigned int sh[Hist ? kernels::kHistBins : 1];
  if (Hist) {
    for (int b = threadIdx.x; b < static_cast<int>(kernels::kHistBins); b += blockDim.x) sh[b] = 0;
    __syncthreads();
  }
  const bool mom = p.momentum != 0.0f;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (!bit_at(mask, i)) {
      if (__float_as_uint(w[i]) != 0u) w[i] = 0.0f;
      if (mom && __float_as_uint(buf[i]) != 0u) buf[i] = 0.0f;
      continue;
    }
    float b = mom ? buf[i] : 0.0f;
    const float wn = sgd_step(w[i], g[i], b, p);
    if (mom) buf[i] = b;
    w[i] = wn;
    if (Hist) atomicAdd(&sh[sgd_hist_bin(wn)], 1u);
  }
  if (Hist) {
    __syncthreads();
    for (int b = threadIdx.x; b < static_cast<int>(kernels::kHistBins); b += blockDim.x)
      if (sh[b] != 0) atomicAdd(&hist[b], static_cast<unsigned long long>(sh[b]));
  }
}

inline unsigned elt_grid(std::size_t n) { return grid_for(div_up(n, kEltThreads), 16); }

}  // namespace detail

/// x[i] = 0 where bit i of d_mask is clear (device pointers; writes only non-zero positions).
inline cudaError_t apply_mask(float* d_x, const std::uint64_t* d_mask, std::size_t n,
                              cudaStream_t stream = 0) {
  if (n == 0) return cudaSuccess;
  if (d_x == nullptr || d_mask == nullptr) return cudaErrorInvalidValue;
  detail::apply_mask_kernel<<<detail::elt_grid(n), detail::kEltThreads, 0, stream>>>(d_x, d_mask, n);
  return cudaGetLastError();
}

/// x[i] = value where bit i of d_where is set.
inline cudaError_t fill_where(float* d_x, const std::uint64_t* d_where, std::size_t n, float value,
                              cudaStream_t stream = 0) {
  if (n == 0) return cudaSuccess;
  if (d_x == nullptr || d_where == nullptr) return cudaErrorInvalidValue;
  detail::fill_where_kernel<<<detail::elt_grid(n), detail::kEltThreads, 0, stream>>>(d_x, d_where, n, value);
  return cudaGetLastError();
}

/// Counts NaN/±Inf in d_x into *d_out (device): count, and the first index (n when none).
inline cudaError_t count_nonfinite(const float* d_x, std::size_t n, NonfiniteResult* d_out,
                                   cudaStream_t stream = 0) {
  if (d_out == nullptr || (n > 0 && d_x == nullptr)) return cudaErrorInvalidValue;
  detail::nonfinite_init_kernel<<<1, 1, 0, stream>>>(&d_out->count, &d_out->first, n);
  if (n > 0)
    detail::nonfinite_kernel<<<detail::elt_grid(n), detail::kEltThreads, 0, stream>>>(d_x, n, &d_out->count,
                                                                                      &d_out->first, nullptr);
  return cudaGetLastError();
}

/// Fused SGD step under a bit mask, as east::kernels::masked_sgd (same formula, same bits).
/// Host-side validation of `p` throws east::InvalidArgument like the CPU version.
/// @param d_buf  momentum buffers, required iff p.momentum != 0.
/// @param d_hist optional kHistBins counters (device); adds hist_bin(abs_key(new w)) of active
///               positions.
inline cudaError_t masked_sgd(float* d_w, const float* d_g, float* d_buf, const std::uint64_t* d_mask,
                              std::size_t n, const kernels::SgdParams& p,
                              unsigned long long* d_hist = nullptr, cudaStream_t stream = 0) {
  ::east::detail::require(!(p.momentum != 0.0f) || d_buf != nullptr, "east::cuda::masked_sgd",
                          "momentum = ", p.momentum, " needs a momentum buffer (got null)");
  ::east::detail::require(!p.nesterov || (p.momentum > 0.0f && p.dampening == 0.0f), "east::cuda::masked_sgd",
                          "nesterov needs momentum > 0 and dampening = 0 (got momentum ", p.momentum,
                          ", dampening ", p.dampening, ")");
  if (n == 0) return cudaSuccess;
  if (d_w == nullptr || d_g == nullptr || d_mask == nullptr) return cudaErrorInvalidValue;
  const unsigned grid = detail::elt_grid(n);
  if (d_hist)
    detail::masked_sgd_kernel<true>
        <<<grid, detail::kEltThreads, 0, stream>>>(d_w, d_g, d_buf, d_mask, n, p, d_hist);
  else
    detail::masked_sgd_kernel<false>
        <<<grid, detail::kEltThreads, 0, stream>>>(d_w, d_g, d_buf, d_mask, n, p, nullptr);
  return cudaGetLastError();
}

}  // namespace east::cuda
