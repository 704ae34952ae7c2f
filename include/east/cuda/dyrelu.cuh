#pragma once
// DyReLU-B forward/backward with EAST's phasing on the GPU, over NCHW device buffers: the same
// math, layouts and conventions as east/activations/dyrelu.hpp (see that header and
// docs/activations.md). beta = 0 is exactly ReLU (the hyper-network is not evaluated), so
// that path equals the CPU bit for bit; with beta > 0 the pooled means and coefficient
// gradients are reduced in a different (but fixed, hence deterministic) order and tanh is
// CUDA's, so results agree with the CPU to rounding, not bitwise.
//
// Intermediates live in caller-owned temporary storage (two-phase, CUB style): pass the same
// d_temp to dyrelu_forward and to the dyrelu_backward that follows it.
#include <cub/cub.cuh>

#include "../activations/dyrelu.hpp"
#include "common.cuh"  // first: the nvcc guard

namespace east::cuda {

namespace detail {

constexpr int kDyThreads = 256;

template <class T>
struct DyReLUBuffers {
  T *theta, *u, *d, *coef, *dz, *du, *dtheta;
};

template <class T>
cudaError_t dyrelu_buffers(void* d_temp, std::size_t& temp_bytes, int B, int C, int hidden,
                           DyReLUBuffers<T>& out) {
  const std::size_t planes = static_cast<std::size_t>(B) * C, bh = static_cast<std::size_t>(B) * hidden;
  void* p[7] = {};
  const std::size_t s[7] = {planes * sizeof(T),     bh * sizeof(T),         4 * planes * sizeof(T),
                            4 * planes * sizeof(T), 4 * planes * sizeof(T), bh * sizeof(T),
                            planes * sizeof(T)};
  const cudaError_t err = alias_temporaries(d_temp, temp_bytes, p, s);
  if (err != cudaSuccess || d_temp == nullptr) return err;
  out = {static_cast<T*>(p[0]), static_cast<T*>(p[1]), static_cast<T*>(p[2]), static_cast<T*>(p[3]),
         static_cast<T*>(p[4]), static_cast<T*>(p[5]), static_cast<T*>(p[6])};
  return cudaSuccess;
}

// ---- Per-thread pieces of the DyReLU-B math, shared by the kernels and the host-side tests.
// Each is the CPU's expression (activations/dyrelu.hpp) in the CPU's summation order, with
// uncontracted arithmetic, so given the same inputs it gives the CPU's bits (tanh aside).

template <class T>
__host__ __device__ inline T dy_tanh(T x) {
#if defined(__CUDA_ARCH__)
  return tanh(x);
#else
  return std::tanh(x);
#endif
}

/// u[i] = fc1_bias[i] + sum_c fc1_weight[i, c] theta[c] (c ascending).
template <class T>
__host__ __device__ inline T dyrelu_hidden_unit(const DyReLUParams<T>& p, int C, const T* theta, int i) {
  const T* w = p.fc1_weight + static_cast<std::int64_t>(i) * C;
  T acc = p.fc1_bias[i];
  for (int c = 0; c < C; ++c) acc = add_rn(acc, mul_rn(w[c], theta[c]));
  return acc;
}

/// Output o (row 4c + j) of the hyper-network from the hidden pre-activations u: writes
/// d = tanh(z / 2) and returns the blended coefficient init_j + beta lambda_j d.
template <class T>
__host__ __device__ inline T dyrelu_output_unit(const DyReLUParams<T>& p, int hidden, T beta, const T* u, int o,
                                                T* d_out) {
  const T* w = p.fc2_weight + static_cast<std::int64_t>(o) * hidden;
  T acc = p.fc2_bias[o];
  for (int i = 0; i < hidden; ++i) acc = add_rn(acc, mul_rn(w[i], u[i] > T(0) ? u[i] : T(0)));
  const T dv = dy_tanh(acc / T(2));  // 2 sigmoid(z) - 1
  *d_out = dv;
  const int j = o & 3;
  const T lambda = j < 2 ? T(1) : T(0.5);
  return add_rn(j == 0 ? T(1) : T(0), mul_rn(mul_rn(beta, lambda), dv));
}

/// y of one element: max(a1 x + b1, a2 x + b2) with coef = [a1, a2, b1, b2].
template <class T>
__host__ __device__ inline T dyrelu_value(const T* coef, T x) {
  const T y1 = add_rn(mul_rn(coef[0], x), coef[2]), y2 = add_rn(mul_rn(coef[1], x), coef[3]);
  return y1 >= y2 ? y1 : y2;
}

/// Whether piece 2 wins strictly at x (a tie goes to piece 1, as on the CPU).
template <class T>
__host__ __device__ inline bool dyrelu_second(const T* coef, T x) {
  return add_rn(mul_rn(coef[1], x), coef[3]) > add_rn(mul_rn(coef[0], x), coef[2]);
}

/// dL/dz of output o from dL/dcoef: dcoef beta lambda (1 - d^2) / 2.
template <class T>
__host__ __device__ inline T dyrelu_dz(T dcoef, T beta, int o, T d) {
  const T lambda = (o & 3) < 2 ? T(1) : T(0.5);
  const T one_minus = T(1) - mul_rn(d, d);
  return mul_rn(mul_rn(mul_rn(dcoef, beta), lambda), one_minus) / T(2);
}

/// du[i] = [u_i > 0] sum_o fc2_weight[o, i] dz[o] (o ascending).
template <class T>
__host__ __device__ inline T dyrelu_du(const DyReLUParams<T>& p, int C, int hidden, const T* dz, const T* u, int i) {
  T acc = T(0);
  for (int o = 0; o < 4 * C; ++o) acc = add_rn(acc, mul_rn(p.fc2_weight[static_cast<std::int64_t>(o) * hidden + i], dz[o]));
  return u[i] > T(0) ? acc : T(0);
}

/// dtheta[c] = sum_i fc1_weight[i, c] du[i] (i ascending).
template <class T>
__host__ __device__ inline T dyrelu_dtheta(const DyReLUParams<T>& p, int C, int hidden, const T* du, int c) {
  T acc = T(0);
  for (int i = 0; i < hidden; ++i) acc = add_rn(acc, mul_rn(p.fc1_weight[static_cast<std::int64_t>(i) * C + c], du[i]));
  return acc;
}

/// dx of one element: dy * slope of the winning piece + dtheta / HW (pool = dtheta * inv_hw).
template <class T>
__host__ __device__ inline T dyrelu_dx(const T* coef, T pool, T x, T dy) {
  return add_rn(mul_rn(dy, dyrelu_second(coef, x) ? coef[1] : coef[0]), pool);
}

/// Weight-gradient element (r, c) of a layer over the batch, in sample order: returns
/// gw + sum_b g[b, r] act(a[b, c]) and adds sum_b g[b, r] to *bias_acc (act: ReLU or identity).
template <class T>
__host__ __device__ inline T dyrelu_param_grad(const T* g, int g_stride, const T* a, int a_stride, bool relu_a,
                                               int r, int c, int B, T gw, T* bias_acc) {
  T acc = gw, bacc = T(0);
  for (int b = 0; b < B; ++b) {
    const T gv = g[static_cast<std::int64_t>(b) * g_stride + r];
    T av = a[static_cast<std::int64_t>(b) * a_stride + c];
    if (relu_a) av = av > T(0) ? av : T(0);
    acc = add_rn(acc, mul_rn(gv, av));
    bacc = add_rn(bacc, gv);
  }
  *bias_acc = bacc;
  return acc;
}

template <class T>
__global__ void relu_kernel(const T* x, T* y, std::size_t total) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <class T>
__global__ void relu_backward_kernel(const T* x, const T* dy, T* dx, std::size_t total) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    dx[i] = x[i] > T(0) ? dy[i] : T(0);
}

// theta[plane] = mean over the plane, summed in double by a fixed block tree (deterministic).
template <class T>
__global__ void __launch_bounds__(kDyThreads) dyrelu_pool_kernel(const T* x, std::int64_t hw, T* theta) {
  using Reduce = cub::BlockReduce<double, kDyThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const T* p = x + static_cast<std::int64_t>(blockIdx.x) * hw;
  double s = 0.0;
  for (std::int64_t q = threadIdx.x; q < hw; q += kDyThreads) s += static_cast<double>(p[q]);
  s = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0) theta[blockIdx.x] = static_cast<T>(s * (1.0 / static_cast<double>(hw)));
}

