#pragma once
// Residual weight sharing on the GPU (see east/sharing/shared_weight.hpp): use i of a stored
// tensor W computes with s_i W, and backward accumulates
//     dW += sum_i s_i dW_i   (in use order)        ds_i += <W, dW_i>   (in double).
// The dot product reproduces the CPU's fixed partition exactly: chunks of kSharedDotChunk
// elements, 8 lanes per chunk (lane l sums the elements p = l mod 8 in increasing order), the
// lanes combined as ((0+1)+(2+3))+((4+5)+(6+7)), the chunks summed in chunk order by one thread.
// For float inputs every product is exact in double, so contraction into FMA cannot change a
// bit either: ds_i equals the CPU's bit for bit, and does not depend on the GPU or grid size.
#include "../sharing/shared_weight.hpp"
#include "common.cuh"

namespace east::cuda {

namespace detail {

constexpr int kShareThreads = 256;

template <class T>
__global__ void scale_kernel(const T* w, const T* scale, T* out, std::size_t n) {
  const T s = *scale;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = mul_rn(s, w[i]);
}

/// Lane l (0..7) of chunk c of <a, b> over n elements: the sum, in double and in increasing
/// position order, of a[p] b[p] over the chunk's positions p = l mod 8, as east::detail::chunk_dot.
/// Shared by the kernel and the host-side tests.
template <class T>
__host__ __device__ inline double dot_lane(const T* a, const T* b, std::size_t n, std::size_t c, std::size_t l) {
  const std::size_t lo = c * ::east::detail::kSharedDotChunk;
  const std::size_t len = n - lo < ::east::detail::kSharedDotChunk ? n - lo : ::east::detail::kSharedDotChunk;
  double acc = 0.0;
  for (std::size_t p = l; p < len; p += 8)
    acc = add_rn(acc, mul_rn(static_cast<double>(a[lo + p]), static_cast<double>(b[lo + p])));
  return acc;
}

/// east::shared_dot's combination of the lanes (8 per chunk, chunk after chunk): the chunk's
/// fixed tree ((0+1)+(2+3))+((4+5)+(6+7)); one chunk is returned as is, more are summed from 0.0
/// in chunk order.
__host__ __device__ inline double dot_combine(const double* lanes, std::size_t chunks) {
  double sum = 0.0;
  for (std::size_t c = 0; c < chunks; ++c) {
    const double* l = lanes + 8 * c;
    const double v = add_rn(add_rn(add_rn(l[0], l[1]), add_rn(l[2], l[3])),
                            add_rn(add_rn(l[4], l[5]), add_rn(l[6], l[7])));
    sum = chunks <= 1 ? v : add_rn(sum, v);
  }
  return sum;
}

// lanes[8 c + l] = lane l of chunk c.
template <class T>
__global__ void dot_lanes_kernel(const T* a, const T* b, std::size_t n, std::size_t chunks, double* lanes) {
  for (std::size_t gid = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; gid < chunks * 8;
       gid += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    lanes[gid] = dot_lane(a, b, n, gid >> 3, gid & 7);
}

// One thread: the fixed-order combination of east::shared_dot, then *dscale += T(dot).
template <class T>
__global__ void dot_finish_kernel(const double* lanes, std::size_t chunks, T* dscale) {
  *dscale += static_cast<T>(dot_combine(lanes, chunks));
}

// dw += s * dw_use (one use; uses are applied in order, as the CPU's accumulator does).
template <class T>
__global__ void axpy_kernel(const T* scale, const T* x, T* y, std::size_t n) {
  const T s = *scale;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] = add_rn(y[i], mul_rn(s, x[i]));
}

}  // namespace detail

/// out = (*d_scale) * w over n elements (device pointers; d_scale is one device scalar, so the
/// learnable scale never goes through the host). d_out may alias d_w.
template <class T>
cudaError_t shared_effective_weight(const T* d_w, const T* d_scale, T* d_out, std::size_t n,
                                    cudaStream_t stream = 0) {
  if (n == 0) return cudaSuccess;
  if (!d_w || !d_scale || !d_out) return cudaErrorInvalidValue;
  detail::scale_kernel<<<detail::grid_for(detail::div_up(n, detail::kShareThreads), 16),
                         detail::kShareThreads, 0, stream>>>(d_w, d_scale, d_out, n);
  return cudaGetLastError();
}

/// Backward of all uses of one stored tensor, as east::shared_weight_backward:
/// dw[j] += sum_i scales[i] dw_uses[i][j] (use order) and dscales[i] += <w, dw_uses[i]>.
/// @param d_temp,temp_bytes two-phase temporary storage (the per-chunk lanes of one dot).
/// @param d_w       stored tensor, n elements (device).
/// @param dw_uses   host array of `uses` device pointers, gradient w.r.t. each use's weight.
/// @param d_scales  `uses` scales (device).
/// @param d_dw      gradient of the stored tensor (device, added to).
/// @param d_dscales `uses` scale gradients (device, added to); nullptr skips them.
template <class T>
cudaError_t shared_weight_backward(void* d_temp, std::size_t& temp_bytes, const T* d_w,
                                   const T* const* dw_uses, const T* d_scales, std::size_t uses, T* d_dw,
                                   T* d_dscales, std::size_t n, cudaStream_t stream = 0) {
  const std::size_t chunks = detail::div_up(n, ::east::detail::kSharedDotChunk);
  void* parts[1] = {nullptr};
  const std::size_t sizes[1] = {sizeof(double) * 8 * (chunks > 0 ? chunks : 1)};
  cudaError_t err = detail::alias_temporaries(d_temp, temp_bytes, parts, sizes);
  if (err != cudaSuccess || d_temp == nullptr) return err;
  if (uses > 0 && (dw_uses == nullptr || d_scales == nullptr)) return cudaErrorInvalidValue;
  if (n > 0 && (d_w == nullptr || d_dw == nullptr)) return cudaErrorInvalidValue;
  for (std::size_t i = 0; i < uses; ++i)
    if (n > 0 && dw_uses[i] == nullptr) return cudaErrorInvalidValue;
  auto* lanes = static_cast<double*>(parts[0]);
  const unsigned egrid = detail::grid_for(detail::div_up(n, detail::kShareThreads), 16);
  for (std::size_t i = 0; i < uses; ++i) {
    if (d_dscales != nullptr) {
      if (chunks > 0) {
        detail::dot_lanes_kernel<<<detail::grid_for(detail::div_up(chunks * 8, 128), 16), 128, 0, stream>>>(
            d_w, dw_uses[i], n, chunks, lanes);
        detail::dot_finish_kernel<<<1, 1, 0, stream>>>(lanes, chunks, d_dscales + i);
      } else {
        // An empty dot is 0: *dscale += 0 (kept for symmetry with the CPU).
        detail::dot_finish_kernel<<<1, 1, 0, stream>>>(lanes, 0, d_dscales + i);
      }
    }
  }
  for (std::size_t i = 0; i < uses; ++i)
    if (n > 0)
      detail::axpy_kernel<<<egrid, detail::kShareThreads, 0, stream>>>(d_scales + i, dw_uses[i], d_dw, n);
  return cudaGetLastError();
}

}  // namespace east::cuda
