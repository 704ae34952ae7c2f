// GPU throughput of east's CUDA selection and mask update, as a fraction of the device-to-device
// copy bandwidth measured in the same run, with CUB's radix sort of the same keys as baseline.
// (torch.topk is not available on these machines; it is not measured.)
//
//   build: cmake -S . -B build-cuda -DEAST_BUILD_BENCHMARKS=ON && cmake --build build-cuda --target
//   east_bench_cuda run:   build-cuda/east_bench_cuda [--n 25600000] [--reps 20]
//
// Bytes counted are the floors of the project's performance notes (PERF.md): a selection reads each key once
// (4 B/weight); select + mark reads it twice more at most but its floor stays 4 B + 1 bit; the mask update
// reads |w| and |g| (8 B/weight) plus the mask. Copy bandwidth = (read + written bytes) / time.
// Times are medians over --reps runs, taken with CUDA events on one stream.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cub/cub.cuh>
#include <east/cuda/cuda.cuh>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

template <class T>
T* dalloc(std::size_t n) {
  T* p = nullptr;
  EAST_CUDA_CHECK(cudaMalloc(&p, (n > 0 ? n : 1) * sizeof(T)));
  return p;
}

// Median milliseconds of `reps` runs of f (after one warm-up run).
double median_ms(int reps, cudaStream_t s, const std::function<void()>& f) {
  cudaEvent_t a, b;
  EAST_CUDA_CHECK(cudaEventCreate(&a));
  EAST_CUDA_CHECK(cudaEventCreate(&b));
  f();
  EAST_CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    EAST_CUDA_CHECK(cudaEventRecord(a, s));
    f();
    EAST_CUDA_CHECK(cudaEventRecord(b, s));
    EAST_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    EAST_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  EAST_CUDA_CHECK(cudaEventDestroy(a));
  EAST_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

__global__ void fill_normalish(float* x, std::size_t n, unsigned seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    // A cheap hash to a float in (-1, 1) with many distinct magnitudes.
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    x[i] = (static_cast<float>(h) / 4294967296.0f) * 2.0f - 1.0f;
  }
}

__global__ void abs_keys(const float* x, std::uint32_t* k, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    k[i] = __float_as_uint(x[i]) & 0x7FFFFFFFu;
}