// Hyper-network of one sample per block: theta -> u -> d, coef (same loop order as the CPU).
template <class T>
__global__ void __launch_bounds__(kDyThreads)
    dyrelu_hyper_forward_kernel(DyReLUParams<T> p, int C, int hidden, T beta, const T* theta, T* u, T* d,
                                T* coef) {
  const int b = blockIdx.x;
  const T* th = theta + static_cast<std::int64_t>(b) * C;
  T* ub = u + static_cast<std::int64_t>(b) * hidden;
  for (int i = threadIdx.x; i < hidden; i += kDyThreads) ub[i] = dyrelu_hidden_unit(p, C, th, i);
  __syncthreads();  // ub is read by every thread below (global memory, visible within the block)
  for (int o = threadIdx.x; o < 4 * C; o += kDyThreads) {
    const std::int64_t k = static_cast<std::int64_t>(b) * 4 * C + o;
    coef[k] = dyrelu_output_unit(p, hidden, beta, ub, o, d + k);
  }
}

template <class T>
__global__ void dyrelu_apply_kernel(const T* coef, const T* x, T* y, std::int64_t hw, std::size_t total) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    y[i] = dyrelu_value(coef + (static_cast<std::int64_t>(i) / hw) * 4, x[i]);
  }
}

// dL/d[a1, a2, b1, b2] of one plane per block (double sums, fixed block tree).
template <class T>
__global__ void __launch_bounds__(kDyThreads)
    dyrelu_coef_grad_kernel(const T* coef, const T* x, const T* dy, std::int64_t hw, T* dcoef) {
  using Reduce = cub::BlockReduce<double, kDyThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t pl = blockIdx.x;
  const T* c = coef + pl * 4;
  const T* xp = x + pl * hw;
  const T* gp = dy + pl * hw;
  double gx_all = 0.0, g_all = 0.0, gx2 = 0.0, g2 = 0.0;
  for (std::int64_t q = threadIdx.x; q < hw; q += kDyThreads) {
    const T xv = xp[q], g = gp[q];
    const double gx = static_cast<double>(mul_rn(g, xv));
    gx_all += gx;
    g_all += static_cast<double>(g);
    if (dyrelu_second(c, xv)) {
      gx2 += gx;
      g2 += static_cast<double>(g);
    }
  }
  double r[4] = {gx_all, g_all, gx2, g2};
  for (int k = 0; k < 4; ++k) {
    r[k] = Reduce(tmp).Sum(r[k]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    dcoef[pl * 4 + 0] = static_cast<T>(r[0] - r[2]);
    dcoef[pl * 4 + 1] = static_cast<T>(r[2]);
    dcoef[pl * 4 + 2] = static_cast<T>(r[1] - r[3]);
    dcoef[pl * 4 + 3] = static_cast<T>(r[3]);
  }
}

// Hyper-network backward of one sample per block: dcoef -> dz (in place) -> du -> dtheta.
template <class T>
__global__ void __launch_bounds__(kDyThreads)
    dyrelu_hyper_backward_kernel(DyReLUParams<T> p, int C, int hidden, T beta, const T* u, const T* d, T* dz,
                                 T* du, T* dtheta) {
  const std::int64_t b = blockIdx.x;
  T* dzb = dz + b * 4 * C;
  const T* db = d + b * 4 * C;
  const T* ub = u + b * hidden;
  T* dub = du + b * hidden;
  for (int o = threadIdx.x; o < 4 * C; o += kDyThreads) dzb[o] = dyrelu_dz(dzb[o], beta, o, db[o]);
  __syncthreads();
  for (int i = threadIdx.x; i < hidden; i += kDyThreads) dub[i] = dyrelu_du(p, C, hidden, dzb, ub, i);
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += kDyThreads) dtheta[b * C + c] = dyrelu_dtheta(p, C, hidden, dub, c);
}

