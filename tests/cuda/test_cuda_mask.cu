// CUDA element-wise mask kernels and the fused masked SGD step vs the scalar reference, bit for
// bit: apply_mask, fill_where, count_nonfinite, masked_sgd (plain, momentum, Nesterov, weight
// decay, dampening, with and without the |w| histogram).
#include <east/cuda/mask.cuh>
#include <east/kernels/reference/select.hpp>
#include <east/kernels/reference/sgd.hpp>

#include "cuda_test_helpers.cuh"

using namespace east_cuda_test;

TEST_CASE("cuda apply_mask and fill_where equal the reference", "[cuda][mask]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  unsigned seed = 3;
  for (std::size_t n : test_sizes()) {
    const auto x = random_floats(n, Values::special, seed);
    const auto mask = random_mask(n, 0.4, seed + 1);
    CAPTURE(n);
    auto want = x;
    east::kernels::reference::apply_mask(want.data(), mask.data(), n);
    DeviceBuffer<float> d_x(x);
    DeviceBuffer<std::uint64_t> d_m(mask);
    EAST_CUDA_CHECK(east::cuda::apply_mask(d_x.get(), d_m.get(), n));
    REQUIRE(float_bits(d_x.download()) == float_bits(want));

    want = x;
    east::kernels::reference::fill_where(want.data(), mask.data(), n, -1.5f);
    d_x.upload(x);
    EAST_CUDA_CHECK(east::cuda::fill_where(d_x.get(), d_m.get(), n, -1.5f));
    REQUIRE(float_bits(d_x.download()) == float_bits(want));
    ++seed;
  }
}

TEST_CASE("cuda count_nonfinite equals the reference", "[cuda][mask]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  unsigned seed = 5;
  for (std::size_t n : test_sizes()) {
    for (Values v : {Values::normal, Values::special}) {
      const auto x = random_floats(n, v, seed++);
      std::size_t first = n;
      const std::size_t want = east::kernels::reference::count_nonfinite(x.data(), n, &first);
      DeviceBuffer<float> d_x(x);
      DeviceBuffer<east::cuda::NonfiniteResult> d_r(1);
      EAST_CUDA_CHECK(east::cuda::count_nonfinite(d_x.get(), n, d_r.get()));
      const auto r = d_r.download()[0];
      CAPTURE(n, static_cast<int>(v));
      REQUIRE(r.count == want);
      REQUIRE(r.first == (want > 0 ? first : n));
    }
  }
}

TEST_CASE("cuda masked_sgd equals the reference bit for bit", "[cuda][sgd]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  using east::kernels::SgdParams;
  const SgdParams params[] = {
      {0.1f, 0.0f, 0.0f, 0.0f, false},   {0.05f, 0.9f, 0.0f, 0.0f, false}, {0.05f, 0.9f, 0.0f, 5e-4f, true},
      {0.01f, 0.9f, 0.1f, 1e-4f, false}, {0.3f, 0.0f, 0.0f, 1e-2f, false},
  };
  unsigned seed = 11;
  for (std::size_t n : test_sizes()) {
    for (const auto& p : params) {
      for (bool hist : {false, true}) {
        const auto w0 = random_floats(n, Values::normal, seed);
        const auto g = random_floats(n, Values::normal, seed + 1);
        auto b0 = random_floats(n, Values::normal, seed + 2);
        const auto mask = random_mask(n, 0.2, seed + 3);
        ++seed;
        const bool mom = p.momentum != 0.0f;
        auto w = w0, b = b0;
        std::vector<std::uint64_t> h(east::kernels::kHistBins, 0);
        // Two steps, so momentum buffers written by step 1 feed step 2.
        for (int s = 0; s < 2; ++s)
          east::kernels::reference::masked_sgd(w.data(), g.data(), mom ? b.data() : nullptr, mask.data(), n,
                                               p, hist ? h.data() : nullptr);
        DeviceBuffer<float> d_w(w0), d_g(g), d_b(b0);
        DeviceBuffer<std::uint64_t> d_m(mask);
        DeviceBuffer<unsigned long long> d_h(east::kernels::kHistBins);
        d_h.zero();
        for (int s = 0; s < 2; ++s)
          EAST_CUDA_CHECK(east::cuda::masked_sgd(d_w.get(), d_g.get(), mom ? d_b.get() : nullptr, d_m.get(),
                                                 n, p, hist ? d_h.get() : nullptr));
        CAPTURE(n, p.lr, p.momentum, p.dampening, p.weight_decay, p.nesterov, hist);
        REQUIRE(float_bits(d_w.download()) == float_bits(w));
        if (mom) REQUIRE(float_bits(d_b.download()) == float_bits(b));
        if (hist) {
          const auto dh = d_h.download();
          REQUIRE(std::vector<std::uint64_t>(dh.begin(), dh.end()) == h);
        }
      }
    }
  }
}

TEST_CASE("cuda masked_sgd rejects bad parameters like the CPU", "[cuda][sgd]") {
  // Host-side validation: runs (and must throw) without a GPU too.
  east::kernels::SgdParams p;
  p.momentum = 0.9f;
  REQUIRE_THROWS_AS(east::cuda::masked_sgd(nullptr, nullptr, nullptr, nullptr, 10, p), east::InvalidArgument);
  p.nesterov = true;
  p.dampening = 0.5f;
  float dummy = 0;
  REQUIRE_THROWS_AS(east::cuda::masked_sgd(nullptr, nullptr, &dummy, nullptr, 10, p), east::InvalidArgument);
}

TEST_CASE("cuda element-wise kernels with n = 0", "[cuda][mask]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  // Nothing to touch: success, no launch needed; count_nonfinite still writes {0, first = n}.
  EAST_CUDA_CHECK(east::cuda::apply_mask(nullptr, nullptr, 0));
  EAST_CUDA_CHECK(east::cuda::fill_where(nullptr, nullptr, 0, 1.0f));
  EAST_CUDA_CHECK(east::cuda::masked_sgd(nullptr, nullptr, nullptr, nullptr, 0, east::kernels::SgdParams{}));
  DeviceBuffer<east::cuda::NonfiniteResult> d_r(1);
  EAST_CUDA_CHECK(cudaMemset(d_r.get(), 0xFF, sizeof(east::cuda::NonfiniteResult)));
  EAST_CUDA_CHECK(east::cuda::count_nonfinite(nullptr, 0, d_r.get()));
  const auto r = d_r.download()[0];
  REQUIRE(r.count == 0);
  REQUIRE(r.first == 0);
  // Null data with n > 0 is refused before any launch.
  REQUIRE(east::cuda::apply_mask(nullptr, nullptr, 5) == cudaErrorInvalidValue);
  REQUIRE(east::cuda::count_nonfinite(nullptr, 5, d_r.get()) == cudaErrorInvalidValue);
}
