#pragma once
// Fixtures of the CUDA tests: GPU detection (tests skip, and pass, without one), device buffers
// that the test owns, and the random inputs shared by several tests.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <east/cuda/common.cuh>
#include <limits>
#include <random>
#include <vector>

namespace east_cuda_test {

/// Whether a usable CUDA device is present (no driver, no device: false). Printed once.
inline bool have_gpu() {
  static const bool ok = [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      (void)cudaGetLastError();  // clear the sticky error of a failed runtime start
      std::printf("no CUDA device: skipping (cudaGetDeviceCount: %s, count %d)\n", cudaGetErrorString(err),
                  count);
      return false;
    }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
      std::printf("CUDA device 0: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    return true;
  }();
  return ok;
}

}  // namespace east_cuda_test

/// First statement of every GPU test case: without a GPU it says so and returns (the case passes).
#define EAST_REQUIRE_GPU_OR_SKIP()       \
  do {                                   \
    if (!::east_cuda_test::have_gpu()) { \
      WARN("no CUDA device: skipping");  \
      return;                            \
    }                                    \
  } while (0)

namespace east_cuda_test {

/// Device buffer owned by the test: cudaMalloc'd, freed on scope exit.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    if (n > 0) EAST_CUDA_CHECK(cudaMalloc(&p_, n * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  T* get() const { return p_; }
  std::size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    REQUIRE(host.size() == n_);
    if (n_ > 0) EAST_CUDA_CHECK(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (n_ > 0) EAST_CUDA_CHECK(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  void zero() {
    if (n_ > 0) EAST_CUDA_CHECK(cudaMemset(p_, 0, n_ * sizeof(T)));
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

/// Temporary storage for a two-phase call: `call(ptr, bytes)` is run once to size, once to run.
template <class Call>
void two_phase(Call call) {
  std::size_t bytes = 0;
  EAST_CUDA_CHECK(call(nullptr, bytes));
  REQUIRE(bytes > 0);
  DeviceBuffer<unsigned char> temp(bytes);
  EAST_CUDA_CHECK(call(static_cast<void*>(temp.get()), bytes));
  EAST_CUDA_CHECK(cudaGetLastError());
  EAST_CUDA_CHECK(cudaDeviceSynchronize());
}

/// Sizes around the tile and warp boundaries of the kernels, and a few large ones.
inline std::vector<std::size_t> test_sizes() {
  return {1, 2, 31, 63, 64, 65, 511, 512, 513, 4095, 4096, 4097, 12345, 65536 + 7, 1000003};
}

enum class Values { normal, ties, special };

/// Random floats: normal values; few distinct values (heavy ties, signed zeros); or normal values
/// sprinkled with NaN, ±Inf, ±0 and denormals.
inline std::vector<float> random_floats(std::size_t n, Values kind, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-3, 3), pick(0, 15);
  std::vector<float> x(n);
  for (auto& v : x) {
    switch (kind) {
      case Values::normal:
        v = nd(rng);
        break;
      case Values::ties:
        v = 0.5f * static_cast<float>(small(rng));
        if (v == 0.0f && pick(rng) < 8) v = -0.0f;
        break;
      case Values::special: {
        const int p = pick(rng);
        v = p == 0   ? std::numeric_limits<float>::quiet_NaN()
            : p == 1 ? std::numeric_limits<float>::infinity()
            : p == 2 ? -std::numeric_limits<float>::infinity()
            : p == 3 ? -0.0f
            : p == 4 ? std::numeric_limits<float>::denorm_min() * static_cast<float>(pick(rng) + 1)
                     : nd(rng);
        break;
      }
    }
  }
  return x;
}

/// A random mask of words_for(n) words with about `density` of the n bits set; bits >= n zero.
inline std::vector<std::uint64_t> random_mask(std::size_t n, double density, unsigned seed) {
  std::mt19937 rng(seed);
  std::bernoulli_distribution bit(density);
  std::vector<std::uint64_t> m(east::kernels::words_for(n), 0);
  for (std::size_t i = 0; i < n; ++i)
    if (bit(rng)) m[i >> 6] |= std::uint64_t{1} << (i & 63);
  return m;
}

inline std::size_t count_candidates(const std::vector<std::uint64_t>& m, std::size_t n,
                                    const std::uint64_t* mask, east::kernels::Among among) {
  (void)m;
  std::size_t c = 0;
  for (std::size_t i = 0; i < n; ++i) c += east::kernels::is_candidate(mask, among, i);
  return c;
}

inline std::vector<std::uint32_t> float_bits(const std::vector<float>& x) {
  std::vector<std::uint32_t> b(x.size());
  if (!x.empty()) std::memcpy(b.data(), x.data(), x.size() * sizeof(float));
  return b;
}

}  // namespace east_cuda_test