template <class T>
__global__ void dyrelu_dx_kernel(const T* coef, const T* dtheta, T inv_hw, const T* x, const T* dy, T* dx,
                                 std::int64_t hw, std::size_t total) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::int64_t pl = static_cast<std::int64_t>(i) / hw;
    dx[i] = dyrelu_dx(coef + pl * 4, mul_rn(dtheta[pl], inv_hw), x[i], dy[i]);
  }
}

// Parameter gradients, summed over the batch in sample order (deterministic): one thread per
// weight element (rows = 4C for fc2, hidden for fc1), bias by the row's first column thread.
template <class T>
__global__ void dyrelu_param_grad_kernel(const T* g, int g_stride, const T* a, int a_stride, bool relu_a,
                                         int rows, int cols, int B, T* gw, T* gb) {
  const std::int64_t total = static_cast<std::int64_t>(rows) * cols;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(e / cols), c = static_cast<int>(e % cols);
    T bacc = T(0);
    gw[e] = dyrelu_param_grad(g, g_stride, a, a_stride, relu_a, r, c, B, gw[e], &bacc);
    if (c == 0) gb[r] = add_rn(gb[r], bacc);  // one thread per row
  }
}

inline unsigned dy_grid(std::size_t total) { return grid_for(div_up(total, kDyThreads), 16); }