// Parameter tensors of ResNet-50 (conv and fc weights), 25.5M in all.
std::vector<std::size_t> resnet50_layers() {
  std::vector<std::size_t> s{64 * 3 * 7 * 7};
  const int stages[4][3] = {{64, 256, 3}, {128, 512, 4}, {256, 1024, 6}, {512, 2048, 3}};
  std::size_t in = 64;
  for (const auto& st : stages) {
    const std::size_t mid = st[0], out = st[1];
    for (int b = 0; b < st[2]; ++b) {
      s.push_back(in * mid);
      s.push_back(mid * mid * 9);
      s.push_back(mid * out);
      if (b == 0) s.push_back(in * out);
      in = out;
    }
  }
  s.push_back(2048 * 1000);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = 25600000;
  int reps = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--n")) n = std::strtoull(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  }
  if (reps < 1 || n < 1000) {
    std::printf("usage: east_bench_cuda [--n N >= 1000] [--reps R >= 1]\n");
    return 2;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  EAST_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs), n = %zu floats, median of %d runs\n\n", prop.name, prop.major,
              prop.minor, prop.multiProcessorCount, n, reps);
  cudaStream_t s;
  EAST_CUDA_CHECK(cudaStreamCreate(&s));
  using east::kernels::Among;
  using east::kernels::Extreme;

  float* x = dalloc<float>(n);
  float* y = dalloc<float>(n);
  float* g = dalloc<float>(n);
  std::uint32_t* keys = dalloc<std::uint32_t>(n);
  std::uint32_t* keys_out = dalloc<std::uint32_t>(n);
  const std::size_t words = east::kernels::words_for(n);
  std::uint64_t* mask = dalloc<std::uint64_t>(words);
  std::uint64_t* out = dalloc<std::uint64_t>(words);
  east::cuda::SelectResult* sel = dalloc<east::cuda::SelectResult>(1);
  fill_normalish<<<1024, 256, 0, s>>>(x, n, 1);
  fill_normalish<<<1024, 256, 0, s>>>(g, n, 2);
  abs_keys<<<1024, 256, 0, s>>>(x, keys, n);
  {
    std::vector<std::uint64_t> hm(words);
    std::mt19937_64 rng(3);
    for (auto& w : hm) w = rng() & rng() & rng();  // ~12.5% active
    if (n % 64) hm.back() &= (std::uint64_t{1} << (n % 64)) - 1;
    EAST_CUDA_CHECK(cudaMemcpy(mask, hm.data(), words * 8, cudaMemcpyHostToDevice));
  }
  const std::size_t k = n / 10;

  std::size_t sel_bytes = 0, mark_bytes = 0, sort_bytes = 0;
  EAST_CUDA_CHECK(
      east::cuda::select_abs(nullptr, sel_bytes, x, n, k, Extreme::smallest, nullptr, Among::all, sel, s));
  EAST_CUDA_CHECK(east::cuda::mark_selected_abs(nullptr, mark_bytes, x, n, sel, Extreme::smallest, nullptr,
                                                Among::all, out, s));
  EAST_CUDA_CHECK(
      cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, keys, keys_out, static_cast<int>(n), 0, 31, s));
  void* temp = dalloc<unsigned char>(std::max({sel_bytes, mark_bytes, sort_bytes}));

  const double copy_ms =
      median_ms(reps, s, [&] { EAST_CUDA_CHECK(cudaMemcpyAsync(y, x, n * 4, cudaMemcpyDeviceToDevice, s)); });
  const double copy_gbs = 2.0 * 4.0 * static_cast<double>(n) / (copy_ms * 1e6);
  std::printf(
      "| what | ms | floor bytes/weight | GB/s at the floor | fraction of copy bandwidth "
      "|\n|---|---|---|---|---|\n");
  std::printf("| device-to-device copy (read + write) | %.3f | 8 | %.0f | 1.00 |\n", copy_ms, copy_gbs);
  auto row = [&](const char* what, double ms, double bpw) {
    const double gbs = bpw * static_cast<double>(n) / (ms * 1e6);
    std::printf("| %s | %.3f | %.3g | %.0f | %.2f |\n", what, ms, bpw, gbs, gbs / copy_gbs);
  };
  std::size_t b = 0;
  row("east select_abs, k = n/10 smallest",
      median_ms(reps, s,
                [&] {
                  b = sel_bytes;
                  EAST_CUDA_CHECK(east::cuda::select_abs(temp, b, x, n, k, Extreme::smallest, nullptr,
                                                         Among::all, sel, s));
                }),
      4.0);
  row("east select_abs among active (12.5%)",
      median_ms(reps, s,
                [&] {
                  b = sel_bytes;
                  EAST_CUDA_CHECK(east::cuda::select_abs(temp, b, x, n, k / 8, Extreme::smallest, mask,
                                                         Among::active, sel, s));
                }),
      4.125);
  row("east select_abs + mark_selected_abs",
      median_ms(reps, s,
                [&] {
                  b = sel_bytes;
                  EAST_CUDA_CHECK(east::cuda::select_abs(temp, b, x, n, k, Extreme::smallest, nullptr,
                                                         Among::all, sel, s));
                  EAST_CUDA_CHECK(cudaMemsetAsync(out, 0, words * 8, s));
                  b = mark_bytes;
                  EAST_CUDA_CHECK(east::cuda::mark_selected_abs(temp, b, x, n, sel, Extreme::smallest,
                                                                nullptr, Among::all, out, s));
                }),
      4.125);
  row("CUB DeviceRadixSort::SortKeys (31 bits), baseline",
      median_ms(reps, s,
                [&] {
                  b = sort_bytes;
                  EAST_CUDA_CHECK(
                      cub::DeviceRadixSort::SortKeys(temp, b, keys, keys_out, static_cast<int>(n), 0, 31, s));
                }),
      4.0);

  // Whole-model mask update over ResNet-50's tensors (independent of --n).
  const auto sizes = resnet50_layers();
  std::size_t total = 0, total_words = 0;
  for (auto z : sizes) total += z, total_words += east::kernels::words_for(z);
  float* mw = dalloc<float>(total);
  float* mg = dalloc<float>(total);
  float* mm = dalloc<float>(total);
  std::uint64_t* mmask = dalloc<std::uint64_t>(total_words);
  std::uint64_t* mmask0 = dalloc<std::uint64_t>(total_words);
  fill_normalish<<<1024, 256, 0, s>>>(mw, total, 4);
  fill_normalish<<<1024, 256, 0, s>>>(mg, total, 5);
  {
    std::vector<std::uint64_t> hm(total_words);
    std::mt19937_64 rng(6);
    for (auto& w : hm) w = rng() & rng() & rng() & rng();  // ~6% active
    std::size_t off = 0;
    for (auto z : sizes) {
      const std::size_t wz = east::kernels::words_for(z);
      if (z % 64) hm[off + wz - 1] &= (std::uint64_t{1} << (z % 64)) - 1;
      off += wz;
    }
    EAST_CUDA_CHECK(cudaMemcpy(mmask0, hm.data(), total_words * 8, cudaMemcpyHostToDevice));
  }
  std::vector<east::cuda::LayerUpdate> ups;
  std::size_t off = 0, woff = 0;
  for (auto z : sizes) {
    east::cuda::LayerUpdate u;
    u.weight = mw + off;
    u.grad = mg + off;
    u.mask = mmask + woff;
    u.state[0] = mm + off;
    u.num_state = 1;
    u.n = z;
    u.n_drop = z / 16 * 3 / 10;  // ~30% of ~6% active
    u.n_grow = u.n_drop;
    ups.push_back(u);
    off += z;
    woff += east::kernels::words_for(z);
  }
  east::cuda::MaskUpdateStatus* st = dalloc<east::cuda::MaskUpdateStatus>(ups.size());
  int* failed = dalloc<int>(1);
  std::size_t up_bytes = 0;
  EAST_CUDA_CHECK(east::cuda::mask_update(nullptr, up_bytes, ups.data(), ups.size(), st, failed, s));
  void* up_temp = dalloc<unsigned char>(up_bytes);
  const double up_ms = median_ms(reps, s, [&] {
    EAST_CUDA_CHECK(cudaMemcpyAsync(mmask, mmask0, total_words * 8, cudaMemcpyDeviceToDevice, s));
    std::size_t bb = up_bytes;
    EAST_CUDA_CHECK(east::cuda::mask_update(up_temp, bb, ups.data(), ups.size(), st, failed, s));
  });
  const double up_gbs = 8.125 * static_cast<double>(total) / (up_ms * 1e6);
  std::printf(
      "| east mask_update, ResNet-50 (%zu tensors, %zu weights, includes a mask reset copy) | %.3f | 8.125 | "
      "%.0f | %.2f |\n",
      sizes.size(), total, up_ms, up_gbs, up_gbs / copy_gbs);
  int hf = 0;
  EAST_CUDA_CHECK(cudaMemcpy(&hf, failed, sizeof hf, cudaMemcpyDeviceToHost));
  if (hf != 0) std::printf("warning: mask_update reported a failure\n");
  std::printf(
      "\nCUB radix sort is a full sort (an upper bound on what selection should cost); torch.topk: not "
      "measured.\n");
  for (void* p : {static_cast<void*>(x), static_cast<void*>(y), static_cast<void*>(g),
                  static_cast<void*>(keys), static_cast<void*>(keys_out), static_cast<void*>(mask),
                  static_cast<void*>(out), static_cast<void*>(sel), temp, static_cast<void*>(mw),
                  static_cast<void*>(mg), static_cast<void*>(mm), static_cast<void*>(mmask),
                  static_cast<void*>(mmask0), static_cast<void*>(st), static_cast<void*>(failed), up_temp})
    cudaFree(p);
  cudaStreamDestroy(s);
  return 0;
}