inline bool dyrelu_shape_ok(int B, int C, int H, int W) { return B >= 1 && C >= 1 && H >= 1 && W >= 1; }

}  // namespace detail

/// Bytes of temporary storage dyrelu_forward/dyrelu_backward<T> need for this shape (the same
/// for both; equal to what a d_temp == nullptr call writes to temp_bytes). hidden must be the
/// resolved width (dyrelu_hidden_size(C) when params.hidden is 0).
template <class T = float>
std::size_t dyrelu_temp_bytes(int B, int C, int hidden) {
  std::size_t bytes = 0;
  detail::DyReLUBuffers<T> unused{};
  detail::dyrelu_buffers<T>(nullptr, bytes, B, C, hidden, unused);
  return bytes;
}

/// DyReLU-B forward with phasing on device buffers (see east::dyrelu_forward for the math).
/// @param d_temp,temp_bytes two-phase temporary storage; it keeps the intermediates that
///        dyrelu_backward needs, so pass the same storage to the matching backward call.
/// @param params device pointers of the hyper-network (ignored when beta = 0; hidden = 0 picks
///        dyrelu_hidden_size(C)).
/// @param d_x,d_y B x C x H x W device buffers; d_y may alias d_x when no backward follows.
/// Bad shapes or beta outside [0, 1] throw east::InvalidArgument, as on the CPU.
template <class T>
cudaError_t dyrelu_forward(void* d_temp, std::size_t& temp_bytes, const DyReLUParams<T>& params, const T* d_x,
                           T* d_y, int B, int C, int H, int W, double beta, cudaStream_t stream = 0) {
  constexpr const char* where = "east::cuda::dyrelu_forward";
  ::east::detail::dyrelu_check_shape(where, B, C, H, W);
  ::east::detail::require(static_cast<std::int64_t>(B) * C <= 0x7FFFFFFF, where, "B * C = ",
                          static_cast<std::int64_t>(B) * C, " planes exceed one grid (valid: up to 2^31 - 1)");
  ::east::detail::require(beta >= 0.0 && beta <= 1.0, where, "beta ", beta, " is outside [0, 1]");
  ::east::detail::require(params.hidden >= 0, where, "params.hidden ", params.hidden, " must be >= 0");
  const int hidden = params.hidden == 0 ? dyrelu_hidden_size(C) : params.hidden;
  detail::DyReLUBuffers<T> buf{};
  cudaError_t err = detail::dyrelu_buffers(d_temp, temp_bytes, B, C, hidden, buf);
  if (err != cudaSuccess || d_temp == nullptr) return err;
  if (d_x == nullptr || d_y == nullptr) return cudaErrorInvalidValue;
  const std::int64_t hw = static_cast<std::int64_t>(H) * W;
  const std::size_t planes = static_cast<std::size_t>(B) * C, total = planes * static_cast<std::size_t>(hw);
  if (beta == 0.0) {
    detail::relu_kernel<<<detail::dy_grid(total), detail::kDyThreads, 0, stream>>>(d_x, d_y, total);
    return cudaGetLastError();
  }
  if (!params.fc1_weight || !params.fc1_bias || !params.fc2_weight || !params.fc2_bias)
    return cudaErrorInvalidValue;
  detail::dyrelu_pool_kernel<<<static_cast<unsigned>(planes), detail::kDyThreads, 0, stream>>>(d_x, hw,
                                                                                               buf.theta);
  detail::dyrelu_hyper_forward_kernel<<<B, detail::kDyThreads, 0, stream>>>(
      params, C, hidden, static_cast<T>(beta), buf.theta, buf.u, buf.d, buf.coef);
  detail::dyrelu_apply_kernel<<<detail::dy_grid(total), detail::kDyThreads, 0, stream>>>(buf.coef, d_x, d_y,
                                                                                         hw, total);
  return cudaGetLastError();
}

/// DyReLU-B backward for the dyrelu_forward call that filled d_temp (same params, x, shape and
/// beta). Writes dx and, when grads is non-null, *adds* the hyper-network parameter gradients
/// (device pointers) into *grads, in sample order. d_dx may alias d_dy.
template <class T>
cudaError_t dyrelu_backward(void* d_temp, std::size_t& temp_bytes, const DyReLUParams<T>& params,
                            const T* d_x, const T* d_dy, T* d_dx, int B, int C, int H, int W, double beta,
                            const DyReLUGrads<T>* grads = nullptr, cudaStream_t stream = 0) {
  constexpr const char* where = "east::cuda::dyrelu_backward";
  ::east::detail::dyrelu_check_shape(where, B, C, H, W);
  ::east::detail::require(static_cast<std::int64_t>(B) * C <= 0x7FFFFFFF, where, "B * C = ",
                          static_cast<std::int64_t>(B) * C, " planes exceed one grid (valid: up to 2^31 - 1)");
  ::east::detail::require(beta >= 0.0 && beta <= 1.0, where, "beta ", beta, " is outside [0, 1]");
  ::east::detail::require(params.hidden >= 0, where, "params.hidden ", params.hidden, " must be >= 0");
  const int hidden = params.hidden == 0 ? dyrelu_hidden_size(C) : params.hidden;
  detail::DyReLUBuffers<T> buf{};
  cudaError_t err = detail::dyrelu_buffers(d_temp, temp_bytes, B, C, hidden, buf);
  if (err != cudaSuccess || d_temp == nullptr) return err;
  if (d_x == nullptr || d_dy == nullptr || d_dx == nullptr) return cudaErrorInvalidValue;
  const std::int64_t hw = static_cast<std::int64_t>(H) * W;
  const std::size_t planes = static_cast<std::size_t>(B) * C, total = planes * static_cast<std::size_t>(hw);
  if (beta == 0.0) {
    detail::relu_backward_kernel<<<detail::dy_grid(total), detail::kDyThreads, 0, stream>>>(d_x, d_dy, d_dx,
                                                                                            total);
    return cudaGetLastError();
  }
  if (!params.fc1_weight || !params.fc1_bias || !params.fc2_weight || !params.fc2_bias)
    return cudaErrorInvalidValue;
  if (grads && (!grads->fc1_weight || !grads->fc1_bias || !grads->fc2_weight || !grads->fc2_bias))
    return cudaErrorInvalidValue;
  detail::dyrelu_coef_grad_kernel<<<static_cast<unsigned>(planes), detail::kDyThreads, 0, stream>>>(
      buf.coef, d_x, d_dy, hw, buf.dz);
  detail::dyrelu_hyper_backward_kernel<<<B, detail::kDyThreads, 0, stream>>>(
      params, C, hidden, static_cast<T>(beta), buf.u, buf.d, buf.dz, buf.du, buf.dtheta);
  const T inv_hw = static_cast<T>(1.0 / static_cast<double>(hw));
  detail::dyrelu_dx_kernel<<<detail::dy_grid(total), detail::kDyThreads, 0, stream>>>(
      buf.coef, buf.dtheta, inv_hw, d_x, d_dy, d_dx, hw, total);
  if (grads) {
    const std::size_t w2 = static_cast<std::size_t>(4) * C * hidden,
                      w1 = static_cast<std::size_t>(hidden) * C;
    detail::dyrelu_param_grad_kernel<<<detail::dy_grid(w2), detail::kDyThreads, 0, stream>>>(
        buf.dz, 4 * C, buf.u, hidden, true, 4 * C, hidden, B, grads->fc2_weight, grads->fc2_bias);
    detail::dyrelu_param_grad_kernel<<<detail::dy_grid(w1), detail::kDyThreads, 0, stream>>>(
        buf.du, hidden, buf.theta, C, false, hidden, C, B, grads->fc1_weight, grads->fc1_bias);
  }
  return cudaGetLastError();
}

}  // namespace east::cuda
